"""Shared plumbing: settings, logging, gRPC bootstrap, health, db pool, migrations."""
