"""backup-platform, the dr-drill platform mode and restore-platform on the harness (issue 15).

The archiving primary of the WAL tests (``wal_env``: real PostgreSQL, ``seedvault wal-push`` to moto), the fake
``neo4j-admin`` as the graph: a production state directory and a scratch one, each reached through a command
prefix ``env FAKE_NEO4J_STATE=...`` in its ``Neo4jTarget`` block (the way a ``docker exec`` prefix reaches a
container). The drill's scratch Neo4j is made and removed by the setup/teardown commands of
tests/integration/test_platform_drill.py, which also start a stand-in server process.
"""

from __future__ import annotations

import contextlib
import json
import os
import tomllib
from pathlib import Path

import pytest

from flows.backup_platform import backup_platform_flow
from flows.dr_drill import dr_drill_flow
from flows.restore_platform import restore_platform_flow
from seedvault.errors import DrillTargetMissed
from seedvault.sources.postgres.cluster import HOST, LocalCluster
from tasks.platform import DRILL_ARTIFACT
from tests.fixtures.s3 import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET
from tests.fixtures.walenv import WalEnv
from tests.integration.test_platform_drill import DB, Platform
from tests.prefect.api import as_fields, latest_table


@pytest.fixture(scope="module")
def pblocks(prefect_harness, wal_env: WalEnv, tmp_path_factory) -> dict:
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from blocks import Neo4jTarget, PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository

    p = Platform(wal_env, tmp_path_factory.mktemp("platform-flows"))
    config = tomllib.loads(wal_env.config.read_text())
    credentials = AwsCredentials(aws_access_key_id=S3_ACCESS_KEY_ID, aws_secret_access_key=S3_SECRET,
                                 region_name=S3_REGION,
                                 aws_client_parameters=AwsClientParameters(endpoint_url=wal_env.endpoint))  # fmt: skip
    bucket = S3Bucket(bucket_name=wal_env.bucket, bucket_folder="repo", credentials=credentials)
    SeedvaultRepository(s3_bucket=bucket).save("platform-repo", overwrite=True)
    SeedvaultEncryptionKey(kind="raw", value=Path(config["key_file"]).read_text().strip()).save(
        "platform-key", overwrite=True
    )
    PostgresTarget(host=HOST, port=wal_env.primary.port, user="postgres", password=wal_env.password,
                   database="postgres").save("platform-pg", overwrite=True)  # fmt: skip
    for name, state in (("graph-prod", p.prod), ("graph-scratch", p.scratch)):
        env = f"env FAKE_NEO4J_STATE={state}"
        Neo4jTarget(command_prefix=env, stop_command=f"{env} fake-neo4j stop {DB}",
                    start_command=f"{env} fake-neo4j start {DB}").save(name, overwrite=True)  # fmt: skip
    scratch_env = f"env FAKE_NEO4J_STATE={p.scratch} SCRATCH_SERVERS={p.servers}"
    old_path, old_pass = os.environ["PATH"], os.environ.get("PGPASSFILE")
    os.environ["PATH"] = f"{p.bindir}:{old_path}"
    os.environ["PGPASSFILE"] = str(wal_env.pgpass)  # the recovered copies keep the primary's password
    with wal_env.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS flow_readings (id bigserial PRIMARY KEY, ts timestamptz NOT NULL)")
        conn.execute("INSERT INTO flow_readings (ts) SELECT clock_timestamp() FROM generate_series(1, 200)")
    wal_env.cli("backup", "postgres-base", "--dsn", wal_env.dsn(), "--json")
    try:
        yield {
            "p": p,
            "common": {"repository": "platform-repo", "key": "platform-key"},
            "drill": {
                "mode": "platform",
                "neo4j_target": "graph-scratch",
                "scratch_parent": str(p.parent),
                "neo4j_scratch_setup": f"{scratch_env} scratch-setup",
                "neo4j_scratch_teardown": f"{scratch_env} scratch-teardown",
            },  # fmt: skip
        }
    finally:
        os.environ["PATH"] = old_path
        if old_pass is None:
            os.environ.pop("PGPASSFILE", None)
        else:
            os.environ["PGPASSFILE"] = old_pass


def test_backup_platform_then_the_platform_drill_publishes_rto_and_rpo_and_records_the_event(pblocks) -> None:
    p, common = pblocks["p"], pblocks["common"]
    group = backup_platform_flow(**common, target="platform-pg", neo4j_target="graph-prod", prune=False)
    assert group["verify"] and group["skew_seconds"] == 0 and group["neo4j_mode"] == "dump"
    fields = as_fields(latest_table("seedvault-backup-platform")[0])
    assert fields["group"] == group["id"] and fields["tables"] == group["tables"]

    result = dr_drill_flow(**common, **pblocks["drill"])
    assert result["result"] == "ok" and result["group_id"] == group["id"]
    p.assert_nothing_left()
    rows, _ = latest_table(DRILL_ARTIFACT)
    f = as_fields(rows)
    assert f["status"] == "passed" and f["group"] == group["id"] and f["RTO"] == "pass" and f["RPO"] == "pass"
    assert float(f["RTO s"]) == pytest.approx(result["rto"]["seconds"], abs=0.001) and f["RTO target s"] == "3600.000"
    assert f["RPO target s"] == "900.000" and float(f["RPO s"]) >= 0
    for step in ("postgres: WAL fetch and replay to the restore point", "neo4j: download, decrypt, load, start",
                 "postgres: download, decrypt, extract the base backup", "postgres: rows and checksums"):  # fmt: skip
        assert f"step {step} s" in f, sorted(f)
    assert [k for k in f if k.startswith("trend ")]  # the last drills (this one among them)
    drills = [e for e in json.loads(p.env.cli("audit", "--json").stdout)["events"] if e["operation"] == "drill"]
    assert drills[-1]["result"] == "ok" and drills[-1]["who"]["via"] == "prefect"
    assert drills[-1]["details"]["rto_ms"] == round(result["rto"]["seconds"] * 1000)


def test_the_platform_drill_fails_when_a_target_is_missed_after_publishing_and_cleaning(pblocks) -> None:
    p, common = pblocks["p"], pblocks["common"]
    state = dr_drill_flow(**common, **pblocks["drill"], rpo_target=0.001, return_state=True)
    assert state.is_failed()
    with pytest.raises(DrillTargetMissed, match="RPO .* missed the target of 0.001 s"):
        state.result()
    f = as_fields(latest_table(DRILL_ARTIFACT)[0])
    assert f["status"] == "FAILED" and f["RPO"] == "FAIL" and f["RTO"] == "pass"
    p.assert_nothing_left()
    drills = [e for e in json.loads(p.env.cli("audit", "--json").stdout)["events"] if e["operation"] == "drill"]
    assert drills[-1]["result"] == "failed" and drills[-1]["details"]["missed"] == ["rpo"]


def test_restore_platform_flow_recovers_the_newest_group(pblocks) -> None:
    p, common = pblocks["p"], pblocks["common"]
    data = p.env.new_dir()
    report = restore_platform_flow(**common, data_dir=str(data), neo4j_target="graph-prod", archive_mode="off")
    cluster = LocalCluster(data, port=report["postgres"]["port"])
    try:
        assert report["postgres"]["verified"]["tables"] >= 1 and report["neo4j"]["safety_copy"]
        f = as_fields(latest_table("seedvault-restore-platform")[0])
        assert f["group"] == report["group_id"] and f["tables verified"] == report["postgres"]["verified"]["tables"]
    finally:
        with contextlib.suppress(Exception):
            cluster.destroy()
