"""The audit log (issue 14, item 3): one event per operation, every kind of tampering named, no secret inside.

Real local repositories and the moto S3 server; the CLI runs as a subprocess (each run checked for one error
line and a catalogued exit code by this package's conftest). Each test has its own cache directory (the
"newest event this host saw", which catches a removed tail), given to the CLI as XDG_CACHE_HOME.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from seedvault import audit, repokey
from seedvault.errors import BackupNotFound, UsageError, VerificationFailed, WrongKey
from seedvault.format import layout
from seedvault.format.manifest import canonical
from seedvault.storage.s3 import S3Storage
from tests.fixtures.repo import LocalRepo, new_key_file
from tests.fixtures.s3 import TEST_PART_SIZE
from tests.helpers import run_cli


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


@pytest.fixture
def env(local_repo: LocalRepo, _cache: Path) -> dict[str, str]:
    return dict(local_repo.env, XDG_CACHE_HOME=str(_cache))


def _put(env: dict[str, str], data: bytes = b"payload\n", label: str = "t") -> str:
    return run_cli(["put", "--label", label], env, input=data, check=True).stdout.decode().strip()


def _events(env: dict[str, str]) -> dict:
    return json.loads(run_cli(["audit", "--json"], env, check=True).stdout)


def _ops(report: dict) -> list[tuple[str, list[str], str]]:
    return [(e["operation"], e["backup_ids"], e["result"]) for e in report["events"]]


def _event_file(local_repo: LocalRepo, seq: int) -> Path:
    return local_repo.root / audit.event_key(seq)


def _broken(env: dict[str, str]) -> str:
    """``seedvault audit`` on a tampered log: exit 24, and the error line (which names every problem)."""
    res = run_cli(["audit"], env)
    assert res.returncode == VerificationFailed.exit_code, res.stderr.decode()
    return res.stderr.decode()


def test_every_operation_appends_one_event_and_the_state_follows(local_repo, env, tmp_path):
    first = _put(env, b"one\n")
    second = _put(env, b"two\n")
    run_cli(["get", first, "-o", str(tmp_path / "out")], env, check=True)
    run_cli(["verify", first], env, check=True)
    run_cli(["pin", first, "--reason", "legal hold 42", "--until", "2099-01-01"], env, check=True)
    run_cli(["delete", second, "--yes"], env, check=True)
    run_cli(["cleanup"], env, check=True)
    run_cli(["unpin", first, "--reason", "case closed"], env, check=True)
    run_cli(["pin", first, "--reason", "again"], env, check=True)

    report = _events(env)
    assert report["intact"] and report["problems"] == [] and report["last_seq"] == 9
    assert _ops(report) == [
        ("backup", [first], "ok"),
        ("backup", [second], "ok"),
        ("get", [first], "ok"),
        ("verify", [first], "ok"),
        ("pin", [first], "ok"),
        ("delete", [second], "ok"),
        ("cleanup", [], "ok"),
        ("unpin", [first], "ok"),
        ("pin", [first], "ok"),
    ]
    events = report["events"]
    assert [e["seq"] for e in events] == list(range(1, 10))
    assert all(e["who"]["via"] == "cli" and e["who"]["host"] and e["who"]["user"] and e["who"]["pid"] for e in events)
    assert events[0]["details"]["kind"] == "put" and events[0]["details"]["raw_size"] == 4
    assert events[3]["details"] == {"scope": "full", "objects": 1, "raw_bytes": 4, "problems": 0}
    assert events[4]["details"] == {"reason": "legal hold 42", "until": "2099-01-01T00:00:00.000000Z"}
    # The stored chain: seq 1 starts at the genesis value, each prev is the SHA-256 of the previous stored bytes.
    stored = [_event_file(local_repo, n).read_bytes() for n in range(1, 10)]
    assert json.loads(stored[0])["prev"] == audit.GENESIS
    assert all(json.loads(stored[i])["prev"] == hashlib.sha256(stored[i - 1]).hexdigest() for i in range(1, 9))

    rows = json.loads(run_cli(["list", "--json"], env, check=True).stdout)
    assert [r["id"] for r in rows] == [first]
    assert rows[0]["last_verified"]["ok"] is True and rows[0]["last_verified"]["seq"] == 4
    assert rows[0]["pin"]["reason"] == "again" and rows[0]["pin"]["until"] is None
    assert rows[0]["last_restore_tested"] is None
    shown = json.loads(run_cli(["show", first, "--json"], env, check=True).stdout)
    assert shown["pin"]["seq"] == 9 and shown["last_verified"]["seq"] == 4
    text = run_cli(["show", first], env, check=True).stdout.decode()
    assert "verified    " in text and " ok" in text and "pin         " in text and "again" in text
    lines = run_cli(["audit", "--since", "1d"], env, check=True).stdout.decode().splitlines()
    assert len(lines) == 10 and lines[-1] == "audit log: 9 events, chain intact"
    assert " pin " in lines[4] and first in lines[4] and lines[4].endswith(" ok")


def test_a_failed_backup_and_a_failed_verify_are_events_too(local_repo, env):
    res = run_cli(["put", "--label", "t", "--", sys.executable, "-c", "import sys; sys.exit(3)"], env)
    assert res.returncode != 0
    good = _put(env)
    path = local_repo.root / layout.data_key(good, "data")
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    path.write_bytes(bytes(raw))
    assert run_cli(["verify", good], env).returncode == VerificationFailed.exit_code
    events = _events(env)["events"]
    assert [(e["operation"], e["result"]) for e in events] == [
        ("backup", "failed"),
        ("backup", "ok"),
        ("verify", "failed"),
    ]
    assert events[0]["details"]["error"] and events[2]["details"]["problems"] == 1 and events[2]["details"]["error"]
    state = audit.state(local_repo.repository())
    assert state.last_verified[good].ok is False


def test_pin_needs_a_backup_and_a_reason_and_protects_it_from_delete(local_repo, env):
    bid = _put(env)
    missing = "20200101T000000Z-abcdef"
    assert run_cli(["pin", missing, "--reason", "x"], env).returncode == BackupNotFound.exit_code
    assert run_cli(["pin", bid], env).returncode == UsageError.exit_code
    assert run_cli(["pin", bid, "--reason", "   "], env).returncode == UsageError.exit_code
    assert run_cli(["pin", bid, "--reason", "x", "--until", "2001-01-01"], env).returncode == UsageError.exit_code
    assert run_cli(["pin", bid, "--reason", "x", "--until", "someday"], env).returncode == UsageError.exit_code
    assert run_cli(["unpin", bid, "--reason", "x"], env).returncode == UsageError.exit_code  # not pinned
    run_cli(["pin", bid, "--reason", "keep for audit"], env, check=True)
    refused = run_cli(["delete", bid, "--yes"], env)
    assert refused.returncode == UsageError.exit_code and b"is pinned by" in refused.stderr
    assert b"keep for audit" in refused.stderr
    assert bid in local_repo.repository().backup_ids()
    run_cli(["unpin", bid, "--reason", "released"], env, check=True)
    run_cli(["delete", bid, "--yes"], env, check=True)
    ops = [(e["operation"], e["result"]) for e in _events(env)["events"]]
    assert ops == [("backup", "ok"), ("pin", "ok"), ("unpin", "ok"), ("delete", "ok")]


def test_an_expired_pin_no_longer_counts(local_repo):
    from datetime import UTC, datetime, timedelta

    from seedvault.ops import pins

    repo = local_repo.repository()
    bid = _put(local_repo.env | {"XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]})
    pins.pin(repo, bid, "a week", datetime.now(UTC) + timedelta(days=7))
    assert bid in audit.state(repo).pins
    assert bid not in audit.state(repo, now=datetime.now(UTC) + timedelta(days=8)).pins


# --- tampering -------------------------------------------------------------------------------------------
@pytest.fixture
def five(local_repo: LocalRepo, env: dict[str, str], tmp_path: Path) -> list[str]:
    """A log of five events (backup, get x2, verify, pin), verified once by this host (the cache knows seq 5)."""
    bid = _put(env)
    out = str(tmp_path / "out")  # never os.devnull: 'get -o' replaces its target atomically (as root, too)
    for argv in (["get", bid, "-o", out], ["get", bid, "-o", out], ["verify", bid]):
        run_cli(argv, env, check=True)
    run_cli(["pin", bid, "--reason", "r"], env, check=True)
    assert _events(env)["last_seq"] == 5
    return [bid]


def _rewrite(local_repo: LocalRepo, seq: int, change, *, key: bytes | None) -> None:
    """Re-store event ``seq`` after ``change(body)``; re-MACed with ``key`` (None: the old MAC is kept)."""
    path = _event_file(local_repo, seq)
    event = json.loads(path.read_bytes())
    mac = event.pop("mac")
    change(event)
    event["mac"] = hmac.new(key, canonical(event), hashlib.sha256).hexdigest() if key else mac
    path.write_bytes(canonical(event))


def test_an_edited_event_is_named(local_repo, env, five):
    _rewrite(local_repo, 3, lambda e: e.update(result="failed"), key=None)
    err = _broken(env)
    assert "seq 3: failed authentication" in err
    state = audit.state(local_repo.repository())
    assert not state.ok and any("seq 3" in p for p in state.problems)


def test_a_removed_event_in_the_middle_is_named(local_repo, env, five):
    _event_file(local_repo, 2).unlink()
    err = _broken(env)
    assert "seq 2: missing" in err


def test_a_removed_tail_is_named_by_the_host_that_saw_it(local_repo, env, five, tmp_path):
    for seq in (4, 5):
        _event_file(local_repo, seq).unlink()
    err = _broken(env)
    assert "seq 5: missing: the log ends at seq 3" in err
    # The limitation (FORMAT.md): a host that never saw the tail cannot tell; the chain itself is intact.
    fresh = dict(env, XDG_CACHE_HOME=str(tmp_path / "other-host"))
    assert _events(fresh)["intact"]
    # A writer on the host that saw it appends after what is left, and the host keeps reporting the loss.
    run_cli(["verify", five[0]], env, check=True)
    assert "seq 5: missing: the log ends at seq 4" in _broken(env)
    run_cli(["verify", five[0]], env, check=True)
    assert "seq 5: differs from the event this host saw" in _broken(env)


def test_a_reordered_pair_is_named(local_repo, env, five):
    two, three = _event_file(local_repo, 2), _event_file(local_repo, 3)
    a, b = two.read_bytes(), three.read_bytes()
    two.write_bytes(b)
    three.write_bytes(a)
    err = _broken(env)
    assert "seq 2: the event stored there is seq 3" in err and "seq 3: the event stored there is seq 2" in err


def test_a_reordered_pair_renumbered_with_the_key_breaks_the_chain(local_repo, env, five):
    """An insider with the key swaps events 2 and 3 and fixes their seq and MAC: the prev hashes still tell."""
    key = repokey.subkey(local_repo.repository(), "audit")
    two, three = _event_file(local_repo, 2), _event_file(local_repo, 3)
    a, b = two.read_bytes(), three.read_bytes()
    two.write_bytes(b)
    three.write_bytes(a)
    _rewrite(local_repo, 2, lambda e: e.update(seq=2), key=key)
    _rewrite(local_repo, 3, lambda e: e.update(seq=3), key=key)
    err = _broken(env)
    assert "seq 2: its prev hash does not match seq 1" in err and "seq 4: its prev hash does not match seq 3" in err


def test_an_event_re_maced_with_a_wrong_key_is_named(local_repo, env, five):
    _rewrite(local_repo, 4, lambda e: e.update(result="failed"), key=secrets.token_bytes(32))
    assert "seq 4: failed authentication" in _broken(env)


def test_a_forged_event_without_the_key_is_named(local_repo, env, five):
    prev = hashlib.sha256(_event_file(local_repo, 5).read_bytes()).hexdigest()
    forged = {
        "format": audit.FORMAT, "version": 1, "seq": 6, "prev": prev, "time": "2099-01-01T00:00:00.000000Z",
        "who": {"user": "mallory", "host": "x", "pid": 1, "via": "cli"}, "operation": "unpin",
        "backup_ids": five, "result": "ok", "details": {"reason": "forged"}, "mac": "00" * 32,
    }  # fmt: skip
    _event_file(local_repo, 6).write_bytes(canonical(forged))
    assert "seq 6: failed authentication" in _broken(env)
    state = audit.state(local_repo.repository())
    assert five[0] in state.pins and not state.ok  # the forged unpin is not believed


def test_a_foreign_object_in_the_events_prefix_is_named(local_repo, env, five):
    (local_repo.root / audit.EVENTS / "notes.txt").write_bytes(b"hi")
    assert "v1/audit/events/notes.txt: not an audit event name" in _broken(env)


# --- concurrency, robustness, secrets ----------------------------------------------------------------------
_APPENDER = textwrap.dedent(
    """
    import sys
    from seedvault import audit
    from seedvault.crypto.keys import KeySource
    from seedvault.repository import Repository
    from seedvault.storage.open import open_storage
    from seedvault.config import load
    settings = load({})
    repo = Repository(open_storage(settings), KeySource("raw", origin="test", path=settings.key_file))
    for i in range(int(sys.argv[1])):
        assert audit.append(repo, "verify", details={"writer": sys.argv[2], "i": i}) is not None
    """
)


def _race(env: dict[str, str], n: int) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, str(n), name], env=env, stderr=subprocess.PIPE)
        for name in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()


def test_two_processes_appending_at_once_make_one_contiguous_chain(local_repo, env):
    run_cli(["init"], env, check=True)
    _race(env, 25)
    report = audit.verify_chain(local_repo.repository())
    assert report.ok, report.problems
    assert [e.seq for e in report.events] == list(range(1, 51))
    mine = sorted((e.details["writer"], e.details["i"]) for e in report.events)
    assert mine == sorted([(w, i) for w in ("a", "b") for i in range(25)])  # no event lost


def _s3_env(moto_server, s3_bucket: str, key_file: Path, cache: Path) -> dict[str, str]:
    return dict(
        os.environ,
        CI="1",
        SEEDVAULT_REPOSITORY=f"s3://{s3_bucket}/repo",
        SEEDVAULT_S3_ENDPOINT=moto_server.endpoint_url,
        SEEDVAULT_KEY_FILE=str(key_file),
        XDG_CACHE_HOME=str(cache),
    )


def test_on_s3_events_are_contiguous_under_a_race_and_hold_no_secret(moto_server, s3_bucket, tmp_path, _cache):
    key_file = new_key_file(tmp_path)
    env = _s3_env(moto_server, s3_bucket, key_file, _cache)
    bid = _put(env, b"s3 payload\n")
    run_cli(["verify", bid], env, check=True)
    run_cli(["pin", bid, "--reason", "s3 pin"], env, check=True)
    _race(env, 8)
    report = _events(env)
    assert report["intact"] and report["last_seq"] == 19
    assert _ops(report)[:3] == [("backup", [bid], "ok"), ("verify", [bid], "ok"), ("pin", [bid], "ok")]
    storage = S3Storage(s3_bucket, prefix="repo", endpoint_url=moto_server.endpoint_url, part_size=TEST_PART_SIZE)
    try:
        stored = [storage.get_bytes(i.key) for i in storage.list(audit.EVENTS)]
    finally:
        storage.close()
    assert len(stored) == 19
    _assert_no_secret(stored, key_file, [os.environ["AWS_SECRET_ACCESS_KEY"].encode()])


def _assert_no_secret(stored: list[bytes], key_file: Path, extra: list[bytes]) -> None:
    text = key_file.read_text().strip()
    raw = base64.b64decode(text)
    needles = [text.encode(), raw, raw.hex().encode(), base64.b64encode(raw), *extra]
    for data in stored:
        for needle in needles:
            assert needle not in data


def test_no_event_holds_the_key_after_every_operation_and_a_key_rotation(local_repo, env, tmp_path):
    """Rotate then retire: the repository secret is re-wrapped, the old key's object removed, and the whole
    chain still verifies with the new key alone (the old one no longer opens it)."""
    bid = _put(env)
    run_cli(["verify", bid], env, check=True)
    run_cli(["pin", bid, "--reason", "before rotation"], env, check=True)
    repo = local_repo.repository()
    old_id = repo.master.key_id
    new_file = new_key_file(tmp_path, "new.key")
    rotated = json.loads(run_cli(["key", "rotate", "--new-key-file", str(new_file), "--json"], env, check=True).stdout)
    assert rotated["repository_secret"] == "done" and rotated["done"] == [bid]
    new_env = dict(env, SEEDVAULT_KEY_FILE=str(new_file))
    run_cli(["key", "retire", old_id], new_env, check=True)
    assert not (local_repo.root / repokey.secret_path(old_id)).exists()
    run_cli(["verify", bid], new_env, check=True)
    report = _events(new_env)
    assert report["intact"] and [op for op, _, _ in _ops(report)] == [
        "backup", "verify", "pin", "key-rotate", "key-retire", "verify",
    ]  # fmt: skip
    rotate_event = report["events"][3]
    assert rotate_event["details"]["old_key_id"] == old_id and rotate_event["details"]["repository_secret"] == "done"
    assert report["events"][4]["details"]["repository_secret"] == "done"
    old = run_cli(["audit"], env)
    assert old.returncode == WrongKey.exit_code
    stored = [p.read_bytes() for p in sorted((local_repo.root / audit.EVENTS).iterdir())]
    _assert_no_secret(stored, local_repo.key_file, [])
    _assert_no_secret(stored, new_file, [])


def test_retire_refuses_while_the_new_key_cannot_open_the_repository_secret(local_repo, env, tmp_path):
    bid = _put(env)
    repo = local_repo.repository()
    old_id = repo.master.key_id
    new_file = new_key_file(tmp_path, "new.key")
    run_cli(["key", "rotate", "--new-key-file", str(new_file)], env, check=True)
    new_id = local_repo.repository(new_file).master.key_id
    (local_repo.root / repokey.secret_path(new_id)).unlink()  # as if the rotation had stopped before it
    new_env = dict(env, SEEDVAULT_KEY_FILE=str(new_file))
    res = run_cli(["key", "retire", old_id], new_env)
    assert res.returncode == VerificationFailed.exit_code and b"the repository secret" in res.stderr
    assert (local_repo.root / repokey.secret_path(old_id)).exists()
    assert (local_repo.root / layout.key_object(bid, old_id)).exists()  # nothing deleted


def test_an_unwritable_audit_log_warns_and_the_operation_still_succeeds(local_repo, env):
    bid = _put(env)
    events = local_repo.root / audit.EVENTS
    for p in events.iterdir():
        p.unlink()
    events.rmdir()
    events.write_bytes(b"")  # a file where the directory should be: every event write fails
    res = run_cli(["verify", bid], env)
    assert res.returncode == 0 and b"verify was not audited" in res.stderr
    second = run_cli(["put", "--label", "t"], env, input=b"more\n")
    assert second.returncode == 0 and b"backup was not audited" in second.stderr
    no_key = {k: v for k, v in env.items() if k != "SEEDVAULT_KEY_FILE"}
    res = run_cli(["cleanup"], no_key)
    assert res.returncode == 0 and b"cleanup was not audited: no master key configured" in res.stderr


def test_the_chain_key_is_the_repository_s_own(local_repo, env, tmp_path):
    """A log copied from another repository does not verify here (its audit key is another repository's)."""
    _put(env)
    other = LocalRepo(
        tmp_path / "other", local_repo.key_file, dict(env, SEEDVAULT_REPOSITORY=f"file://{tmp_path}/other")
    )
    _put(other.env)
    target = other.root / audit.EVENTS
    for p in sorted(target.iterdir()):
        p.unlink()
    for p in sorted((local_repo.root / audit.EVENTS).iterdir()):
        (target / p.name).write_bytes(p.read_bytes())
    assert "seq 1: failed authentication" in _broken(other.env)


def test_list_and_show_read_only_the_events_new_since_this_host_verified(local_repo, env, five):
    """Events are immutable: what a host verified is cached; list/show (state, full=False) read the cached
    tail again and what came after it; a full check (``audit``, and the default state a deleter uses) reads all."""
    from seedvault.storage.local import LocalStorage

    reads: list[str] = []

    class Counting(LocalStorage):
        def open_read(self, key):  # noqa: ANN001, ANN201
            if key.startswith(audit.EVENTS):
                reads.append(key)
            return super().open_read(key)

    repo = local_repo.repository()
    repo.storage = Counting(local_repo.root)
    run_cli(["verify", five[0]], env, check=True)  # seq 6, not yet in the cache
    assert audit.state(repo, full=False).last_seq == 6
    assert reads == [audit.event_key(5), audit.event_key(6)]
    reads.clear()
    assert audit.state(repo, full=False).last_verified[five[0]].seq == 6 and reads == [audit.event_key(6)]
    reads.clear()
    assert audit.state(repo).ok and len(reads) == 6
    # An old event edited after this host cached it: the cheap state keeps the authentic copy, a full check names it.
    _rewrite(local_repo, 5, lambda e: e.update(operation="unpin"), key=None)
    cheap = audit.state(repo, full=False)
    assert cheap.ok and five[0] in cheap.pins
    assert not audit.state(repo).ok and "seq 5: failed authentication" in _broken(env)
    # The cached tail itself changed: the cheap state reads everything and names it too.
    _rewrite(local_repo, 6, lambda e: e.update(result="failed"), key=None)
    assert any("seq 6: failed authentication" in p for p in audit.state(repo, full=False).problems)


def test_verify_wal_appends_one_event_per_system(tmp_path):
    from seedvault.ops.verify_wal import verify_wal
    from seedvault.sources.postgres.wal.store import WalStore
    from tests.unit.test_wal_store import SYSID, make_wal_repo, write_seg

    repo = make_wal_repo(tmp_path)
    assert not verify_wal(repo)[0].ok  # nothing archived yet: a failed run, recorded too
    for sid in (SYSID, SYSID + 1):
        d = tmp_path / f"wal-{sid}"
        d.mkdir()
        for segno in (1, 2):
            WalStore(repo, sid).push(write_seg(d, 1, segno, sysid=sid))
    reports = verify_wal(repo)
    assert [r.ok for r in reports] == [True, True]
    events = audit.verify_chain(repo).events
    assert [(e.operation, e.result) for e in events] == [("verify-wal", "failed")] + [("verify-wal", "ok")] * 2
    assert sorted(e.details["system_id"] for e in events[1:]) == sorted({str(SYSID), str(SYSID + 1)})
    assert all(e.details["files"] == 2 and e.details["problems"] == 0 for e in events[1:])


def test_on_s3_refused_event_writes_leave_every_operation_working_with_a_warning(moto_server, s3_bucket, tmp_path):
    """The bucket takes no audit event (an outage, a policy denying the prefix): backups, reads and verifies run
    on and each says on stderr that it was not audited; once writes work again the log goes on intact."""
    from tests.fixtures.faulty_s3 import proxied_repository

    repo = proxied_repository(moto_server.endpoint_url, s3_bucket, "ro", tmp_path, SEEDVAULT_S3_MAX_ATTEMPTS="2")
    with repo as (proxy, _, env):
        env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
        first = _put(env, b"before the outage\n")
        rule = proxy.add_rule("PUT", r"/audit/events/", forward=False)
        put = run_cli(["put", "--label", "t"], env, input=b"during\n")
        assert put.returncode == 0 and b"backup was not audited" in put.stderr
        during = put.stdout.decode().strip()
        res = run_cli(["verify", during], env)
        assert res.returncode == 0 and b"verify was not audited" in res.stderr
        res = run_cli(["get", first, "-o", str(tmp_path / "out")], env)
        assert res.returncode == 0 and b"get was not audited" in res.stderr
        assert rule.hits >= 3
        proxy.rules.remove(rule)
        run_cli(["verify", during], env, check=True)
        report = _events(env)
        assert report["intact"] and _ops(report) == [("backup", [first], "ok"), ("verify", [during], "ok")]
