"""Mall Circle gateway service."""
