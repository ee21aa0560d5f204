"""Issue 5 acceptance, streaming mode: ``seedvault wal-receive`` (a supervised pg_receivewal on a
replication slot) beside archive_command; ``kill -9`` of the primary under load, then ``--latest``
recovers to within a few seconds of the last committed row, through the partial segment the receiver
pushed when the server went away. The server log says recovery used a partial segment.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from seedvault.sources.postgres.cluster import LocalCluster
from tests.fixtures.walenv import ARCHIVE_TIMEOUT, WalEnv

STREAMING_LOSS_BOUND = 3.0  # seconds; archive_command alone may lose up to ARCHIVE_TIMEOUT


def _start_receiver(env: WalEnv, spool: Path, log: Path) -> subprocess.Popen:
    out = open(log, "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        [sys.executable, "-m", "seedvault.cli.app", "wal-receive", "--dsn", env.dsn(), "--slot", "sv_test",
         "--create-slot", "--spool", str(spool), "--partial-interval", "1"],
        env=env.cli_env(), stdout=out, stderr=out,
    )  # fmt: skip
    out.close()
    deadline = time.monotonic() + 60
    while "pg_receivewal started" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"wal-receive did not start: {log.read_text()}")
        time.sleep(0.1)
    return proc


def test_streaming_mode_kill_primary_loses_only_seconds(wal_env: WalEnv) -> None:
    env = wal_env
    spool = env.base / "receive-spool"
    log = env.base / "wal-receive.log"
    receiver = _start_receiver(env, spool, log)
    try:
        with env.connect() as conn:
            slot = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = 'sv_test'").fetchone()
            assert slot is not None
        env.cli("backup", "postgres-base", "--dsn", env.dsn())
        last: list = []
        stop = threading.Event()

        def writer() -> None:
            with env.connect() as conn:
                while not stop.is_set():
                    try:
                        row = conn.execute(
                            "INSERT INTO ev (ts, note) VALUES (clock_timestamp(), 'stream') RETURNING ts"
                        ).fetchone()
                    except psycopg.Error:
                        return
                    last.append(row[0])
                    time.sleep(0.02)

        th = threading.Thread(target=writer)
        th.start()
        time.sleep(4)  # well below archive_timeout: archive_command has not seen this WAL yet
        env.primary.kill()  # kill -9 of the postmaster and its children
        stop.set()
        th.join()
        committed = last[-1]
        deadline = time.monotonic() + 60
        while "pushed partial" not in log.read_text().split("pg_receivewal exited", 1)[-1]:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    finally:
        receiver.send_signal(signal.SIGTERM)
        assert receiver.wait(timeout=120) == 0, log.read_text()
    assert "stopped;" in log.read_text()
    d = env.new_dir()
    rep = json.loads(
        env.cli("restore", "postgres-pitr", "--data-dir", str(d), "--latest", "--timeline", "1", "--json").stdout
    )
    r = LocalCluster(d)
    try:
        with env.connect(r) as conn:
            newest = conn.execute("SELECT max(ts) FROM ev WHERE note = 'stream'").fetchone()[0]
        loss = (committed - newest).total_seconds()
        print(f"streaming-mode loss window after kill -9: {loss:.3f} s (archive_timeout {ARCHIVE_TIMEOUT} s)")
        assert 0 <= loss <= STREAMING_LOSS_BOUND
        server_log = r.log_file.read_text()
        assert "never archived whole: serving its partial copy" in server_log
        assert rep["timeline"] == 2
    finally:
        r.stop()
        env.primary.start(timeout=60)
