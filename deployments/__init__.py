"""Scheduled seedvault deployments: PostgreSQL and Neo4j backups, WAL freshness, DR drill (see ``definitions``)."""
