"""The PostgreSQL connection block: where the database is, and its password as a secret.

The password reaches the engine only inside a :class:`PgTarget` (in memory; ``repr`` hides it), which hands it
to libpq in-process and to pg_dump/pg_restore through their environment, never through a conninfo string or
argv. Leaving ``password`` empty falls back to libpq's own sources (``PGPASSFILE``, ``~/.pgpass``).
"""

from __future__ import annotations

from prefect.blocks.core import Block
from psycopg.conninfo import make_conninfo
from pydantic import ConfigDict, Field, SecretStr

from seedvault.sources.postgres.connection import PgTarget


class PostgresTarget(Block):
    """Connection settings of a PostgreSQL server (and the default database) to back up or restore into."""

    _block_type_name = "Seedvault PostgreSQL Target"
    _block_type_slug = "seedvault-postgres-target"
    _description = "PostgreSQL connection for seedvault backups and restores; the password stays secret."
    # A validation error must not echo the input: it holds the secret.
    model_config = ConfigDict(hide_input_in_errors=True)

    host: str = Field(default="127.0.0.1", description="Host name, IP address or Unix socket directory.")
    port: int = Field(default=5432, ge=1, le=65535)
    database: str = Field(description="Default database (flows may name another on the same server).")
    user: str = Field(default="postgres", description="A role allowed to dump everything (superuser for globals).")
    password: SecretStr | None = Field(default=None, description="Empty: libpq's PGPASSFILE / ~/.pgpass.")
    sslmode: str | None = Field(default=None, description="libpq sslmode (disable, require, verify-full, ...).")
    connect_timeout: int = Field(default=10, ge=1)

    def pg_target(self, database: str | None = None) -> PgTarget:
        """The engine's connection object for ``database`` (default: the block's)."""
        params: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "dbname": database or self.database,
            "user": self.user,
            "connect_timeout": self.connect_timeout,
        }
        if self.sslmode:
            params["sslmode"] = self.sslmode
        password = self.password.get_secret_value() if self.password is not None else None
        return PgTarget.from_dsn(make_conninfo("", **params), password=password or None)
