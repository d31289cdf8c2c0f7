"""The config file: its models, loading and the one-pass check."""
