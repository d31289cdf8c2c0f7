"""Sinks: destinations that receive a task's result record."""
