"""What runs tasks: workers, runtimes, destinations, task logs, supervision of loops."""
