"""Neo4j: neo4j-admin dumps/loads and online backups (admin.py), Bolt counts and logical export (bolt.py, export.py)."""
