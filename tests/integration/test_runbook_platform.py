"""Run RUNBOOK.md's full-platform recovery blocks (```bash runbook-platform, section 26), extracted from the file,
in order, with ``bash -euo pipefail``, against the ``wal_env`` archiving PostgreSQL (moto S3) and the fake
``neo4j-admin`` (tests/fixtures/fake_neo4j.py), CLI only (no Prefect server).

Before the section the test plays the platform's past: a base backup, rows written, a group taken while the graph
held known bytes; then the disaster (the graph's store overwritten). After the blocks it checks what they left:
the recovered PostgreSQL holds the rows of the group's moment, the graph is the group's again (the damaged one
kept as the safety copy), and the drill of 26.5 recorded a ``drill`` event and left no scratch behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from seedvault.sources.postgres.cluster import LocalCluster
from tests.fixtures.walenv import WalEnv
from tests.integration.test_platform_drill import DB, SERVICE, Platform
from tests.test_runbook import run_blocks, runbook_blocks

TAG = "runbook-platform"
RUNNABLE = ("26.1", "26.2", "26.3", "26.4", "26.5")


def test_runbook_platform_blocks_cover_section_26_and_only_it() -> None:
    sections = [s for s, _ in runbook_blocks(TAG)]
    for prefix in RUNNABLE:
        assert any(s.startswith(prefix + " ") for s in sections), f"no {TAG} block in RUNBOOK section {prefix}"
    assert all(re.match(r"^26\.\d ", s) for s in sections), sections
    text = Path(__file__).parents[2].joinpath("RUNBOOK.md").read_text()
    assert "## 26. Full-platform disaster recovery" in text


def test_runbook_platform_blocks_run(wal_env: WalEnv, tmp_path_factory) -> None:
    env = wal_env
    p = Platform(env, tmp_path_factory.mktemp("runbook-platform"))
    work = tmp_path_factory.mktemp("runbook-platform-work")
    with env.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS readings (id bigserial PRIMARY KEY, ts timestamptz NOT NULL)")
        conn.execute("INSERT INTO readings (ts) SELECT clock_timestamp() FROM generate_series(1, 300)")
    env.cli("backup", "postgres-base", "--dsn", env.dsn(), "--json")
    graph = (p.prod / f"store-{DB}").read_bytes()
    made = p.run("backup", "platform", "--pg-dsn", env.dsn(), *SERVICE, "--json", state=p.prod)
    assert made.returncode == 0, made.stderr
    group = json.loads(made.stdout)
    with env.connect() as conn:
        expected = conn.execute("SELECT count(*) FROM readings").fetchone()[0]
        conn.execute("INSERT INTO readings (ts) SELECT clock_timestamp() FROM generate_series(1, 50)")  # lost
    (p.prod / f"store-{DB}").write_bytes(b"damaged by the disaster")
    pgdata = env.new_dir()
    scratch_env = f"env FAKE_NEO4J_STATE={p.scratch} SCRATCH_SERVERS={p.servers}"
    stop, start = (f"env FAKE_NEO4J_STATE={p.prod} fake-neo4j {a} {DB}" for a in ("stop", "start"))
    block_env = {
        **env.cli_env(),
        "WORK": str(work),
        "PATH": f"{p.bindir}:{env.primary.binaries.bindir}:{os.environ['PATH']}",
        "NEO4J_STOP": stop,
        "NEO4J_START": start,
        "PGDATA_NEW": str(pgdata),
        "DRILL_SCRATCH": str(p.parent),
        "NEO4J_SCRATCH_SETUP": f"{scratch_env} scratch-setup",
        "NEO4J_SCRATCH_TEARDOWN": f"{scratch_env} scratch-teardown",
        "FAKE_NEO4J_STATE": str(p.prod),  # where neo4j-admin finds the graph (on the Neo4j host: itself)
    }
    for name in ("NEO4J_HOME", "NEO4J_CONF"):
        block_env.pop(name, None)

    def drill_scratch(e: dict[str, str]) -> dict[str, str]:
        # 26.5 drills into the scratch instance: neo4j-admin there reads the scratch state.
        return {"FAKE_NEO4J_STATE": str(p.scratch), "NEO4J_STOP": f"fake-neo4j stop {DB}",
                "NEO4J_START": f"fake-neo4j start {DB}"}  # fmt: skip

    recovered: LocalCluster | None = None
    try:
        run_blocks(block_env, TAG, before={"26.5": drill_scratch}, timeout=600)
        assert (work / "group").read_text().strip() == group["id"]
        report = json.loads((work / "platform-restore.json").read_text())
        recovered = LocalCluster(pgdata, port=report["postgres"]["port"])
        with env.connect(recovered) as conn:
            assert conn.execute("SELECT count(*) FROM readings").fetchone()[0] == expected  # the group's moment
        assert (p.prod / f"store-{DB}").read_bytes() == graph  # the graph is the group's again
        assert report["neo4j"]["safety_copy"]  # the damaged one kept first
        drills = [e for e in json.loads(env.cli("audit", "--json").stdout)["events"] if e["operation"] == "drill"]
        assert drills and drills[-1]["result"] == "ok" and drills[-1]["details"]["group_id"] == group["id"]
        p.assert_nothing_left()
    finally:
        if recovered is not None:
            with contextlib.suppress(Exception):
                recovered.destroy()
