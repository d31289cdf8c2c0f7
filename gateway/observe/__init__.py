"""Logs, metrics, tracing and redaction: leaves every other room may use."""
