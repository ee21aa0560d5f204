"""``seedvault status`` over a real local repository: real ``seedvault put`` backups, an injected clock.

Stored sizes come from random (incompressible) payloads, so a put of N bytes stores a little over N bytes.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from seedvault import audit
from seedvault.config import Settings
from seedvault.errors import ConfigError, SizeAnomaly, StatusAlerting
from seedvault.ops.status import (
    StatusPolicy,
    check_new_backup,
    compute_status,
    key_first_use,
    raise_if_anomalous,
    size_anomaly,
)
from seedvault.ops.status_markdown import render_markdown
from tests.cli_runner import invoke
from tests.fixtures.repo import LocalRepo, make_local_repo

KB = 1024


def put(repo: LocalRepo, tmp: Path, label: str, size: int) -> str:
    payload = tmp / f"payload-{label}-{size}"
    payload.write_bytes(os.urandom(size))
    res = invoke(["put", "--label", label, "--input", str(payload), "--json"], repo.env)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)["id"]


def status_cli(repo: LocalRepo, *args: str, env: dict[str, str] | None = None):
    res = invoke(["status", "--json", *args], {**repo.env, **(env or {})})
    return res.exit_code, json.loads(res.stdout), res.stderr


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Seven backups of ~100 KiB under label ``steady``, then one of ~10 KiB: the last one is anomalous."""
    tmp = tmp_path_factory.mktemp("status")
    repo = make_local_repo(tmp)
    ids = [put(repo, tmp, "steady", (100 + i) * KB) for i in range(7)]
    ids.append(put(repo, tmp, "steady", 10 * KB))
    other = put(repo, tmp, "other", 50 * KB)
    return repo, ids, other


def test_size_anomaly_rule_is_a_band_around_the_median():
    sizes = [100, 104, 98, 101, 99, 102, 100]
    assert size_anomaly(sizes, 130, band=0.5) is None
    low = size_anomaly(sizes, 49, band=0.5)
    assert low and low["median"] == 100 and low["low"] == 50 and low["high"] == 150 and low["ratio"] == 0.49
    assert size_anomaly(sizes, 151, band=0.5)["size"] == 151
    assert size_anomaly(sizes, 121, band=0.2) is not None
    assert size_anomaly([100, 100], 1, band=0.5) is None  # too little history to judge


def test_status_shows_last_good_backup_trend_and_flags_the_shrunken_backup(history):
    repo, ids, other = history
    code, report, stderr = status_cli(repo)
    assert code == StatusAlerting.exit_code == 65
    groups = {g["label"]: g for g in report["groups"]}
    steady = groups["steady"]
    assert steady["kind"] == "put" and steady["backups"] == 8 and steady["last_backup"]["id"] == ids[-1]
    assert len(steady["trend_stored_sizes"]) == 7 and steady["trend_stored_sizes"][-1] < 11 * KB
    assert steady["size_anomaly"]["size"] == steady["last_backup"]["stored_size"]
    assert groups["other"]["size_anomaly"] is None and groups["other"]["last_backup"]["id"] == other
    assert [a["kind"] for a in report["alerts"]] == ["size-anomaly"]
    assert report["alerts"][0]["subject"] == "put:steady" and ids[-1] in report["alerts"][0]["message"]
    assert "alert: size-anomaly put:steady" in stderr
    assert report["usage"]["bytes"] > 7 * 100 * KB and report["key"]["key_id"].startswith("k-")

    # The engine's check a backup flow runs before it prunes: the same verdict for the same backup.
    r = repo.repository()
    assert check_new_backup(r, ids[-1])["size"] == steady["last_backup"]["stored_size"]
    assert check_new_backup(r, ids[-2]) is None  # within the band of the ones before it
    with pytest.raises(SizeAnomaly, match=f"backup {ids[-1]} stores 10.*KiB.*it is kept, nothing was pruned"):
        raise_if_anomalous(r, ids[-1])

    # A wider band (configured) accepts it: no alert, exit 0, and the markdown view says OK.
    code, report, _ = status_cli(repo, env={"SEEDVAULT_STATUS": json.dumps({"size_band": 0.95})})
    assert code == 0 and report["alerts"] == [] and report["ok"]
    md = render_markdown(compute_status(r, Settings(status={"size_band": 0.95})))
    assert md.startswith("# seedvault status: OK") and "| put | steady |" in md and "KiB" in md


