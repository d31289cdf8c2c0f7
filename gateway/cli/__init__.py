"""The fngate command."""
