"""Event bus plumbing: transactional outbox + relay, inbox + consumer loop, dead letters."""

from pathlib import Path

MIGRATIONS = ("eventbus", Path(__file__).parent / "migrations")
