"""``wal_daemon = "auto"``: wal-push starts the archiver daemon itself when none answers, at most one at a
time and at most once a minute, the daemon then serves the following pushes and stops when idle.

Real processes (the console script as PostgreSQL would run it, the daemon it starts) over a real unix
socket, with local storage and synthetic segments; the same with PostgreSQL's own archiver is in
tests/integration/test_wal_daemon.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seedvault.config import load
from seedvault.errors import ConfigError
from seedvault.sources.postgres.wal import client
from seedvault.sources.postgres.wal.daemon import daemon_pids
from seedvault.sources.postgres.wal.store import WalStore
from tests.unit.test_wal_store import SYSID, make_wal_repo, write_seg

SV = [sys.executable, "-m", "seedvault.cli.entry"]


@pytest.fixture
def setup(tmp_path: Path):
    repo = make_wal_repo(tmp_path)
    pgdata = tmp_path / "pgdata"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    (pgdata / "global" / "pg_control").write_bytes(SYSID.to_bytes(8, "little") + b"\0" * 8184)
    sock = tmp_path / "wal.sock"
    config = tmp_path / "seedvault.toml"
    config.write_text(
        f'repository = "file://{tmp_path / "repo"}"\nkey_file = "{tmp_path / "master.key"}"\n'
        f'wal_state_dir = "{tmp_path / "state"}"\nwal_socket = "{sock}"\nwal_daemon = "auto"\nwal_daemon_idle = 8\n'
    )
    yield repo, pgdata, sock, config
    log = Path(f"{sock}.log")
    for pid in daemon_pids(log.read_text()) if log.exists() else []:  # never leave a daemon behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _push(config: Path, pgdata: Path, name: str) -> subprocess.Popen:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SEEDVAULT_CONFIG": str(config)}
    return subprocess.Popen(
        [*SV, "wal-push", f"pg_wal/{name}"], cwd=pgdata, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def _wait_for(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_push_starts_one_daemon_that_serves_the_rest_and_stops_when_idle(setup) -> None:
    repo, pgdata, sock, config = setup
    log = Path(f"{sock}.log")
    segs = [write_seg(pgdata / "pg_wal", 1, n) for n in range(20, 26)]
    for s in segs:
        (pgdata / "pg_wal" / "archive_status" / f"{s.name}.ready").touch()
    first = _push(config, pgdata, segs[0].name)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert b"no archiver daemon" not in err  # with automatic starts, no daemon yet is not news
    _wait_for(lambda: log.exists() and "serving" in log.read_text(), "no daemon started")
    for s in segs[1:]:
        p = _push(config, pgdata, s.name)
        assert p.wait(timeout=120) == 0
    _wait_for(lambda: "stopped;" in log.read_text(), "the daemon did not stop when idle")
    text = log.read_text()
    assert text.count("serving") == 1 and "no requests for 8 s: stopping" in text
    assert "ahead of PostgreSQL" in text and not sock.exists()
    assert "5 requests" in text  # every later push was served by the daemon
    assert "pushed 0000" not in text  # --quiet: no line per push in a log nobody rotates
    store = WalStore(repo, SYSID)
    for s in segs:
        store.fetch(s.name, pgdata / "back")
        assert (pgdata / "back").read_bytes() == s.read_bytes()


def test_simultaneous_pushes_start_a_single_daemon(setup) -> None:
    repo, pgdata, sock, config = setup
    segs = [write_seg(pgdata / "pg_wal", 1, n) for n in range(30, 34)]
    procs = [_push(config, pgdata, s.name) for s in segs]  # e.g. two clusters' worth of callers at once
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    log = Path(f"{sock}.log")
    _wait_for(lambda: log.exists() and "serving" in log.read_text(), "no daemon started")
    time.sleep(1.0)
    text = log.read_text()
    assert text.count("serving") == 1 and "another wal-daemon" not in text, text


def test_a_failing_start_is_retried_at_most_once_a_minute(tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    fake = tmp_path / "fake-seedvault"
    fake.write_text(f"#!/bin/sh\necho started >> {marker}\nexit 1\n")  # a daemon that cannot start
    fake.chmod(0o755)
    sock = str(tmp_path / "wal.sock")
    assert client.start_daemon(sock, {}, str(tmp_path), 5, argv=[str(fake)])
    assert not client.start_daemon(sock, {}, str(tmp_path), 5, argv=[str(fake)])  # too soon
    _wait_for(marker.exists, "the start command did not run")
    time.sleep(0.3)
    assert marker.read_text().count("started") == 1
    old = time.time() - client.START_INTERVAL - 1
    os.utime(f"{sock}.lock", (old, old))
    assert client.start_daemon(sock, {}, str(tmp_path), 5, argv=[str(fake)])  # a minute later: again


def test_start_passes_global_options_but_no_secret_on_the_command_line(tmp_path: Path) -> None:
    seen = tmp_path / "argv"
    fake = tmp_path / "fake-seedvault"
    fake.write_text(f'#!/bin/sh\necho "$@" > {seen}\n')
    fake.chmod(0o755)
    sock = str(tmp_path / "wal.sock")
    opts = {"--config": "/etc/seedvault.toml", "--key-file": "/etc/seedvault/master.key", "--pgdata": "/x"}
    assert client.start_daemon(sock, opts, str(tmp_path), 42, argv=[str(fake)])
    _wait_for(lambda: seen.exists() and seen.read_text(), "the start command did not run")
    argv = seen.read_text().split()
    assert argv[:4] == ["--config", "/etc/seedvault.toml", "--key-file", "/etc/seedvault/master.key"]
    assert argv[4:] == ["wal-daemon", "--pgdata", str(tmp_path), "--socket", sock, "--idle-exit", "42", "--quiet"]


def test_wal_daemon_setting_is_validated(tmp_path: Path) -> None:
    assert load(env={}).wal_daemon == "off"
    assert load(env={"SEEDVAULT_WAL_DAEMON": "auto"}).wal_daemon == "auto"
    with pytest.raises(ConfigError, match="wal_daemon must be 'off' or 'auto'"):
        load(env={"SEEDVAULT_WAL_DAEMON": "sometimes"})
    cfg = tmp_path / "c.toml"
    cfg.write_text('wal_socket = "/run/x.sock"\nwal_daemon = "auto"\nwal_daemon_idle = 90\n')
    assert client.daemon_settings({"--config": str(cfg)}, {}) == ("/run/x.sock", True, 90)
    assert client.daemon_settings({"--config": str(cfg)}, {"SEEDVAULT_WAL_DAEMON": "off"}) == ("/run/x.sock", False, 90)


def test_a_daemon_that_cannot_be_started_is_said_and_the_push_still_works(setup, tmp_path: Path) -> None:
    repo, pgdata, _, config = setup
    nowhere = tmp_path / "no-such-dir" / "wal.sock"  # e.g. a socket directory the server's user cannot write
    config.write_text(
        config.read_text().replace(f'wal_socket = "{tmp_path / "wal.sock"}"', f'wal_socket = "{nowhere}"')
    )
    seg = write_seg(pgdata / "pg_wal", 1, 40)
    p = _push(config, pgdata, seg.name)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0
    assert b"cannot start the archiver daemon" in err and b"archiving directly" in err
    assert len(err.decode().strip().splitlines()) == 1
    WalStore(repo, SYSID).fetch(seg.name, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == seg.read_bytes()
