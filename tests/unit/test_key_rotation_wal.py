"""Key rotation covers archived WAL: every epoch key of every system id gets a wrap for the new key, and
retiring the old key is refused (nothing deleted) while any backup or WAL epoch still needs it."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path

import pytest

from seedvault import repokey
from seedvault.crypto.keys import KeySource
from seedvault.errors import AuthenticationFailed, VerificationFailed
from seedvault.ops import keys as key_ops
from seedvault.repository import Repository
from seedvault.sources.postgres.wal import epochs
from seedvault.sources.postgres.wal import store as wal_store
from seedvault.sources.postgres.wal.store import WalStore
from tests.fixtures.repo import new_key_file
from tests.unit.test_wal_store import SYSID, make_wal_repo, write_seg

OTHER_SYSID = SYSID + 1


@pytest.fixture
def epoch_per_push(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every push starts an epoch of its own (as if each came a day after the last): many epochs to rotate,
    and a server still on the old key starts a new epoch wrapped for that key only."""
    monkeypatch.setattr(wal_store, "EPOCH_MAX_AGE", timedelta(0))


def _with_key(repo: Repository, key_file: Path) -> Repository:
    """The same storage, seen with another master key configured."""
    return Repository(repo.storage, KeySource("raw", origin="test key", path=key_file))


def _tree(repo: Repository) -> dict[str, bytes]:
    """Backups, WAL and their key objects (not the audit log and its repository secret: tests/faults/test_audit.py)."""
    skip = ("v1/audit/", "v1/repokey/")
    return {o.key: repo.storage.get_bytes(o.key) for o in repo.storage.list("v1/") if not o.key.startswith(skip)}


def _of_key(tree: dict[str, bytes], key_id: str) -> dict[str, bytes]:
    return {k: v for k, v in tree.items() if k.endswith(f"/{key_id}.json")}


def _push_wal(repo: Repository, tmp_path: Path) -> list[tuple[int, str, bytes]]:
    """Four segments of two systems and a history file, each in its own epoch (``epoch_per_push``)."""
    files = []
    for sid, segnos in ((SYSID, (1, 2, 3)), (OTHER_SYSID, (1,))):
        store = WalStore(repo, sid)
        d = tmp_path / f"wal-{sid}"
        d.mkdir(exist_ok=True)
        for s in segnos:
            p = write_seg(d, 1, s, sysid=sid)
            store.push(p)
            files.append((sid, p.name, p.read_bytes()))
    h = tmp_path / "00000002.history"
    h.write_text("1\t0/3000000\tno recovery target specified\n")
    WalStore(repo, SYSID).push(h)
    files.append((SYSID, h.name, h.read_bytes()))
    return files


def _backup(repo: Repository) -> str:
    with repo.begin(kind="stream", labels={"name": "t"}) as b:
        b.write_object("data", io.BytesIO(b"backup bytes" * 100))
    return b.backup_id


def _all_epochs(repo: Repository) -> list[str]:
    return [epochs.scope(s, e) for s in (str(SYSID), str(OTHER_SYSID)) for e in epochs.epoch_wraps(repo, s)]


def _fetch_all(repo: Repository, files, tmp_path: Path) -> None:
    out = tmp_path / "fetched"
    for sid, name, data in files:
        WalStore(repo, sid).fetch(name, out)
        assert out.read_bytes() == data, name


