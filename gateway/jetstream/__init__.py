"""Everything that talks to NATS JetStream: the task store, publishing, pulling, the embedded server."""
