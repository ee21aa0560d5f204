"""Prefect blocks for seedvault: configuration that hands out engine objects, never raw secrets.

Like prefect-aws's credentials blocks, each block keeps its secret in a ``SecretStr`` and unwraps it only at
the point of use, into an engine object that never formats it: the key block gives a ``KeySource``, the
PostgreSQL block a ``PgTarget``, the Neo4j block a ``Neo4jJob``, the repository block a ``Repository``.
"""

from blocks.encryption_key import SeedvaultEncryptionKey
from blocks.neo4j_target import Neo4jTarget
from blocks.postgres_target import PostgresTarget
from blocks.repository import SeedvaultRepository

__all__ = ["Neo4jTarget", "PostgresTarget", "SeedvaultEncryptionKey", "SeedvaultRepository"]
