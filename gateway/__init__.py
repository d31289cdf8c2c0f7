"""fngate: a self-hosted, event-driven function gateway on NATS JetStream."""

__version__ = "0.1.0"
