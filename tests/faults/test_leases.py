"""Leases (issue 14, item 1): what a running operation stores, how it protects its backup, what a dead one leaves.

The retention incidents behind them: pgBackRest #2622 (expire deleted a backup still being written: see
``test_cleanup_race.py``), Barman #200 (a backup deleted while it was being restored: ``delete`` during a
``get`` here) and restic #2452 (a stale lock from a killed process blocks or is ignored: a put killed with
SIGKILL here leaves a lease that is stale at once on its own host, and elsewhere protects its objects until it
is stale, and is then reported and ignored).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest

from seedvault import leases
from seedvault.config import load
from seedvault.errors import ConfigError, LockHeld
from seedvault.format import layout
from seedvault.ops.cleanup import cleanup
from tests.helpers import CLI, repo_files, run_cli


def _wait(what: str, ready, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_lease_is_stored_refreshed_judged_stale_and_released(local_repo):
    repo = local_repo.repository()
    bid = layout.new_backup_id()
    with leases.HeldLease(repo, "restore postgres", [bid], refresh=timedelta(seconds=0.2)) as held:
        stored = json.loads(repo.storage.get_bytes(held.key))
        assert stored["format"] == "seedvault-lease" and stored["backup_ids"] == [bid]
        assert stored["pid"] == os.getpid() and stored["operation"] == "restore postgres" and stored["host"]
        first = stored["refreshed"]
        _wait("a refresh", lambda: json.loads(repo.storage.get_bytes(held.key))["refreshed"] != first, timeout=10)
        listing = leases.read_leases(repo)
        assert [lease.lease_id for lease in listing.live] == [held.lease_id] and listing.stale == []
        assert listing.held_ids()[bid].lease_id == held.lease_id
        later = leases.read_leases(repo, now=datetime.now(UTC) + timedelta(minutes=16))
        assert later.live == [] and [lease.lease_id for lease in later.stale] == [held.lease_id]
        other = layout.new_backup_id()
        held.add(other)
        assert set(leases.read_leases(repo).held_ids()) == {bid, other}
    assert list(repo.storage.list(layout.LEASES)) == []  # released on exit


def test_a_lease_is_released_when_the_operation_fails(local_repo):
    repo = local_repo.repository()
    with pytest.raises(RuntimeError), leases.shared(repo, "verify", [layout.new_backup_id()]):
        raise RuntimeError("boom")
    assert list(repo.storage.list(layout.LEASES)) == []


def test_a_damaged_lease_object_is_reported_and_protects_nothing(local_repo):
    repo = local_repo.repository()
    repo.storage.put_bytes(leases.lease_path("20260101T000000Z-1-deadbeef"), b"{not json")
    listing = leases.read_leases(repo)
    assert listing.live == [] and listing.unreadable == [leases.lease_path("20260101T000000Z-1-deadbeef")]


def test_lease_stale_below_five_minutes_is_refused():
    with pytest.raises(ConfigError, match="lease_stale must be at least 5m"):
        load(env={"SEEDVAULT_LEASE_STALE": "1m"})
    assert load(env={"SEEDVAULT_LEASE_STALE": "30m"}).lease_stale_after() == timedelta(minutes=30)


def test_killed_put_leaves_a_lease_that_protects_until_stale_then_is_reported_and_ignored(local_repo):
    """restic #2452: a lock left by a killed process. Its process gone from this host: stale at once. Held on
    another host (which this one cannot look into): it protects until not refreshed for lease_stale, then it
    is reported, ignored and removable."""
    env = local_repo.env
    before = repo_files(local_repo.root)
    proc = subprocess.Popen([*CLI, "put", "--label", "killed"], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert proc.stdin is not None
    proc.stdin.write(b"x" * (512 << 10))
    proc.stdin.flush()
    _wait(
        "the put's key object",
        lambda: any(k.startswith(layout.KEYS) for k in set(repo_files(local_repo.root)) - set(before)),
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    repo = local_repo.repository()
    listing = leases.read_leases(repo)
    (lease,) = listing.stale
    assert listing.live == [] and lease.pid == proc.pid
    assert lease.stale_reason == f"process {proc.pid} no longer runs on this host"
    bid = lease.backup_ids[0]
    path = local_repo.root / leases.lease_path(lease.lease_id)
    body = json.loads(path.read_text())
    twin = local_repo.root / leases.lease_path("twin")
    twin.write_text(json.dumps(dict(body, lease_id="twin")))
    shown = json.loads(run_cli(["leases", "--remove-stale", "--json"], env, check=True).stdout)
    assert shown["removed"] == sorted([lease.lease_id, "twin"]) and shown["live"] == []

    # The same lease as if held on another host: live, so the backup is kept whatever the grace.
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(dict(body, host="db-standby-2")))
    report = json.loads(run_cli(["cleanup", "--grace", "0", "--json"], env, check=True).stdout)
    assert report["incomplete_backups"] == [] and report["kept_leased"][0].startswith(bid)
    assert any(layout.backup_id_of(k) == bid for k in repo_files(local_repo.root))  # still there
    shown = json.loads(run_cli(["leases", "--json"], env, check=True).stdout)
    assert [row["lease_id"] for row in shown["live"]] == [lease.lease_id]
    # Sixteen minutes later (the default lease_stale is 15m): reported, ignored and removed.
    stale = cleanup(repo, grace_seconds=0, now=datetime.now(UTC) + timedelta(minutes=16))
    assert stale.incomplete_backups == [bid] and stale.kept_leased == []
    (line,) = stale.stale_leases
    assert line.startswith(f"{lease.lease_id}: backup put by ") and "db-standby-2" in line
    assert line.endswith("not refreshed for 16m (lease_stale 15m)")
    assert set(repo_files(local_repo.root)) == set(before) | {layout.CONFIG}  # backup and lease gone


def test_delete_refuses_a_backup_being_restored(local_repo):
    """Barman #200: a backup deleted while it was being restored. A running get names it in its lease."""
    env = local_repo.env
    data = os.urandom(8 << 20)
    bid = run_cli(["put", "--label", "big"], env, input=data, check=True).stdout.decode().strip()
    proc = subprocess.Popen([*CLI, "get", bid], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        repo = local_repo.repository()
        _wait("the get's lease", lambda: bid in leases.read_leases(repo).held_ids())
        refused = run_cli(["delete", bid, "--yes"], env)  # the get is blocked on its full stdout pipe
        assert refused.returncode == LockHeld.exit_code, refused.stderr
        assert b"is in use by get by" in refused.stderr and bid.encode() in refused.stderr
        out = proc.stdout.read()  # type: ignore[union-attr]
        assert proc.wait(timeout=120) == 0
        assert out == data
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run_cli(["delete", bid, "--yes"], env, check=True)  # finished: now it goes
    assert run_cli(["list", "--json"], env, check=True).stdout.strip() == b"[]"


def test_no_secret_in_a_lease(local_repo):
    repo = local_repo.repository()
    with leases.shared(repo, "backup stream", [layout.new_backup_id()]) as held:
        stored = repo.storage.get_bytes(held.key)
    assert set(json.loads(stored)) == {
        "format", "version", "lease_id", "operation", "host", "pid", "user", "backup_ids", "started", "refreshed",
        "mode",
    }  # fmt: skip
    key_file = env_key(local_repo.env)
    assert key_file.strip() and key_file.strip() not in stored


def env_key(env: dict[str, str]) -> bytes:
    path = env.get("SEEDVAULT_KEY_FILE") or env.get("SEEDVAULT_PASSPHRASE_FILE")
    assert path, "the fixture's repository has a key file"
    with open(path, "rb") as fh:
        return fh.read()
