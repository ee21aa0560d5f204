"""A real Prometheus scrapes what ``seedvault metrics`` pushed and wrote: every dashboard and alert expression.

The repository is on S3 (a moto server, so the cost estimate has storage classes), with real backups made by
the CLI (``put``, a ``verify``, failed ``put`` attempts), a synthetic WAL segment archived by the engine's WAL
store and two drill events as the platform drill records them (one passed, a later one that missed its RTO).
Debian's ``prometheus`` and ``prometheus-pushgateway`` run on loopback ports (tests/fixtures/prometheus.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import yaml

from seedvault import audit
from seedvault.crypto.keys import KeySource, generate_raw_key
from seedvault.repository import Repository
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.store import WalStore
from seedvault.storage.s3 import S3Storage
from tests.cli_runner import invoke
from tests.fixtures.prometheus import need

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana" / "seedvault-dashboard.json"
ALERTS = ROOT / "docs" / "prometheus" / "seedvault-alerts.yml"
SYSID = 7412345678901234567
SEG = 16 * 1024 * 1024
FIRING = {"SeedvaultBackupFailed", "SeedvaultDrillRtoMissed", "SeedvaultDrillFailed"}  # made true below
METRIC = re.compile(r"\bseedvault_[a-z_]+\b")


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p["targets"]]


def alert_rules() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


def _segment(directory: Path, segno: int) -> Path:
    head = wn.LONG_HEADER.pack(wn.PAGE_MAGIC[15], wn.XLP_LONG_HEADER, 1, segno * SEG, 0, SYSID, SEG, 8192)
    path = directory / wn.segment_name(1, segno, SEG)
    path.write_bytes(head + os.urandom(16384) + b"\0" * (SEG - len(head) - 16384))
    return path


def _cli(env: dict[str, str], *args: str, input: bytes | None = None, rc: int = 0) -> str:
    res = invoke(list(args), env, input=input)
    assert res.exit_code == rc, f"seedvault {' '.join(args)}: rc {res.exit_code}: {res.stderr}"
    return res.stdout.decode()


def _drill_event(repo: Repository, *, ok: bool, rto_ms: int) -> None:
    details = {"mode": "platform", "drill_id": f"d{rto_ms}", "group_id": None, "rto_ms": rto_ms,
               "rto_target_ms": 3_600_000, "rpo_ms": 120_000, "rpo_target_ms": 90_000_000,
               "missed": [] if ok else ["rto"]}  # fmt: skip
    audit.append(repo, "drill", result="ok" if ok else "failed", details=details)


def test_promtool_accepts_the_alert_rules():
    proc = subprocess.run([need("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_dashboard_and_alert_expression_returns_data(prom_stack, moto_server, s3_bucket, tmp_path):
    t0 = time.monotonic()
    key = tmp_path / "master.key"
    key.write_text(generate_raw_key() + "\n")
    key.chmod(0o600)
    env = {"SEEDVAULT_REPOSITORY": f"s3://{s3_bucket}/repo", "SEEDVAULT_S3_ENDPOINT": moto_server.endpoint_url,
           "SEEDVAULT_KEY_FILE": str(key)}  # fmt: skip
    _cli(env, "init")
    _cli(env, "put", "--label", "orders", input=os.urandom(200_000))
    backup_id = json.loads(_cli(env, "list", "--json"))[0]["id"]
    _cli(env, "verify", backup_id)
    repo = Repository(S3Storage(s3_bucket, prefix="repo", endpoint_url=moto_server.endpoint_url),
                      KeySource("raw", origin="test key", path=key))  # fmt: skip
    WalStore(repo, SYSID).push(_segment(tmp_path, 3))
    _drill_event(repo, ok=True, rto_ms=1_000)
    _drill_event(repo, ok=False, rto_ms=7_200_000)  # the newest drill missed its RTO target (1 h)
    _cli(env, "replicate", "--to", f"file://{tmp_path / 'replica'}")  # the replication series

    def publish() -> None:
        _cli(env, "metrics", "--textfile", str(prom_stack.textfile), "--push", prom_stack.pushgateway_url)

    publish()  # failures_total is 0 now: the next failure must show as an increase
    first = prom_stack.wait_for('seedvault_backup_failures_total{job="seedvault"}')
    assert first and first[0]["value"][1] == "0", first
    assert prom_stack.wait_for('seedvault_backup_failures_total{job="textfile"}')
    time.sleep(1.5)  # a second sample of the zero
    _cli(env, "put", "--label", "orders", "--", "sh", "-c", "echo partial; exit 3", rc=50)
    publish()
    assert prom_stack.wait_for('seedvault_backup_failures_total{job="seedvault"} == 1')
    assert prom_stack.wait_for('seedvault_backup_failures_total{job="textfile"} == 1')

    empty = []
    for expr in dashboard_exprs():
        if not prom_stack.wait_for(expr, timeout=10):
            empty.append(expr)
    assert not empty, f"dashboard expressions without data: {empty}"
    rules = alert_rules()
    assert set(rules) >= FIRING
    silent = []
    for name, expr in rules.items():
        result = prom_stack.wait_for(expr, timeout=10 if name in FIRING else 0)
        if name in FIRING:
            assert result, f"alert {name} should fire: {expr}"
        elif not result:  # not firing: every series it reads must exist
            silent += [f"{name}: {m}" for m in set(METRIC.findall(expr)) if not prom_stack.query(m)]
    assert not silent, f"alert rules reading series that do not exist: {silent}"

    # The values are the repository's: the newest backup's finish time, the drill's figures, the WAL's system.
    finished = json.loads(_cli(env, "list", "--json"))[0]["finished"]
    got = prom_stack.query('seedvault_backup_last_success_timestamp_seconds{job="seedvault"}')
    assert got[0]["metric"] | {} and got[0]["metric"]["store"] == "stream" and got[0]["metric"]["database"] == "orders"
    assert abs(float(got[0]["value"][1]) - _ts(finished)) < 0.01
    assert prom_stack.query("seedvault_drill_rto_seconds")[0]["value"][1] == "7200"
    assert prom_stack.query('seedvault_wal_archive_lag_seconds{job="seedvault"}')[0]["metric"]["database"] == str(SYSID)
    cost = prom_stack.query('sum(seedvault_repository_cost_estimate_dollars{job="textfile"})')
    assert float(cost[0]["value"][1]) > 0
    assert time.monotonic() - t0 < 60


def _ts(text: str) -> float:
    from datetime import UTC, datetime

    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
