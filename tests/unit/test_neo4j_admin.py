"""Issue 6 acceptance with a fake neo4j-admin (4.4 and 5.x): exactly the documented command lines are
built (plus the configured prefix), dump bytes survive the round trip byte-identical, a failing dump
still restarts the database and fails with the tool's message, online FULL/DIFF chains restore, a
restore that does not verify is rolled back from its safety copy.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from seedvault.config import Settings
from seedvault.errors import ConfigError, RestoreVerificationFailed, SourceError
from seedvault.ops.neo4j_backup import Neo4jJob, backup_neo4j
from seedvault.ops.neo4j_restore import restore_neo4j
from seedvault.repository import Repository
from seedvault.sources.neo4j import admin as na
from seedvault.sources.neo4j.admin import Admin, AdminConfig
from seedvault.sources.neo4j.version import parse_version
from tests.fixtures import fake_neo4j
from tests.unit.test_wal_store import make_wal_repo

FAKE = Path(fake_neo4j.__file__)
DB = "neo4j"


class FakeGraph:
    """The Bolt side, computed from the fake store (label counts from its bytes)."""

    def __init__(self, state: Path, db: str = DB, edition: str = "community") -> None:
        self.state, self.db, self.edition = state, db, edition
        self.lie: dict | None = None

    def counts(self, *, exact: bool = False) -> dict:
        if self.lie is not None:
            return self.lie
        data = (self.state / f"store-{self.db}").read_bytes()
        people, movies = data.count(b"P"), data.count(b"M")
        return {
            "labels": {"Person": people, "Movie": movies},
            "types": {},
            "nodes": people + movies,
            "relationships": 0,
            "indexes": [],
            "constraints": [],
        }

    def database_exists(self) -> bool:
        return (self.state / f"store-{self.db}").exists()

    def serves(self) -> bool:
        return (self.state / f"running-{self.db}").exists()

    def stop_database(self) -> None:
        fake_neo4j._log("events.log", ["STOP DATABASE", self.db])
        (self.state / f"running-{self.db}").unlink(missing_ok=True)

    def start_database(self) -> None:
        fake_neo4j._log("events.log", ["START DATABASE", self.db])
        (self.state / f"running-{self.db}").touch()

    def create_database(self) -> None:
        self.start_database()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return make_wal_repo(tmp_path)


def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: str, edition: str = "community") -> Path:
    state = tmp_path / "neo4j-state"
    state.mkdir()
    (state / "version").write_text(version)
    (state / "edition").write_text(edition)
    (state / f"store-{DB}").write_bytes(b"PMP" * 200_000 + os.urandom(300_000))
    (state / f"running-{DB}").touch()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    admin = bindir / "neo4j-admin"
    admin.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} "$@"\n')
    svc = bindir / "fake-neo4j"
    svc.write_text(f'#!/bin/sh\nexec {sys.executable} {FAKE} --service "$@"\n')
    docker = bindir / "docker"  # `docker exec CONTAINER cmd...`: records itself, runs cmd
    docker.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {state}/docker.log\n[ "$1" = exec ] || exit 125\nshift\n'
        '[ "$1" = -i ] && shift\nshift\nexec "$@"\n'
    )
    for p in (admin, svc, docker):
        p.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv(fake_neo4j.STATE_ENV, str(state))
    monkeypatch.delenv("NEO4J_HOME", raising=False)  # set where a real install is: these run against the fake
    monkeypatch.delenv("NEO4J_CONF", raising=False)
    monkeypatch.delenv(fake_neo4j.FAIL_ENV, raising=False)
    return state


def _job(state: Path, tmp_path: Path, *, prefix: str = "", graph: FakeGraph | None = None, edition=None) -> Neo4jJob:
    cfg = AdminConfig.from_strings(
        prefix, staging_dir=str(tmp_path / "staging"), stop_command=f"fake-neo4j stop {DB}",
        start_command=f"fake-neo4j start {DB}",
    )  # fmt: skip
    (tmp_path / "staging").mkdir(exist_ok=True)
    return Neo4jJob(DB, Admin(cfg), graph=graph, edition=edition)


def _argv(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in (state / "argv.log").read_text().splitlines()]


def _admin_calls(state: Path) -> list[list[str]]:
    return [a for a in _argv(state) if a != ["--version"]]


# --- the documented command lines ------------------------------------------------------------------
def test_documented_command_lines_per_dialect() -> None:
    v44, v5, v25 = parse_version("neo4j-admin 4.4.30"), parse_version("5.26.1"), parse_version("2025.01.0")
    assert na.dump_args(v44, DB, to_dir="D") == ["dump", "--database=neo4j", "--to=D/neo4j.dump"]
    assert na.load_args(v44, DB, from_dir="D") == ["load", "--from=D/neo4j.dump", "--database=neo4j", "--force"]
    assert na.backup_args(v44, DB, "D", kind="FULL", source="h:6362") == [
        "backup", "--backup-dir=D", "--database=neo4j", "--from=h:6362"]  # fmt: skip
    assert na.restore_args(v44, DB, "D/neo4j") == ["restore", "--from=D/neo4j", "--database=neo4j", "--force"]
    for v in (v5, v25):
        assert na.dump_args(v, DB, to_dir="D") == ["database", "dump", "neo4j", "--to-path=D", "--verbose"]
        assert na.dump_args(v, DB, to_dir=None) == ["database", "dump", "neo4j", "--to-stdout"]
        assert na.load_args(v, DB, from_dir="D") == [
            "database", "load", "neo4j", "--from-path=D", "--overwrite-destination=true", "--verbose"]  # fmt: skip
        assert na.load_args(v, DB, from_dir=None) == [
            "database", "load", "neo4j", "--from-stdin", "--overwrite-destination=true", "--verbose"]  # fmt: skip
        for kind in ("FULL", "DIFF", "AUTO"):
            assert na.backup_args(v, DB, "D", kind=kind, source=None) == [
                "database", "backup", "neo4j", "--to-path=D", f"--type={kind}"]  # fmt: skip
        assert na.restore_args(v, DB, "D/F.backup", until="2026-12-01T10:00:00Z") == [
            "database", "restore", "neo4j", "--from-path=D/F.backup", "--overwrite-destination=true",
            "--restore-until=2026-12-01T10:00:00Z"]  # fmt: skip
    assert v25.dialect == "5" and v44.dialect == "4.4" and not v44.streams
    with pytest.raises(SourceError, match="not supported"):
        _ = parse_version("neo4j-admin 3.5.35").dialect
    with pytest.raises(ConfigError, match="point in time"):
        na.restore_args(v44, DB, "D/neo4j", until="x")


def test_prefixes_wrap_commands() -> None:
    docker = Admin(AdminConfig.from_strings("docker exec graph1"))
    assert docker.admin(["--version"]) == ["docker", "exec", "-i", "graph1", "neo4j-admin", "--version"]  # stdin
    kube = Admin(AdminConfig.from_strings("kubectl exec -n data neo4j-0 --", neo4j_home="/opt/neo4j"))
    assert kube.admin(["--version"]) == (
        ["kubectl", "exec", "-i", "-n", "data", "neo4j-0", "--"]
        + ["env", "NEO4J_HOME=/opt/neo4j", "/opt/neo4j/bin/neo4j-admin", "--version"]
    )
    ssh = Admin(AdminConfig.from_strings("ssh graph@db1"))
    assert ssh.admin(["database", "dump", "my db", "--to-stdout"]) == [
        "ssh", "graph@db1", "neo4j-admin database dump 'my db' --to-stdout"]  # fmt: skip


# --- 5.x streamed through stdout/stdin -------------------------------------------------------------
def test_5x_dump_streams_and_round_trips_byte_identical(tmp_path, monkeypatch, repo) -> None:
    state = _setup(tmp_path, monkeypatch, "5.26.1")
    original = (state / f"store-{DB}").read_bytes()
    graph = FakeGraph(state)
    rep = backup_neo4j(repo, Settings(), _job(state, tmp_path, graph=graph))
    info = ["database", "info", DB]  # the stopped store's last transaction, after the dump and after a load
    assert _admin_calls(state) == [["database", "dump", DB, "--to-stdout"], info]
    assert (state / f"running-{DB}").exists()  # started again
    src = rep.body["source"]
    assert src["downtime_ms"] >= 0 and src["counts"]["labels"]["Person"] == graph.counts()["labels"]["Person"]
    assert b"".join(repo.read_object(rep.body["id"], "dump")) == b"NEO4JDUMP" + original  # the tool's bytes
    (state / f"store-{DB}").write_bytes(b"damaged")  # the live database goes bad
    out = restore_neo4j(repo, Settings(), rep.body["id"], _job(state, tmp_path, graph=FakeGraph(state)))
    assert (state / f"store-{DB}").read_bytes() == original
    assert out.safety_copy and out.counts is not None and (state / f"running-{DB}").exists()
    calls = _admin_calls(state)
    assert calls[-1] == info and out.store_txn == src["store_txn"] is not None
    assert calls[-2] == ["database", "load", DB, "--from-stdin", "--overwrite-destination=true", "--verbose"]
    assert calls[-4] == ["database", "dump", DB, "--to-stdout"]  # the safety copy, before the load
    safety = b"".join(repo.read_object(out.safety_copy, "dump"))
    assert safety == b"NEO4JDUMPdamaged"  # what was live is kept, verified


def test_5x_staging_mode_uses_paths_and_cleans_up(tmp_path, monkeypatch, repo) -> None:
    state = _setup(tmp_path, monkeypatch, "5.26.1")
    original = (state / f"store-{DB}").read_bytes()
    rep = backup_neo4j(repo, Settings(), _job(state, tmp_path), staging=True)
    dump, info = _admin_calls(state)
    assert info == ["database", "info", DB]
    assert dump[:3] == ["database", "dump", DB] and dump[3].startswith(f"--to-path={tmp_path / 'staging'}/seedvault-")
    restore_neo4j(repo, Settings(), rep.body["id"], _job(state, tmp_path), staging=True, safety_copy=False)
    load = _admin_calls(state)[-2]
    assert load[:3] == ["database", "load", DB] and load[3].startswith("--from-path=") and load[4:] == [
        "--overwrite-destination=true", "--verbose"]  # fmt: skip
    assert (state / f"store-{DB}").read_bytes() == original
    assert list((tmp_path / "staging").iterdir()) == []  # staging directories removed


# --- 4.4 through a staging directory, behind a docker prefix ----------------------------------------
def test_44_dump_and_load_behind_a_prefix(tmp_path, monkeypatch, repo) -> None:
    state = _setup(tmp_path, monkeypatch, "4.4.30")
    original = (state / f"store-{DB}").read_bytes()
    job = _job(state, tmp_path, prefix="docker exec graph1")
    rep = backup_neo4j(repo, Settings(), job)
    (dump,) = _admin_calls(state)
    stage = dump[2].removeprefix("--to=").rsplit("/", 1)[0]
    assert dump == ["dump", f"--database={DB}", f"--to={stage}/{DB}.dump"]
    docker = (state / "docker.log").read_text().splitlines()
    assert all(line.startswith("exec -i graph1 ") for line in docker)
    assert f"exec -i graph1 neo4j-admin dump --database={DB} --to={stage}/{DB}.dump" in docker
    (state / f"store-{DB}").write_bytes(b"other")
    restore_neo4j(repo, Settings(), rep.body["id"], _job(state, tmp_path, prefix="docker exec graph1"),
                  safety_copy=False)  # fmt: skip
    load = _admin_calls(state)[-1]
    stage2 = load[1].removeprefix("--from=").rsplit("/", 1)[0]
    assert load == ["load", f"--from={stage2}/{DB}.dump", f"--database={DB}", "--force"]
    assert (state / f"store-{DB}").read_bytes() == original
    assert list((tmp_path / "staging").iterdir()) == []


# --- failures ------------------------------------------------------------------------------------
def test_failing_dump_restarts_the_database_and_reports_the_tool(tmp_path, monkeypatch, repo) -> None:
    state = _setup(tmp_path, monkeypatch, "5.26.1")
    monkeypatch.setenv(fake_neo4j.FAIL_ENV, "dump")
    with pytest.raises(SourceError, match="simulated No space left on device"):
        backup_neo4j(repo, Settings(), _job(state, tmp_path))
    events = [json.loads(x) for x in (state / "events.log").read_text().splitlines()]
    assert events == [["stop", DB], ["start", DB]] and (state / f"running-{DB}").exists()
    assert [b for b in repo.backup_ids()] == []  # a failed backup never appears


def test_dump_without_a_way_to_stop_is_refused_before_anything(tmp_path, monkeypatch, repo) -> None:
    state = _setup(tmp_path, monkeypatch, "5.26.1")
    job = Neo4jJob(DB, Admin(AdminConfig()), graph=None)
    with pytest.raises(ConfigError, match="needs the database stopped"):
        backup_neo4j(repo, Settings(), job)
    assert (state / f"running-{DB}").exists() and _admin_calls(state) == []


def test_counts_mismatch_fails_and_the_safety_copy_is_put_back(tmp_path, monkeypatch, repo) -> None:
    """Where the loaded store cannot be shown to be the dumped one, counts that differ fail the restore."""
    state = _setup(tmp_path, monkeypatch, "5.26.1")
    rep = backup_neo4j(repo, Settings(), _job(state, tmp_path, graph=FakeGraph(state)))
    assert rep.body["source"]["store_txn"] and rep.body["source"]["counts_when"] == "before-stop"
    live = b"PPPP-live-data"
    (state / f"store-{DB}").write_bytes(live)
    monkeypatch.setenv(fake_neo4j.FAIL_ENV, "load-short")  # neo4j-admin says it loaded, the store is not the dump
    with pytest.raises(RestoreVerificationFailed, match="transaction") as exc:
        restore_neo4j(repo, Settings(), rep.body["id"], _job(state, tmp_path, graph=FakeGraph(state)))
    assert "put back" in exc.value.one_line()
    assert (state / f"store-{DB}").read_bytes() == live and (state / f"running-{DB}").exists()


def test_writes_during_the_stop_are_reported_not_failed_when_the_store_is_the_dumped_one(
    tmp_path, monkeypatch, repo
) -> None:
    """Community counts are read before the stop; writes that land while it stops are in the dump, not the counts."""
    state = _setup(tmp_path, monkeypatch, "5.26.1")
    graph = FakeGraph(state)
    real_counts = graph.counts
    calls = {"n": 0}

    def counts_then_a_write() -> dict:  # the backup's count, then an application write before the stop lands
        calls["n"] += 1
        c = real_counts()
        if calls["n"] == 1:
            with open(state / f"store-{DB}", "ab") as fh:
                fh.write(b"P")
        return c

    graph.counts = counts_then_a_write  # type: ignore[method-assign]
    rep = backup_neo4j(repo, Settings(), _job(state, tmp_path, graph=graph))
    (state / f"store-{DB}").write_bytes(b"lost")
    back = restore_neo4j(repo, Settings(), rep.body["id"], _job(state, tmp_path, graph=FakeGraph(state)))
    assert back.store_txn == rep.body["source"]["store_txn"] and back.counts is not None
    assert back.counts_note and "Person" in back.counts_note and "accepted writes" in back.counts_note
    without = dict(rep.body["source"], store_txn=None)  # without the store's id the same difference fails
    from seedvault.ops.neo4j_restore import Neo4jRestoreReport, _verify_counts

    with pytest.raises(RestoreVerificationFailed, match="Person"):
        _verify_counts(_job(state, tmp_path, graph=FakeGraph(state)), without["counts"], rep.body["id"],
                       Neo4jRestoreReport(rep.body["id"], DB, "dump"))  # fmt: skip


# --- Enterprise online backups -------------------------------------------------------------------
def test_5x_online_full_then_diff_chain_restores(tmp_path, monkeypatch, repo) -> None:
    state = _setup(tmp_path, monkeypatch, "5.26.1", edition="enterprise")
    graph = FakeGraph(state, edition="enterprise")
    job = _job(state, tmp_path, graph=graph)
    job.backup_from = "127.0.0.1:6362"
    full = backup_neo4j(repo, Settings(), job, mode="online", backup_type="FULL")
    (state / f"store-{DB}").write_bytes((state / f"store-{DB}").read_bytes() + b"PPP more")
    after_diff = (state / f"store-{DB}").read_bytes()
    diff = backup_neo4j(repo, Settings(), job, mode="online", backup_type="DIFF")
    backups = [a for a in _admin_calls(state) if a[1] == "backup"]
    assert backups[0][:3] == ["database", "backup", DB] and backups[0][3].startswith("--to-path=")
    assert backups[0][4:] == ["--type=FULL", "--from=127.0.0.1:6362"]
    assert backups[1][4:] == ["--type=DIFF", "--from=127.0.0.1:6362"]
    assert diff.body["parent"] == full.body["id"] and diff.body["source"]["chain"] == [full.body["id"], diff.body["id"]]
    assert len(diff.body["source"]["artifacts"]) == 1  # only the new artifact is stored
    assert (state / f"running-{DB}").exists()  # online: never stopped for the backup
    (state / f"store-{DB}").write_bytes(b"lost")
    job2 = _job(state, tmp_path, graph=FakeGraph(state, edition="enterprise"))
    restore_neo4j(repo, Settings(), diff.body["id"], job2, until="2026-12-01T10:00:00Z", safety_copy=False)
    restore = _admin_calls(state)[-1]
    artifact = diff.body["source"]["artifacts"][0]
    assert restore[:3] == ["database", "restore", DB] and restore[3].endswith(f"/{artifact}")
    assert restore[3].startswith("--from-path=") and restore[4:] == [
        "--overwrite-destination=true", "--restore-until=2026-12-01T10:00:00Z"]  # fmt: skip
    assert (state / f"store-{DB}").read_bytes() == after_diff


def test_44_online_backup_and_restore(tmp_path, monkeypatch, repo) -> None:
    state = _setup(tmp_path, monkeypatch, "4.4.30", edition="enterprise")
    original = (state / f"store-{DB}").read_bytes()
    job = _job(state, tmp_path, graph=FakeGraph(state, edition="enterprise"))
    rep = backup_neo4j(repo, Settings(), job, mode="online", backup_type="DIFF")  # 4.4: always stored whole
    (b,) = [a for a in _admin_calls(state) if a[0] == "backup"]
    assert b[0] == "backup" and b[1].startswith("--backup-dir=") and b[2:] == [f"--database={DB}"]
    assert rep.body["source"]["backup_type"] == "FULL"
    (state / f"store-{DB}").write_bytes(b"lost")
    restore_neo4j(repo, Settings(), rep.body["id"], _job(state, tmp_path, graph=FakeGraph(state, edition="enterprise")),
                  safety_copy=False)  # fmt: skip
    r = _admin_calls(state)[-1]
    assert r[0] == "restore" and r[1].startswith("--from=") and r[1].endswith(f"/{DB}")
    assert r[2:] == [f"--database={DB}", "--force"]
    assert (state / f"store-{DB}").read_bytes() == original


def test_community_refuses_online_backups(tmp_path, monkeypatch, repo) -> None:
    state = _setup(tmp_path, monkeypatch, "5.26.1", edition="community")
    with pytest.raises(SourceError, match="Enterprise"):
        backup_neo4j(repo, Settings(), _job(state, tmp_path), mode="online")


# --- the CLI -------------------------------------------------------------------------------------
def _cli(tmp_path: Path, *args: str, extra_env: dict | None = None):
    import subprocess

    env = dict(os.environ, SEEDVAULT_REPOSITORY=f"file://{tmp_path / 'repo'}",
               SEEDVAULT_KEY_FILE=str(tmp_path / "master.key"), **(extra_env or {}))  # fmt: skip
    for name in ("NEO4J_PASSWORD", "NEO4J_HOME", "NEO4J_CONF"):  # a real install's (NEO4J_HOME) is not the fake's
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "seedvault.cli.app", *args], env=env, capture_output=True, text=True)


def test_cli_backup_and_restore_neo4j(tmp_path, monkeypatch, repo) -> None:
    state = _setup(tmp_path, monkeypatch, "5.26.1")
    original = (state / f"store-{DB}").read_bytes()
    svc = ["--stop-command", f"fake-neo4j stop {DB}", "--start-command", f"fake-neo4j start {DB}"]
    out = _cli(tmp_path, "backup", "neo4j", *svc, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["mode"] == "dump" and summary["downtime_seconds"] is not None and summary["counts"] is None
    (state / f"store-{DB}").write_bytes(b"x")
    back = _cli(tmp_path, "restore", "neo4j", summary["id"], *svc)
    assert back.returncode == 0, back.stderr
    assert "previous database kept as backup" in back.stdout and "counts not checked" in back.stdout
    assert (state / f"store-{DB}").read_bytes() == original and (state / f"running-{DB}").exists()


def test_cli_errors_are_one_line(tmp_path, monkeypatch, repo) -> None:
    state = _setup(tmp_path, monkeypatch, "5.26.1")
    svc = ["--stop-command", f"fake-neo4j stop {DB}", "--start-command", f"fake-neo4j start {DB}"]
    bad = _cli(tmp_path, "backup", "neo4j", *svc, extra_env={fake_neo4j.FAIL_ENV: "dump"})
    assert bad.returncode == 50 and "simulated No space left on device" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and (state / f"running-{DB}").exists()
    down = _cli(tmp_path, "backup", "neo4j", *svc, extra_env={fake_neo4j.FAIL_ENV: "start"})
    assert down.returncode == 57, down.stderr  # its own code: a scheduler must not retry (it would stop it again)
    assert "after the dump" in down.stderr and "start the database by hand" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1 and not (state / f"running-{DB}").exists()
    creds = _cli(tmp_path, "backup", "neo4j", "--uri", "neo4j://neo4j:secret@127.0.0.1:7687", *svc)
    assert creds.returncode == 3 and "credentials" in creds.stderr and "secret" not in creds.stderr
    # No password: a server with authentication off needs none, so seedvault connects (nothing listens here).
    port = _free_port()
    nopw = _cli(tmp_path, "backup", "neo4j", "--uri", f"neo4j://127.0.0.1:{port}", *svc)
    assert nopw.returncode == 52 and f"cannot reach Neo4j at neo4j://127.0.0.1:{port}" in nopw.stderr, nopw.stderr
    assert len(nopw.stderr.strip().splitlines()) == 1, "one line: the driver's own warnings are not shown"
    missing = _cli(tmp_path, "restore", "neo4j", "20260101T000000Z-abcdef", *svc)
    assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1


def test_a_dump_of_a_database_in_use_names_the_cause_and_nothing_is_listed(tmp_path, monkeypatch, repo) -> None:
    """5.x says only "Dump failed for databases" for a dump to stdout; seedvault asks `database info` why."""
    state = _setup(tmp_path, monkeypatch, "5.26.1")
    (state / f"running-{DB}").touch()
    svc = ["--stop-command", "true", "--start-command", "true"]  # a stop command that does not stop it
    bad = _cli(tmp_path, "backup", "neo4j", *svc)
    assert bad.returncode == 50, bad.stderr
    assert "Dump failed for databases: 'neo4j'" in bad.stderr and "is in use" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_a_failing_stop_command_runs_no_start_command(tmp_path, monkeypatch, repo) -> None:
    state = _setup(tmp_path, monkeypatch, "5.26.1")
    (state / f"running-{DB}").touch()
    bad = _cli(tmp_path, "backup", "neo4j", "--stop-command", "false", "--start-command", f"fake-neo4j start {DB}")
    assert bad.returncode == 50, bad.stderr  # not 57: it never stopped
    assert "nothing was dumped and its state is unknown" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    log = state / "events.log"
    events = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    assert ["start", DB] not in events and (state / f"running-{DB}").exists()
