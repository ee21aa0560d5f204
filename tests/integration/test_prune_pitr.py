"""Prune on a real PostgreSQL archiving to an S3 endpoint (issue 14 acceptance): a small pitr_window, an
injected clock; afterwards a PITR to a moment inside the window succeeds and one outside it is refused with
a clear error, and every WAL segment the window needs is still there (``verify wal``)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from seedvault import retention as rt
from seedvault.config import load
from seedvault.ops.prune import prune
from seedvault.repository import Repository
from seedvault.sources.postgres.cluster import LocalCluster
from seedvault.storage.open import open_storage
from tests.fixtures.walenv import WalEnv


def _insert(env: WalEnv, n: int, note: str) -> datetime:
    with env.connect() as conn:
        for _ in range(n):
            conn.execute("INSERT INTO ev (ts, note) VALUES (clock_timestamp(), %s)", (note,))
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def _repository(env: WalEnv) -> Repository:
    settings = load(env=env.cli_env())
    return Repository(open_storage(settings), settings.key_source())


def test_pitr_inside_the_window_after_prune_succeeds_and_outside_is_refused(wal_env: WalEnv) -> None:
    env = wal_env
    with env.connect() as conn:
        conn.execute("TRUNCATE ev")
    _insert(env, 20, "before-b1")
    b1 = json.loads(env.cli("backup", "postgres-base", "--dsn", env.dsn(), "--json").stdout)
    outside = _insert(env, 20, "after-b1")  # a moment only b1 and the WAL after it can reach
    time.sleep(0.5)
    env.wait_archived()
    b2 = json.loads(env.cli("backup", "postgres-base", "--dsn", env.dsn(), "--json").stdout)
    time.sleep(0.5)
    window_start = datetime.now(UTC)
    time.sleep(0.5)
    inside = _insert(env, 20, "inside")
    time.sleep(0.5)
    _insert(env, 20, "after-target")
    env.wait_archived()

    now = datetime.now(UTC) + timedelta(days=10)  # the injected clock: ten days on
    policy = rt.Policy(keep_within=timedelta(0), min_verified=0, pitr_window=now - window_start)
    repo = _repository(env)
    dry = prune(repo, rt.Policies(policy), now=now)
    decided = {d.name: d for d in dry.plan.backups}
    assert not decided[b1["id"]].keep
    assert decided[b2["id"]].keep and decided[b2["id"]].reasons[0].startswith("PITR anchor of timeline 1")
    report = prune(repo, rt.Policies(policy), execute=True, now=now)
    assert report.deleted_backups == [b1["id"]] and report.deleted_wal > 0
    assert all(d.keep for d in report.plan.wal if d.item.name >= b2["wal"][0])  # type: ignore[union-attr]
    # Planning again over what is left deletes nothing.
    again = prune(repo, rt.Policies(policy), execute=True, now=now)
    assert again.deleted_backups == [] and again.deleted_wal == 0

    assert env.cli("verify", "wal").returncode == 0
    d1 = env.new_dir()
    env.cli("restore", "postgres-pitr", "--data-dir", str(d1), "--to-time", inside.isoformat(), "--timeline", "1")
    restored = LocalCluster(d1)
    try:
        with env.connect(restored) as conn:
            notes = [r[0] for r in conn.execute("SELECT note FROM ev ORDER BY id").fetchall()]
        assert notes.count("inside") == 20 and "after-target" not in notes and notes.count("before-b1") == 20
    finally:
        restored.stop()
    d2 = env.new_dir()
    refused = env.cli(
        "restore", "postgres-pitr", "--data-dir", str(d2), "--to-time", outside.isoformat(), "--timeline", "1",
        check=False,
    )  # fmt: skip
    assert refused.returncode == 12, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert lines[0].startswith("seedvault: error: no physical base backup of system ")
    assert "ends before the target on timeline 1" in lines[0]
    assert "pitr_window" in refused.stderr
    assert not d2.exists() or not any(d2.iterdir())
