"""Triggers: adapters that turn outside events into invocations."""
