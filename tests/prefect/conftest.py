"""Fixtures of the Prefect-layer tests: a source database, saved blocks, and reading back from the API.

Real components only: the session's PostgreSQL server (``pg_server``), moto over HTTP for S3, and the Prefect
test-harness server. The source database holds the sample schema plus ``public.blobs``, 8 MiB of random
bytes, so that the dump is big enough for multipart S3 uploads (stored > 5 MiB parts) and for a dump to be
interrupted while it streams.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg import sql

from seedvault.crypto.keys import generate_raw_key
from seedvault.sources.postgres.sample import load_sample
from tests.prefect.receiver import Receiver

BLOB_ROWS = 32
BLOB_SIZE = 256 * 1024


@dataclass
class SourceDb:
    name: str
    counts: dict[str, int]


@dataclass
class SavedBlocks:
    """Names of the saved blocks (what flows and deployments take) and the secrets behind them."""

    repository: str
    key: str
    target: str
    repo_root: Path
    raw_key: str

    def params(self) -> dict[str, str]:
        return {"repository": self.repository, "key": self.key, "target": self.target}


@pytest.fixture(scope="session")
def source_db(pg_server) -> Iterator[SourceDb]:
    name = f"sv_prefect_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(name)
    try:
        with pg_server.connect(name) as conn:
            counts = load_sample(conn)
            conn.execute("CREATE TABLE public.blobs (id int PRIMARY KEY, payload bytea NOT NULL)")
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO public.blobs VALUES (%s, %s)", [(i, os.urandom(BLOB_SIZE)) for i in range(BLOB_ROWS)]
                )
            counts["blobs"] = BLOB_ROWS
        yield SourceDb(name, counts)
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def saved_blocks(prefect_harness, pg_server, source_db, tmp_path_factory) -> SavedBlocks:
    from blocks import PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository

    root = tmp_path_factory.mktemp("prefect-repo") / "repo"
    raw_key = generate_raw_key()
    SeedvaultRepository(local_path=str(root)).save("local-repo", overwrite=True)
    SeedvaultEncryptionKey(kind="raw", value=raw_key).save("master-key", overwrite=True)
    PostgresTarget(
        host=pg_server.host,
        port=pg_server.port,
        user=pg_server.user,
        password=pg_server.password,
        database=source_db.name,
    ).save("source-pg", overwrite=True)
    return SavedBlocks("local-repo", "master-key", "source-pg", root, raw_key)


@pytest.fixture
def receiver(prefect_harness) -> Iterator[Receiver]:
    """A receiver with two saved webhook blocks: ``custom-webhook/sv-hook`` and ``custom-webhook/sv-automation``."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    rec = Receiver()
    for name in ("hook", "automation"):
        CustomWebhookNotificationBlock(
            name=name, url=f"{rec.url}/{name}", json_data={"text": "{{subject}} | {{body}}"}
        ).save(f"sv-{name}", overwrite=True)
    try:
        yield rec
    finally:
        rec.server.shutdown()


@pytest.fixture
def scratch_db(pg_server) -> Iterator[str]:
    """A database name that does not exist yet (a restore creates it); dropped afterwards."""
    name = f"sv_restored_{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        pg_server.drop_database(name)


def table_hashes(pg_server, db: str) -> dict[str, str]:
    """Per-table content hashes (rows in primary-key order), the engine's own checksum."""
    from seedvault.sources.postgres.inspect import table_checksum

    with pg_server.connect(db) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname IN ('public', 'telemetry') ORDER BY 1, 2"
        )
        names = cur.fetchall()
        out = {}
        for schema, table in names:
            cur.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table)))
            out[f"{schema}.{table}"] = f"{cur.fetchone()[0]}:{table_checksum(cur, schema, table)}"
        return out
