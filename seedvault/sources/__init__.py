"""Database sources: the engines seedvault backs up (PostgreSQL/TimescaleDB, Neo4j)."""
