"""Mall Circle member service."""
