"""Mall Circle parking service."""
