"""Logical PostgreSQL backups: ``pg_dump`` from an exported snapshot, plus the cluster's globals.

Why an exported snapshot: pg_dump's own snapshot cannot be shared, but the row counts and checksums we
record must describe exactly the dumped data. So seedvault opens a REPEATABLE READ transaction, exports
its snapshot, starts ``pg_dump --snapshot=<id>`` on it, and runs the inspection queries in that same
transaction while pg_dump streams. The transaction stays open until pg_dump is done.

pg_dump writes the custom format uncompressed (``--compress=0``): the engine compresses with zstd,
faster and better than pg_dump's gzip, and encrypts after compression.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import psycopg

from seedvault.errors import DatabaseUnreachable, SourceError
from seedvault.process import ChildReader
from seedvault.sources.postgres.binaries import PgBinaries, find_client_binaries
from seedvault.sources.postgres.connection import PgTarget
from seedvault.sources.postgres.inspect import InspectOptions, inspect


@dataclass
class LogicalOptions:
    estimate_above: int | None = None
    checksums: bool = False
    with_globals: bool = True


class SnapshotSession:
    """A REPEATABLE READ, read-only transaction whose snapshot pg_dump imports; closed on exit."""

    def __init__(self, target: PgTarget) -> None:
        self.target = target
        self.conn: psycopg.Connection | None = None
        self.snapshot = ""
        self.server_major = 0
        self.binaries: PgBinaries | None = None

    def __enter__(self) -> SnapshotSession:
        self.conn = self.target.connect(autocommit=False)
        try:
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            row = self.conn.execute(
                "SELECT pg_export_snapshot(), current_setting('server_version_num')::int"
            ).fetchone()
        except psycopg.Error as exc:
            self.conn.close()
            raise SourceError(f"cannot export a snapshot from {self.target.display()}: {exc}".splitlines()[0]) from None
        assert row is not None
        self.snapshot, num = row
        self.server_major = num // 10000
        self.binaries = find_client_binaries(self.server_major)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.rollback()
            self.conn.close()

    def inspect(self, options: LogicalOptions) -> dict[str, Any]:
        assert self.conn is not None
        try:
            return inspect(self.conn, InspectOptions(options.estimate_above, options.checksums))
        except psycopg.OperationalError as exc:
            raise DatabaseUnreachable(
                f"lost the connection to {self.target.display()}: {exc}".splitlines()[0]
            ) from None
        except psycopg.Error as exc:
            raise SourceError(f"inspecting {self.target.display()} failed: {exc}".splitlines()[0]) from None

    def start_dump(self) -> ChildReader:
        """pg_dump of the database, custom format, uncompressed, from the exported snapshot."""
        assert self.binaries is not None
        argv = [
            self.binaries.tool("pg_dump"),
            "--format=custom",
            "--compress=0",
            f"--snapshot={self.snapshot}",
            "--no-password",
            f"--dbname={self.target.conninfo()}",
        ]
        return ChildReader(argv, error=SourceError, extra_env=self.target.child_env())

    def start_globals(self, *, with_passwords: bool = True) -> ChildReader:
        """Roles and tablespaces (``pg_dumpall --globals-only``); role password hashes stay encrypted."""
        assert self.binaries is not None
        argv = [
            self.binaries.tool("pg_dumpall"),
            "--globals-only",
            "--no-password",
            f"--dbname={self.target.with_db('postgres').conninfo()}",
        ]
        if not with_passwords:
            argv.append("--no-role-passwords")
        return ChildReader(argv, error=SourceError, extra_env=self.target.child_env())

    def tool_versions(self) -> dict[str, str]:
        assert self.binaries is not None
        return {
            "pg_dump": self.binaries.version("pg_dump"),
            "bindir": str(self.binaries.bindir),
            "origin": self.binaries.origin,
        }
