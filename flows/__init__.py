"""Prefect flows for seedvault: backup-postgres, backup-postgres-base, restore-postgres, dr-drill,
check-wal-freshness, backup-neo4j and restore-neo4j.

Flows take block *names* (never secrets) as parameters, load the blocks, and call the engine; the PostgreSQL
logical backup's streaming stages run as tasks (``tasks.stream``) inside a subflow that is retried as a whole.
"""
