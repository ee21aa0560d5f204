"""Prefect flows for seedvault: backup-postgres, backup-postgres-base, restore-postgres, dr-drill, check-wal-freshness.

Flows take block *names* (never secrets) as parameters, load the blocks, and call the engine; the
streaming stages run as tasks (``tasks.stream``) inside a subflow that is retried as a whole.
"""