def test_stale_backup_alert_after_its_period_plus_margin(history):
    repo, ids, _ = history
    r = repo.repository()
    settings = Settings(status={"size_band": 0.95, "stale_margin": "1h", "periods": {"put": "1d", "put:gone": "1d"}})
    now = datetime.now(UTC)
    fresh = compute_status(r, settings, now=now, with_usage=False)
    assert [(a.kind, a.subject) for a in fresh.alerts] == [("stale-backup", "put:gone")]  # expected, never made
    later = compute_status(r, settings, now=now + timedelta(days=1, minutes=61), with_usage=False)
    assert sorted((a.kind, a.subject) for a in later.alerts) == [
        ("stale-backup", "put:gone"),
        ("stale-backup", "put:other"),
        ("stale-backup", "put:steady"),
    ]
    assert "the last one finished 25.0 h ago" in next(a.message for a in later.alerts if a.subject == "put:steady")
    within = compute_status(r, settings, now=now + timedelta(days=1, minutes=50), with_usage=False)
    assert [a.subject for a in within.alerts] == ["put:gone"]

    # The CLI, evaluated at a later time: exit 65, the alert in the JSON.
    env = {"SEEDVAULT_STATUS": json.dumps({"size_band": 0.95, "periods": {"put:steady": "1h"}})}
    at = (now + timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, report, _ = status_cli(repo, "--at", at, env=env)
    assert code == 65 and [(a["kind"], a["subject"]) for a in report["alerts"]] == [("stale-backup", "put:steady")]


def test_key_age_alert_counts_from_the_keys_first_use(history):
    repo, ids, _ = history
    r = repo.repository()
    settings = Settings(status={"size_band": 0.95})
    first = compute_status(r, settings, with_usage=False).key
    first_use = datetime.strptime(first["first_use"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - first_use).total_seconds()) < 600  # the first put above
    assert r.manifest(ids[0])["key"]["key_id"] == first["key_id"]
    at_89 = compute_status(r, settings, now=first_use + timedelta(days=89), with_usage=False)
    assert at_89.alerts == []
    at_91 = compute_status(r, settings, now=first_use + timedelta(days=91), with_usage=False)
    (alert,) = at_91.alerts
    assert alert.kind == "key-age" and alert.subject == f"key {first['key_id']}" and "rotate it" in alert.message
    short = Settings(status={"size_band": 0.95, "key_max_age": "30d"})
    assert [a.kind for a in compute_status(r, short, now=first_use + timedelta(days=31), with_usage=False).alerts] == [
        "key-age"
    ]


def test_key_first_use_is_the_rotation_that_introduced_it():
    def ev(seq: int, time: str, op: str, **details) -> audit.Event:
        return audit.Event(seq, time, {}, op, (), "ok", details, "")

    events = [
        ev(1, "2026-01-01T00:00:00.000000Z", "backup"),
        ev(2, "2026-03-01T00:00:00.000000Z", "key-rotate", old_key_id="k-1", new_key_id="k-2"),
    ]
    bodies = [{"key": {"key_id": "k-1"}, "started": "2026-01-01T00:00:00.000000Z"},
              {"key": {"key_id": "k-2"}, "started": "2026-03-05T00:00:00.000000Z"}]  # fmt: skip
    assert key_first_use(events, bodies, "k-2") == datetime(2026, 3, 1, tzinfo=UTC)
    assert key_first_use(events, bodies, "k-1") == datetime(2026, 1, 1, tzinfo=UTC)
    assert key_first_use(events, bodies, "k-3") is None


def test_status_settings_are_checked():
    with pytest.raises(ConfigError, match="unknown setting"):
        StatusPolicy.from_settings(Settings(status={"size_bnad": 0.5}))
    with pytest.raises(ConfigError, match="not valid JSON"):
        StatusPolicy.from_settings(Settings(status="{"))
    policy = StatusPolicy.from_settings(Settings(status={"periods": {"neo4j": "off", "put:x": "6h"}}))
    assert policy.period("neo4j", "graph") is None and policy.period("put", "x") == 6 * 3600
    assert policy.period("postgres-logical", "orders") == 86400 and policy.period("put", "y") is None
