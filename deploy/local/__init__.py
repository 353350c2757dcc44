"""The embedded stack behind ``make run``; ``deploy/local/run.py`` is the entry point."""
