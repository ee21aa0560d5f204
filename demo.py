"""The seedvault demo: back up a PostgreSQL database with the ``backup-postgres`` Prefect flow and restore it.

Run by the README's set-up command, in the venv it makes from ``requirements.lock``. It needs no running
Prefect server and no system PostgreSQL:

1. starts a throwaway PostgreSQL server (the machine's PostgreSQL if installed, else the pgserver wheel's;
   run as an unprivileged user, since PostgreSQL refuses root) under ``/var/tmp/seedvault-demo-*``;
2. loads sample data: customers -> orders -> order_items and a ``telemetry.readings`` time series;
3. generates a master key and saves the three seedvault blocks (repository, key, PostgreSQL target with
   its password as a secret) on a temporary Prefect server (ephemeral mode, its own ``PREFECT_HOME``);
4. runs the ``backup-postgres`` flow (dump, compress, encrypt and upload as concurrent tasks; verify;
   artifact) into a local repository, then ``restore-postgres`` into a new database, which verifies every
   table's row count and content checksum;
5. prints the counts and the backup's artifact, then removes everything (the server is stopped even when a
   step fails).
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

DATABASE = "shop"
RESTORED = "shop_restored"


def isolate_prefect() -> Path:
    """Ephemeral Prefect in a temporary home: no server, profile or database of the user's is touched."""
    home = Path(tempfile.mkdtemp(prefix="seedvault-demo-prefect-"))
    # Registered before Prefect is imported, so it runs after Prefect's own exit hook stopped the server.
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    for name in [k for k in os.environ if k.startswith("PREFECT_")]:
        del os.environ[name]
    os.environ.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    return home


def start_cluster(base: Path, password: str):
    from seedvault.sources.postgres.binaries import preferred_server_binaries
    from seedvault.sources.postgres.cluster import LocalCluster

    binaries = preferred_server_binaries()
    print(f"* PostgreSQL {binaries.major} from {binaries.origin} ({binaries.bindir})", flush=True)
    (base / "pg").mkdir(mode=0o755)
    cluster = LocalCluster(base / "pg" / "data", binaries=binaries)
    cluster.initdb("postgres", password=password, extra_conf={"fsync": "off"}, sync=False)
    cluster.start(timeout=60)
    return cluster


def table_counts(cluster, password: str, dbname: str) -> dict[str, int]:
    with cluster.connect(dbname, password=password, autocommit=True) as conn:
        names = conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname IN ('public', 'telemetry') ORDER BY 1"
        ).fetchall()
        return {name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for (name,) in names}


def print_artifact(key: str) -> None:
    from prefect.artifacts import Artifact

    artifact = Artifact.get(key)
    if artifact is None:
        raise SystemExit(f"demo failed: no artifact {key}")
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    print(f"\nartifact {key} ({artifact.description}):")
    width = max(len(str(r["field"])) for r in rows)
    for row in rows:
        print(f"  {row['field']:<{width}}  {row['value']}")


def run(base: Path, password: str) -> None:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from blocks import PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository
    from flows.backup_postgres import backup_postgres_flow
    from flows.restore_postgres import restore_postgres_flow
    from seedvault.sources.postgres.cluster import HOST
    from seedvault.sources.postgres.sample import load_sample
    from tasks.reports import artifact_key

    cluster = start_cluster(base, password)
    try:
        with cluster.connect("postgres", password=password, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        with cluster.connect(DATABASE, password=password) as conn:
            load_sample(conn)
        print(f"* sample data loaded into {DATABASE}: {table_counts(cluster, password, DATABASE)}", flush=True)

        print("* saving blocks (the first Prefect call starts a temporary server, ~20 s)", flush=True)
        SeedvaultRepository(local_path=str(base / "repository")).save("demo-repository", overwrite=True)
        SeedvaultEncryptionKey.generate().save("demo-key", overwrite=True)
        PostgresTarget(host=HOST, port=cluster.port, user="postgres", password=password, database=DATABASE).save(
            "demo-postgres", overwrite=True
        )
        blocks = {"repository": "demo-repository", "key": "demo-key", "target": "demo-postgres"}

        # Heartbeats off only to save a second per run here; production keeps them (crash detection).
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            print("* running flow backup-postgres", flush=True)
            summary = backup_postgres_flow(**blocks)
            print(f"* running flow restore-postgres into {RESTORED}", flush=True)
            report = restore_postgres_flow(**blocks, database=RESTORED, backup_id=summary["id"])

        restored = table_counts(cluster, password, RESTORED)
        print(f"\nbackup {summary['id']}: {summary['raw_size']} bytes raw -> {summary['stored_size']} stored")
        print(f"{'table':<24} {'backup rows':>12} {'restored rows':>14}")
        for name, rows in summary["table_rows"].items():
            print(f"{name:<24} {rows:>12} {restored.get(name, 'missing'):>14}")
        print(
            f"verified counts: {report['tables_verified']} tables, {report['rows_verified']} rows, "
            f"{report['checksums_verified']} content checksums"
        )
        if restored != summary["table_rows"] or report["tables_verified"] != len(summary["table_rows"]):
            raise SystemExit("demo failed: the restored database does not match the backup")
        print_artifact(artifact_key("seedvault-backup", DATABASE))
        print("\ndemo ok: backed up by the backup-postgres flow, restored by restore-postgres, every table verified")
    finally:
        cluster.destroy()


def main() -> None:
    isolate_prefect()
    base = Path(tempfile.mkdtemp(prefix="seedvault-demo-", dir="/var/tmp"))
    base.chmod(0o755)  # the server runs as an unprivileged user and must traverse it
    password = "demo-" + secrets.token_urlsafe(18)
    try:
        run(base, password)
    except Exception as exc:
        from seedvault.errors import SeedvaultError

        reason = exc.one_line() if isinstance(exc, SeedvaultError) else f"{type(exc).__name__}: {exc}"
        sys.exit(f"demo failed: {reason}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
