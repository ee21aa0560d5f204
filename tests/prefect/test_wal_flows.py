"""backup-postgres-base and check-wal-freshness on the harness, against a real archiving PostgreSQL.

``wal_env`` is the archiving primary of the WAL tests (archive_command = ``seedvault wal-push %p`` into a moto
S3 bucket); the flows reach the same repository through saved blocks (prefect-aws credentials with the moto
endpoint, the master key, the server with its password). Staleness is real: archive_command is set to
``false`` on the server, and put back (the module's primary is shared) before the test ends.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest

from flows.backup_postgres_base import backup_postgres_base_flow
from flows.check_wal_freshness import check_wal_freshness_flow
from seedvault import process
from seedvault.errors import WalStale
from seedvault.sources.postgres.cluster import HOST
from seedvault.units import human_bytes
from tests.fixtures.s3 import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET
from tests.fixtures.walenv import WalEnv
from tests.prefect.api import as_fields, latest_table, task_runs

TARGET = "wal-pg"


@pytest.fixture(scope="module")
def wal_blocks(prefect_harness, wal_env: WalEnv) -> dict[str, str]:
    """Blocks naming what the server's archive_command uses: its bucket and prefix, its key, the server."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from blocks import PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository

    config = tomllib.loads(wal_env.config.read_text())
    credentials = AwsCredentials(
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        region_name=S3_REGION,
        aws_client_parameters=AwsClientParameters(endpoint_url=wal_env.endpoint),
    )
    bucket = S3Bucket(bucket_name=wal_env.bucket, bucket_folder="repo", credentials=credentials)
    SeedvaultRepository(s3_bucket=bucket).save("wal-repo", overwrite=True)
    raw_key = Path(config["key_file"]).read_text().strip()
    SeedvaultEncryptionKey(kind="raw", value=raw_key).save("wal-key", overwrite=True)
    PostgresTarget(
        host=HOST, port=wal_env.primary.port, user="postgres", password=wal_env.password, database="postgres"
    ).save(TARGET, overwrite=True)
    return {"repository": "wal-repo", "key": "wal-key", "target": TARGET, "raw_key": raw_key}


def _params(blocks: dict[str, str]) -> dict[str, str]:
    return {k: blocks[k] for k in ("repository", "key", "target")}


def test_base_backup_flow_completes_and_publishes_artifact(wal_blocks, wal_env: WalEnv) -> None:
    with wal_env.connect() as conn:
        system_id = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    state = backup_postgres_base_flow(**_params(wal_blocks), return_state=True)
    summary = state.result()
    assert summary["system_id"] == system_id and summary["timeline"] == 1 and summary["attempt"] == 1
    assert summary["start_wal"] <= summary["stop_wal"] and summary["verify"]["bytes"] == summary["raw_size"]
    run_id = state.state_details.flow_run_id
    names = {t.name.rsplit("-", 1)[0] for t in task_runs(run_id, expect=3)}
    assert names == {"backup-postgres-base", "verify-backup", "prune"}  # prune last, after the verify

    rows, artifact = latest_table(f"seedvault-base-backup-{TARGET}")
    fields = as_fields(rows)
    assert artifact.flow_run_id == run_id
    assert fields["id"] == summary["id"] and fields["status"] == "completed, verified"
    assert fields["system id"] == system_id and fields["timeline"] == 1
    assert (fields["start lsn"], fields["stop lsn"]) == (summary["start_lsn"], summary["stop_lsn"])
    assert fields["raw size"] == human_bytes(summary["raw_size"])
    assert fields["stored size"] == human_bytes(summary["stored_size"]) and summary["stored_size"] > 0
    assert fields["repository"] == f"s3://{wal_env.bucket}/repo"
    assert all(f"{s} s" in fields for s in ("pg_basebackup", "confirm wal", "total", "verify"))


