"""Issue 17 on a real PostgreSQL: base backups and WAL replicated to a second region (a second moto server),
then a point-in-time recovery **from the copy** that reaches the same rows, with kill -9 during the WAL copy.

The archiving server and its config come from tests/fixtures/walenv.py; the config gains a ``[replica]`` table
(another endpoint, the same credentials file), which is what ``--replica`` and the PITR's restore_command
(``SEEDVAULT_USE_REPLICA=on``) read. Backups without a database: tests/faults/test_replicate.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from seedvault.sources.postgres.cluster import LocalCluster
from tests.fixtures.s3 import S3_REGION
from tests.fixtures.walenv import WalEnv


@pytest.fixture(scope="module")
def replica(wal_env: WalEnv, moto_server_b) -> str:
    bucket = f"sv-wal-copy-{uuid.uuid4().hex[:10]}"
    moto_server_b.client().create_bucket(Bucket=bucket)
    creds = wal_env.base / "secrets" / "aws-credentials"
    with open(wal_env.config, "a") as fh:  # read by every later wal-push, wal-fetch and CLI run
        fh.write(
            f'\n[replica]\nrepository = "s3://{bucket}/copy"\ns3_endpoint = "{moto_server_b.endpoint_url}"\n'
            f's3_region = "{S3_REGION}"\ns3_credentials_file = "{creds}"\n'
        )
    return f"s3://{bucket}/copy"


def _run(env: WalEnv, *args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "seedvault.cli.app", *args], env={**env.cli_env(), **(extra or {})},
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def _rows(env: WalEnv, cluster: LocalCluster | None = None) -> list[tuple]:
    with env.connect(cluster) as conn:
        return conn.execute("SELECT id, note FROM ev ORDER BY id").fetchall()


def test_pitr_from_the_copy_reaches_the_same_rows_after_kills_during_the_wal_copy(wal_env: WalEnv, replica) -> None:
    env = wal_env
    with env.connect() as conn:
        conn.execute("TRUNCATE ev")
        for i in range(40):
            conn.execute("INSERT INTO ev (ts, note) VALUES (clock_timestamp(), %s)", (f"before-{i}",))
    base = json.loads(env.cli("backup", "postgres-base", "--dsn", env.dsn(), "--json").stdout)
    for round_ in range(4):  # several segments after the base backup: the kills land part-way through them
        with env.connect() as conn:
            for i in range(10):
                conn.execute("INSERT INTO ev (ts, note) VALUES (clock_timestamp(), %s)", (f"after-{round_}-{i}",))
        env.wait_archived()
    expected = _rows(env)
    for point in ("replicate-wal-epochs-copied", "replicate-wal-record-copied:2"):
        killed = _run(env, "replicate", extra={"SEEDVAULT_FAULT_KILL_AT": point})
        assert killed.returncode == -9, (point, killed.stderr)
    done = _run(env, "replicate", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["wal_copied"] > 0 and report["server_side"] == 0, json.dumps(report)
    assert base["id"] in report["copied_backups"] or report["present_backups"] >= 1
    # The copy's WAL archive is complete and authentic from the base backup on.
    wal = _run(env, "--replica", "verify", "wal", "--json")
    assert wal.returncode == 0, wal.stderr
    # PITR from the copy: restore_command and the read-ahead daemon read the replica too.
    data = env.new_dir()
    pitr = _run(env, "--replica", "restore", "postgres-pitr", "--data-dir", str(data), "--latest", "--json")
    assert pitr.returncode == 0, pitr.stderr
    recovered = LocalCluster(data)
    try:
        rows = _rows(env, recovered)
        assert rows[: len(expected)] == expected  # everything committed before the copy, in order
        assert json.loads(pitr.stdout)["plan"]["backup_id"] == base["id"]
        conf = (data / "postgresql.conf").read_text() + (data / "postgresql.auto.conf").read_text()
        assert "SEEDVAULT_USE_REPLICA=on" in conf
    finally:
        recovered.stop()
    events = json.loads(_run(env, "--replica", "audit", "--json").stdout)["events"]
    assert [e for e in events if e["operation"] == "pitr"][-1]["backup_ids"] == [base["id"]]
    status = _run(env, "replicate", "--status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["backups_lacking"] == []
