"""Mall Circle points service."""