def test_freshness_flow_completes_when_healthy_and_fails_and_notifies_when_stale(
    wal_blocks, wal_env: WalEnv, receiver
) -> None:
    env = wal_env
    seg = env.wait_archived()
    report = check_wal_freshness_flow(**_params(wal_blocks))
    # Right after a base backup the last archived file can be its .backup history file, named after seg.
    assert report["ok"] and report["last_archived_wal"].startswith(seg) and report["pending"] == 0
    fields = as_fields(latest_table(f"seedvault-wal-freshness-{TARGET}")[0])
    assert fields["status"] == "fresh" and fields["last archived"] == report["last_archived_wal"]
    assert "reason" not in fields and fields["server"] == report["server"]

    with env.connect() as conn:
        conn.execute("ALTER SYSTEM SET archive_command = 'false'")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        try:
            broken_at = conn.execute("SELECT now()").fetchone()[0]
            conn.execute("INSERT INTO ev (ts, note) VALUES (clock_timestamp(), 'stale')")
            conn.execute("SELECT pg_switch_wal()")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                failed_at = conn.execute("SELECT last_failed_time FROM pg_stat_archiver").fetchone()[0]
                if failed_at is not None and failed_at > broken_at:
                    break
                time.sleep(0.2)
            time.sleep(3)  # longer than max_lag below
            state = check_wal_freshness_flow(
                **_params(wal_blocks), max_lag=2, notify_block="custom-webhook/sv-hook", return_state=True
            )
        finally:
            conn.execute("ALTER SYSTEM RESET archive_command")
            conn.execute("SELECT pg_reload_conf()")
    assert state.is_failed()
    with pytest.raises(WalStale) as info:
        state.result()
    reason = str(info.value)
    assert reason.startswith("WAL archiving is failing on postgres@") and "\n" not in reason
    # One message, from the flow's hook, with the one-line reason and the runbook section.
    (hook,) = receiver.wait("/hook")
    assert hook["text"].startswith("seedvault wal-stale: check-wal-freshness (no deployment) [postgres")
    assert reason in hook["text"] and "RUNBOOK.md section 27.7" in hook["text"]
    sent = json.dumps(receiver.bodies)
    for secret in (wal_blocks["raw_key"], env.password, S3_SECRET):
        assert not any(form in sent for form in process.secret_forms(secret))
    fields = as_fields(latest_table(f"seedvault-wal-freshness-{TARGET}")[0])
    assert fields["status"] == "stale (failing, lag, not-archiving)" and fields["reason"] in reason
    assert fields["failed count"] >= 1 and fields["pending"] >= 1
    # Archiving repaired: the archiver catches up and the check completes again.
    env.wait_archived()
    assert check_wal_freshness_flow(**_params(wal_blocks), max_lag=2)["ok"]


def test_pitr_flow_recovers_into_a_new_directory_and_a_missing_block_fails_with_its_artifact(
    wal_blocks, wal_env: WalEnv
) -> None:
    """restore-postgres-pitr (the UI's on-demand PITR) end to end; a deployment naming a block that is not there
    fails with one line and a failure artifact (the block is loaded inside the flow's error handling)."""
    import psycopg

    from flows.restore_postgres_pitr import restore_postgres_pitr_flow
    from seedvault.errors import ConfigError
    from seedvault.sources.postgres.cluster import LocalCluster

    backup_postgres_base_flow(**_params(wal_blocks))
    with wal_env.connect() as conn:
        conn.execute("INSERT INTO ev (ts, note) VALUES (clock_timestamp(), 'pitr-flow')")
    wal_env.wait_archived()
    data = wal_env.new_dir()
    report = restore_postgres_pitr_flow(repository="wal-repo", key="wal-key", data_dir=str(data), latest=True,
                                        target=TARGET, archive_mode="off")  # fmt: skip
    cluster = LocalCluster(data, port=report["port"])
    try:
        with psycopg.connect(cluster.conninfo("postgres"), passfile=str(wal_env.pgpass), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM ev WHERE note = 'pitr-flow'").fetchone()[0] == 1
    finally:
        cluster.destroy()
    rows, _ = latest_table("seedvault-restore-pitr")
    assert as_fields(rows)["data directory"] == report["data_dir"]
    state = restore_postgres_pitr_flow(repository="no-such-repo", key="wal-key", data_dir=str(wal_env.new_dir()),
                                       latest=True, return_state=True)  # fmt: skip
    assert state.is_failed()
    with pytest.raises(ConfigError, match="no-such-repo"):
        state.result()
    from tasks.reports import failure_key

    rows, _ = latest_table(failure_key("restore-pitr", "postgres"))
    assert "no-such-repo" in json.dumps(rows)