def test_rotate_covers_wal_and_retire_waits_for_it(tmp_path: Path, epoch_per_push: None) -> None:
    repo_a = make_wal_repo(tmp_path)
    files = _push_wal(repo_a, tmp_path)
    bid = _backup(repo_a)
    key_b = new_key_file(tmp_path, "b.key")
    repo_b = _with_key(repo_a, key_b)
    a, b = repo_a.master.key_id, repo_b.master.key_id
    wal_epochs = _all_epochs(repo_a)
    assert len(wal_epochs) == 5

    # Before any rotation the new key opens nothing, and retiring the old one is refused, deleting nothing.
    with pytest.raises(AuthenticationFailed, match=f"no key object for master key {b}"):
        WalStore(repo_b, SYSID).fetch(files[0][1], tmp_path / "x")
    before = _tree(repo_a)
    with pytest.raises(VerificationFailed) as refused:
        key_ops.retire(repo_b, a)
    line = refused.value.one_line()
    first_sid, first_epoch = wal_epochs[0].split("/")[1:]
    assert f"refusing to retire {a}" in line and "nothing was deleted" in line
    assert f"1 backup (first {bid})" in line
    assert f"5 WAL epochs (first {first_epoch} of system {first_sid})" in line
    assert "\n" not in line and refused.value.exit_code == VerificationFailed.exit_code
    assert _tree(repo_a) == before

    # Rotation adds one wrap per backup and per WAL epoch, and changes nothing else.
    report = key_ops.rotate(repo_a, repo_b.master)
    assert report.done == [bid] and sorted(report.wal_done) == sorted(wal_epochs)
    assert not report.failed and not report.wal_failed and not report.wal_skipped
    after = _tree(repo_a)
    assert {k: v for k, v in after.items() if k not in before} == _of_key(after, b)
    assert all(after[k] == v for k, v in before.items())
    assert len(_of_key(after, b)) == 6 and report.repository_secret == "done"  # the secret: outside _tree
    for scope in wal_epochs:
        _, sid, epoch = scope.split("/")
        rec = json.loads(after[epochs.epoch_key_path(sid, epoch, b)])
        assert rec["format"] == "seedvault-wal-key" and rec["epoch"] == epoch and rec["key_id"] == b
        assert epochs.read_epoch_key(repo_b, sid, epoch, repo_b.master) == epochs.read_epoch_key(
            repo_a, sid, epoch, repo_a.master
        )
    _fetch_all(repo_b, files, tmp_path)

    # A server still on the old key starts a new epoch after the rotation: retire refuses, naming it.
    late = write_seg(tmp_path, 1, 4)
    WalStore(repo_a, SYSID).push(late)
    files.append((SYSID, late.name, late.read_bytes()))
    (late_epoch,) = set(_all_epochs(repo_a)) - set(wal_epochs)
    before = _tree(repo_a)
    with pytest.raises(
        VerificationFailed, match=f"1 WAL epoch \\(first {late_epoch.split('/')[2]} of system {SYSID}\\)"
    ):
        key_ops.retire(repo_b, a)
    assert _tree(repo_a) == before

    # Rotating again adds only what is missing and leaves every existing key object byte-identical.
    again = key_ops.rotate(repo_a, repo_b.master)
    assert again.wal_done == [late_epoch] and sorted(again.wal_skipped) == sorted(wal_epochs)
    assert again.done == [] and again.skipped == [bid] and not again.all_failed()
    after = _tree(repo_a)
    assert all(after[k] == v for k, v in before.items()) and len(after) == len(before) + 1
    third = key_ops.rotate(repo_a, repo_b.master)
    assert third.wal_done == [] and third.done == [] and not third.all_failed()
    assert _tree(repo_a) == after

    # Now retire succeeds; no key object of the old key is left, and only the new key reads everything.
    retired = key_ops.retire(repo_b, a)
    assert retired.done == [bid] and sorted(retired.wal_done) == sorted(wal_epochs + [late_epoch])
    final = _tree(repo_a)
    # 7 key objects; the repository secret (the backup's catalog entry made it) re-wrapped and retired like them.
    assert not _of_key(final, a) and len(_of_key(final, b)) == 7 and retired.repository_secret == "done"
    assert repokey.wrapped_for(repo_a) == {b}
    assert {k: v for k, v in final.items() if "/keys/" not in k and "/repokey/" not in k} == {
        k: v for k, v in after.items() if "/keys/" not in k and "/repokey/" not in k
    }
    only_b = _with_key(repo_a, key_b)
    _fetch_all(only_b, files, tmp_path)
    assert b"".join(only_b.read_object(bid, "data")) == b"backup bytes" * 100
    with pytest.raises(AuthenticationFailed, match=f"no key object for master key {a}"):
        WalStore(_with_key(repo_a, tmp_path / "master.key"), SYSID).fetch(files[0][1], tmp_path / "x")
    # Both stay safe to re-run: rotate (old key configured) finds everything wrapped for the new key already,
    # retire finds nothing left to remove.
    rerun = key_ops.rotate(repo_a, repo_b.master)
    assert rerun.done == [] and rerun.wal_done == [] and not rerun.all_failed()
    assert sorted(rerun.wal_skipped) == sorted(wal_epochs + [late_epoch]) and rerun.skipped == [bid]
    assert key_ops.retire(repo_b, a).wal_done == [] and _tree(repo_a) == final


def test_rotate_never_overwrites_a_wrong_new_key_object(tmp_path: Path) -> None:
    repo_a = make_wal_repo(tmp_path)
    store = WalStore(repo_a, SYSID)
    store.push(write_seg(tmp_path, 1, 1))
    repo_b = _with_key(repo_a, new_key_file(tmp_path, "b.key"))
    ((epoch, _),) = epochs.epoch_wraps(repo_a, str(SYSID)).items()
    # A stale object for the new key that wraps another key (e.g. written by a broken run) stays, and fails.
    epochs.write_epoch_key(repo_a, str(SYSID), epoch, b"\x01" * 32, repo_b.master)
    path = epochs.epoch_key_path(str(SYSID), epoch, repo_b.master.key_id)
    stale = repo_a.storage.get_bytes(path)
    report = key_ops.rotate(repo_a, repo_b.master)
    assert list(report.wal_failed) == [epochs.scope(str(SYSID), epoch)]
    assert "does not open to the same key" in report.wal_failed[epochs.scope(str(SYSID), epoch)]
    assert repo_a.storage.get_bytes(path) == stale


def test_retire_reports_key_objects_written_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epoch_per_push: None
) -> None:
    repo_a = make_wal_repo(tmp_path)
    WalStore(repo_a, SYSID).push(write_seg(tmp_path, 1, 1))
    repo_b = _with_key(repo_a, new_key_file(tmp_path, "b.key"))
    key_ops.rotate(repo_a, repo_b.master)
    delete = repo_a.storage.delete

    def delete_while_a_server_pushes(keys):
        delete(keys)
        WalStore(repo_a, SYSID).push(write_seg(tmp_path, 1, 2))  # a new epoch, wrapped for the old key only

    monkeypatch.setattr(repo_a.storage, "delete", delete_while_a_server_pushes)
    with pytest.raises(VerificationFailed, match="got a key object for it meanwhile, which was kept"):
        key_ops.retire(repo_b, repo_a.master.key_id)
    # The late epoch keeps its only key object: nothing it needs was deleted.
    (late,) = [e for e, ids in epochs.epoch_wraps(repo_a, str(SYSID)).items() if ids == {repo_a.master.key_id}]
    assert epochs.read_epoch_key(repo_a, str(SYSID), late, repo_a.master)
