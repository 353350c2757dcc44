"""pytest plugin: real PostgreSQL and NATS JetStream fixtures."""
