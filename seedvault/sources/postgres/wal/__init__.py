"""WAL archiving and point-in-time recovery for PostgreSQL (wal-push, wal-fetch, base backups, PITR)."""
