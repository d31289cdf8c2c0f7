"""The task itself, pure: its status, record, lifecycle and invocation. Imports no nats, no aiohttp."""
