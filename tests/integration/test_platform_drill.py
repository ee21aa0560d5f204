"""The platform DR drill (issue 15) on a real PostgreSQL archiving to moto, with the fake ``neo4j-admin``.

One group per module: the production graph is a fake Neo4j state directory, the group is taken by
``seedvault backup platform``. Each drill restores into scratch targets it creates itself: a PostgreSQL data
directory under the scratch parent (recovered by PITR from the archive, on a free port) and a scratch fake Neo4j
made by the setup command below, which also starts a stand-in server process (``sleep``), so "no process left
behind" covers the Neo4j side too. Nothing is mocked: wal-fetch runs as the server's restore_command, the
recovery is PostgreSQL's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.fixtures import fake_neo4j
from tests.fixtures.walenv import WalEnv

DB = "neo4j"
FAKE = Path(fake_neo4j.__file__)
SERVICE = ["--stop-command", f"fake-neo4j stop {DB}", "--start-command", f"fake-neo4j start {DB}"]
SETUP = """#!/bin/sh
set -e
S="$FAKE_NEO4J_STATE"
mkdir -p "$S"
echo 5.26.1 > "$S/version"; echo community > "$S/edition"; : > "$S/store-neo4j"; touch "$S/running-neo4j"
echo "$SEEDVAULT_DRILL_ID" > "$S/drill-id"
sleep 3600 < /dev/null > /dev/null 2>&1 &
echo $! > "$S/server.pid"
echo $! >> "$SCRATCH_SERVERS"
"""
TEARDOWN = """#!/bin/sh
S="$FAKE_NEO4J_STATE"
[ -f "$S/server.pid" ] && kill "$(cat "$S/server.pid")" 2>/dev/null
rm -rf "$S"
exit 0
"""


class Platform:
    def __init__(self, env: WalEnv, root: Path) -> None:
        self.env, self.root = env, root
        self.prod = root / "neo4j-prod"
        self.scratch = root / "neo4j-scratch"
        self.servers = root / "scratch-servers"
        self.parent = env.base / "dr"  # under the world-traversable base: the server runs unprivileged
        self.bindir = root / "bin"
        self.bindir.mkdir()
        for name, text in (
            ("neo4j-admin", f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n'),
            ("fake-neo4j", f'#!/bin/sh\nexec {sys.executable} {FAKE} --service "$@"\n'),
            ("scratch-setup", SETUP),
            ("scratch-teardown", TEARDOWN),
        ):
            (self.bindir / name).write_text(text)
            (self.bindir / name).chmod(0o755)
        self.prod.mkdir()
        (self.prod / "version").write_text("5.26.1")
        (self.prod / "edition").write_text("community")
        (self.prod / f"store-{DB}").write_bytes(b"PMP" * 1000 + os.urandom(2000))
        (self.prod / f"running-{DB}").touch()

    def run(self, *args: str, state: Path | None = None, extra: dict[str, str] | None = None, timeout: float = 600):
        env = {**self.env.cli_env(), "PATH": f"{self.bindir}:{os.environ['PATH']}",
               fake_neo4j.STATE_ENV: str(state or self.scratch), "SCRATCH_SERVERS": str(self.servers),
               **(extra or {})}  # fmt: skip
        env.pop("NEO4J_HOME", None)
        env.pop("NEO4J_CONF", None)
        return subprocess.run([sys.executable, "-m", "seedvault.cli.app", *args], env=env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    def drill(self, *extra: str, env: dict[str, str] | None = None, json_out: bool = True):
        args = ["drill", "platform", "--scratch-parent", str(self.parent), "--neo4j-scratch-setup", "scratch-setup",
                "--neo4j-scratch-teardown", "scratch-teardown", *SERVICE, *extra]  # fmt: skip
        return self.run(*args, *(["--json"] if json_out else []), extra=env)

    def drill_events(self) -> list[dict]:
        events = json.loads(self.env.cli("audit", "--json").stdout)["events"]
        return [e for e in events if e["operation"] == "drill"]

    def assert_nothing_left(self) -> None:
        left = sorted(p.name for p in self.parent.iterdir()) if self.parent.exists() else []
        assert left == [], left  # no marker, no scratch directory (data dir, log, socket)
        assert not self.scratch.exists()  # the teardown command ran
        users = [p for p in _pids_naming(str(self.parent))]
        assert users == [], users  # no postmaster, no WAL read-ahead daemon
        for line in self.servers.read_text().split() if self.servers.exists() else []:
            assert _state(int(line)) in (None, "Z"), f"scratch Neo4j server {line} still runs"


def _pids_naming(needle: str) -> list[str]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if needle in cmd and _state(int(entry)) not in (None, "Z"):
                out.append(f"{entry}: {cmd}")
    return out


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


@pytest.fixture(scope="module")
def platform(wal_env: WalEnv, tmp_path_factory) -> dict:
    env = wal_env
    p = Platform(env, tmp_path_factory.mktemp("drill"))
    with env.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS readings (id bigserial PRIMARY KEY, ts timestamptz NOT NULL)")
        conn.execute("INSERT INTO readings (ts) SELECT clock_timestamp() FROM generate_series(1, 500)")
    env.cli("backup", "postgres-base", "--dsn", env.dsn(), "--json")
    with env.connect() as conn:
        for _ in range(20):  # committed after the base backup: replayed from the archive
            conn.execute("INSERT INTO readings (ts) VALUES (clock_timestamp())")
        last = conn.execute("SELECT max(ts) FROM readings").fetchone()[0]
    proc = p.run("backup", "platform", "--pg-dsn", env.dsn(), *SERVICE, "--json", state=p.prod)
    assert proc.returncode == 0, proc.stderr
    return {"p": p, "group": json.loads(proc.stdout), "last_insert": last}


def test_drill_restores_both_stores_measures_rto_rpo_records_and_removes_everything(platform: dict) -> None:
    p, group = platform["p"], platform["group"]
    t0 = datetime.now().astimezone()
    proc = p.drill()
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["result"] == "ok" and r["group_id"] == group["id"] and r["problems"] == []
    v = r["verified"]["postgres"]
    assert v["tables"] == group["tables"] and v["rows"] == group["rows"] and v["checksums"] == group["tables"]
    assert r["verified"]["neo4j"]["loaded"] is True
    steps = r["steps"]
    for name in ("pick", "neo4j_setup", "check", "postgres_download", "postgres_verifybackup", "postgres_replay",
                 "postgres_verify", "neo4j_load", "neo4j_verify", "rpo"):  # fmt: skip
        assert name in steps and steps[name] >= 0, (name, steps)
    rto = r["rto"]
    assert rto["met"] and rto["target_seconds"] == 3600
    assert rto["seconds"] >= rto["postgres_seconds"] > 0 and rto["neo4j_seconds"] > 0
    assert sum(steps.values()) - steps["rpo"] <= rto["seconds"] + 0.5  # the steps lie inside the RTO
    rpo = r["rpo"]
    # The newest recovered commit is the last insert before the group (read from the recovered server), never
    # after the restore point; the RPO is the drill's start minus it.
    newest = datetime.fromisoformat(rpo["newest_commit"].replace("Z", "+00:00"))
    point = datetime.fromisoformat(group["restore_point"]["time"].replace("Z", "+00:00"))
    assert rpo["newest_commit_from"] == "pg_last_xact_replay_timestamp"
    assert platform["last_insert"] <= newest <= point
    assert rpo["met"] and rpo["seconds"] >= rpo["group_seconds"] - 0.001 and rpo["seconds"] > 0
    assert (t0 - newest).total_seconds() == pytest.approx(rpo["seconds"], abs=5)
    assert r["cleanup"]["removed"] is True
    p.assert_nothing_left()
    ev = p.drill_events()[-1]
    assert ev["result"] == "ok" and ev["seq"] == r["audit_seq"]
    assert ev["backup_ids"][0] == group["id"] and group["neo4j_backup"] in ev["backup_ids"]
    d = ev["details"]
    assert d["rto_ms"] == round(rto["seconds"] * 1000) and d["rpo_ms"] == round(rpo["seconds"] * 1000)
    assert d["rto_target_ms"] == 3_600_000 and d["rpo_target_ms"] == 900_000 and d["missed"] == []
    assert set(d["steps_ms"]) == set(steps) and d["scratch_removed"] is True
    assert r["trend"][-1]["seq"] == ev["seq"] and r["trend"][-1]["rto_seconds"] == pytest.approx(
        rto["seconds"], abs=0.002
    )
    hist = p.run("drill", "platform", "--history")
    assert hist.returncode == 0, hist.stderr
    assert f"group {group['id']}" in hist.stdout and "postgres_replay" in hist.stdout
    restore_tests = [e for e in json.loads(p.env.cli("audit", "--json").stdout)["events"]
                     if e["operation"] == "restore-test" and group["id"] in e["backup_ids"]]  # fmt: skip
    assert restore_tests and restore_tests[-1]["result"] == "ok"  # the group counts as restore-tested


def test_a_missed_rto_target_fails_after_recording_the_event_and_cleaning_up(platform: dict) -> None:
    p = platform["p"]
    proc = p.drill("--rto-target", "0.001")
    assert proc.returncode == 62, proc.stderr
    assert "RTO" in proc.stderr and "missed the target of 0.001 s" in proc.stderr
    r = json.loads(proc.stdout)
    assert r["result"] == "failed" and r["rto"]["met"] is False and r["rpo"]["met"] is True
    ev = p.drill_events()[-1]
    assert ev["result"] == "failed" and ev["details"]["missed"] == ["rto"] and ev["details"]["rto_target_ms"] == 1
    p.assert_nothing_left()


POINTS = ["drill-marked", "drill-neo4j", "platform-postgres-recovered", "drill-restored", "drill-measured"]


@pytest.mark.parametrize("point", POINTS)
def test_failing_or_killed_at_each_step_leaves_nothing_behind(platform: dict, point: str) -> None:
    p = platform["p"]
    before = len(p.drill_events())
    failed = p.drill(env={"SEEDVAULT_FAULT_FAIL_AT": point})
    assert failed.returncode == 1, (point, failed.returncode, failed.stderr)
    assert f"injected failure at {point}" in failed.stderr
    assert json.loads(failed.stdout)["cleanup"]["removed"] is True
    events = p.drill_events()
    assert len(events) == before + 1 and events[-1]["result"] == "failed"
    assert events[-1]["details"]["error"] == "unexpected InjectedFailure"
    p.assert_nothing_left()

    killed = p.drill(env={"SEEDVAULT_FAULT_KILL_AT": point})
    assert killed.returncode == -9, (point, killed.returncode, killed.stderr)
    markers = sorted(p.parent.glob("drill-*.json"))
    assert len(markers) == 1  # the killed drill's leftovers, marked
    killed_id = json.loads(markers[0].read_text())["drill_id"]
    assert (p.parent / killed_id).is_dir()
    if point in ("platform-postgres-recovered", "drill-restored", "drill-measured"):
        assert _pids_naming(str(p.parent)), "the killed drill's PostgreSQL should still run"
    if point == "drill-restored":  # the next drill removes them before it starts, and says so
        nxt = p.drill()
        assert nxt.returncode == 0, nxt.stderr
        assert json.loads(nxt.stdout)["swept"] == [killed_id]
        assert p.drill_events()[-1]["details"]["leftovers_removed"] == [killed_id]
    else:
        swept = p.run("drill", "platform", "--cleanup-only", "--scratch-parent", str(p.parent), "--json")
        assert swept.returncode == 0, swept.stderr
        assert json.loads(swept.stdout) == {"removed": [killed_id], "problems": []}
    p.assert_nothing_left()


def test_a_live_drills_marker_is_left_alone_postgres_only_and_a_random_pick(platform: dict) -> None:
    p = platform["p"]
    p.parent.mkdir(exist_ok=True)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        start = Path(f"/proc/{sleeper.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
        live = "drill-19700101T000000Z-aaaaaa"
        marker = p.parent / f"{live}.json"
        marker.write_text(json.dumps({"drill_id": live, "pid": sleeper.pid, "pid_start": start,
                                      "host": os.uname().nodename, "dir": str(p.parent / live),
                                      "data_dir": str(p.parent / live / "pg" / "data"), "run_as": None}))  # fmt: skip
        # A marker naming anything but its own directory is never acted on, whoever's it claims to be.
        victim = p.root / "victim"
        (victim / "pg" / "data").mkdir(parents=True)
        forged = p.parent / "drill-19700101T000000Z-bbbbbb.json"
        forged.write_text(json.dumps({"drill_id": "drill-19700101T000000Z-bbbbbb", "pid": 0, "pid_start": None,
                                      "host": os.uname().nodename, "dir": str(victim),
                                      "data_dir": str(victim / "pg" / "data"), "run_as": None}))  # fmt: skip
        proc = p.run("drill", "platform", "--no-neo4j", "--scratch-parent", str(p.parent), "--json",
                     "--random-within-days", "1", "--seed", "7")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        r = json.loads(proc.stdout)
        assert r["group_id"] == platform["group"]["id"]  # the one group made within the window
        assert r["swept"] == [] and marker.exists()  # its owner lives: not a leftover
        assert forged.exists() and (victim / "pg" / "data").is_dir()
        forged.unlink()
        assert (
            r["verified"]["neo4j"] == {"skipped": "PostgreSQL only (--no-neo4j)"} and r["rto"]["neo4j_seconds"] is None
        )
        assert "neo4j_load" not in r["steps"] and r["result"] == "ok"
        marker.unlink()
    finally:
        sleeper.kill()
        sleeper.wait()
    refused = p.run("drill", "platform", "--scratch-parent", str(p.parent), *SERVICE)
    assert refused.returncode == 3 and "scratch instance" in refused.stderr  # never into a Neo4j it did not create
    p.assert_nothing_left()
