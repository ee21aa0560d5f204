"""The catalog on a local repository: index equals the manifests, the hard cases, tampering, the cache."""

from __future__ import annotations

import io
import json
import logging
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from seedvault import catalog, repokey
from seedvault.format import layout
from seedvault.repository import Repository
from tests.fixtures.repo import LocalRepo
from tests.helpers import run_cli


def _put(repo: Repository, label: str = "t", size: int = 64) -> str:
    with repo.begin(kind="put", labels={"name": label}) as writer:
        writer.write_object("data", io.BytesIO(os.urandom(size)))
    return writer.backup_id


def _truth(repo: Repository) -> dict[str, dict]:
    return {e.backup_id: e.body for e in repo.entries()}


def _view(repo: Repository, cache: Path | str) -> tuple[dict[str, dict | None], catalog.Catalog]:
    cat = catalog.Catalog(repo, cache=cache)
    return {e.backup_id: e.body for e in cat.entries()}, cat


def test_index_equals_manifests_through_compaction_and_rebuild(local_repo: LocalRepo, tmp_path: Path) -> None:
    repo = local_repo.repository()
    ids = [_put(repo, label=f"l{i % 3}") for i in range(catalog.COMPACT_AT * 2 + 3)]
    listing = catalog._list_index(repo)
    assert listing.top[0] >= 2 and listing.loose < catalog.COMPACT_AT, "writers compact"
    truth = _truth(repo)
    assert sorted(truth) == ids
    cold, cat = _view(local_repo.repository(), tmp_path / "c1")
    assert cold == truth and cat.stats.cold and not cat.stats.from_manifests and not cat.stats.fallback
    warm, cat = _view(local_repo.repository(), tmp_path / "c1")
    assert warm == truth and not cat.stats.cold
    report = catalog.rebuild(local_repo.repository())
    assert report.indexed == len(ids) and report.segment
    listing = catalog._list_index(repo)
    assert listing.loose == 0 and sum(len(g) for g in listing.segments.values()) == 1
    after, cat = _view(local_repo.repository(), "off")
    assert after == truth and not cat.stats.from_manifests
    status = catalog.status(local_repo.repository())
    assert status["indexed"] == status["manifests"] == len(ids)
    assert status["missing_from_index"] == status["listed_without_manifest"] == []


def test_latest_per_label_matches_repository_newest(local_repo: LocalRepo, tmp_path: Path) -> None:
    repo = local_repo.repository()
    for i in range(7):
        _put(repo, label="a" if i % 3 else "b")
    for label in ("a", "b", "zzz"):

        def match(body: dict, label: str = label) -> bool:
            return body["labels"].get("name") == label

        expected, _ = local_repo.repository().newest(match)
        got, skipped = catalog.Catalog(local_repo.repository(), cache=tmp_path / "c").latest(match)
        assert (got and got.backup_id) == (expected and expected.backup_id) and skipped == []


def test_entry_missing_is_found_also_for_a_long_backup_committing_late(
    local_repo: LocalRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long backup starts first and commits after a shorter one; its writer dies before its entry."""
    cache = tmp_path / "cache"
    repo = local_repo.repository()
    first = _put(repo)
    real = layout.new_backup_id
    monkeypatch.setattr(layout, "new_backup_id", lambda: real(datetime.now(UTC) - timedelta(hours=3)))
    long_writer = repo.begin(kind="put", labels={"name": "t"})  # started "3 hours ago", still running
    monkeypatch.setattr(layout, "new_backup_id", real)
    long_writer.write_object("data", io.BytesIO(b"long"))
    view, cat = _view(local_repo.repository(), cache)  # the cache is warm from here on
    assert set(view) == {first} and cat.stats.in_flight == [long_writer.backup_id]
    short = _put(repo)
    view, cat = _view(local_repo.repository(), cache)
    assert set(view) == {first, short} and cat.stats.in_flight == [long_writer.backup_id]
    # The long backup commits, but its writer "dies" between its manifest and its index entry.
    monkeypatch.setattr(catalog, "record", lambda repo, body: False)
    long_writer.commit()
    monkeypatch.undo()
    assert long_writer.backup_id < short
    assert not any(long_writer.backup_id in n for n in catalog._list_index(repo).adds), "no entry was written"
    view, cat = _view(local_repo.repository(), cache)
    assert long_writer.backup_id in view and cat.stats.from_manifests == [long_writer.backup_id]
    assert view[long_writer.backup_id] == repo.manifest(long_writer.backup_id)
    assert cat.stats.repaired, "a reader with the key indexes what it found"
    assert any(long_writer.backup_id in n for n in catalog._list_index(repo).adds)
    cold, cat = _view(local_repo.repository(), tmp_path / "cold")
    assert set(cold) == {first, short, long_writer.backup_id} and cat.stats.from_manifests == []


def test_cold_reader_finds_unindexed_backups_and_repairs(local_repo: LocalRepo, tmp_path: Path) -> None:
    """Backups of an older seedvault (no catalog at all) are found and indexed by the first reader."""
    repo = local_repo.repository()
    ids = [_put(repo) for _ in range(catalog.COMPACT_AT + 2)]
    repo.storage.delete([info.key for info in repo.storage.list(layout.CATALOG)])
    view, cat = _view(local_repo.repository(), tmp_path / "c")
    assert sorted(view) == ids and cat.stats.from_manifests == ids and cat.stats.compacted
    view, cat = _view(local_repo.repository(), tmp_path / "c2")
    assert sorted(view) == ids and cat.stats.from_manifests == []


def test_cleanup_repairs_the_index(local_repo: LocalRepo) -> None:
    repo = local_repo.repository()
    ids = [_put(repo) for _ in range(3)]
    repo.storage.delete([layout.CATALOG + n for n in catalog._list_index(repo).adds if ids[1] in n])
    env = {**local_repo.env, "SEEDVAULT_CATALOG_CACHE": "off"}
    proc = run_cli(["cleanup"], env, check=True)
    assert b"catalog: indexed 1 backups" in proc.stdout
    assert any(ids[1] in n for n in catalog._list_index(repo).adds)


def test_deleted_backups_are_not_returned(local_repo: LocalRepo, tmp_path: Path) -> None:
    repo = local_repo.repository()
    ids = [_put(repo) for _ in range(4)]
    cache = tmp_path / "cache"
    _view(local_repo.repository(), cache)
    # 1. 'seedvault delete': tombstone first, then the manifest.
    env = {**local_repo.env, "SEEDVAULT_CATALOG_CACHE": str(cache)}
    run_cli(["delete", "--yes", ids[3]], env, check=True)
    assert catalog._list_index(repo).forgets
    for where in (cache, tmp_path / "cold1"):
        view, _ = _view(local_repo.repository(), where)
        assert sorted(view) == ids[:3]
    listed = run_cli(["list", "--json"], env, check=True)
    assert [r["id"] for r in json.loads(listed.stdout)] == ids[:3]
    # 2. deleted by an older seedvault (no tombstone): latest skips it at once (one HEAD), the cold listing too.
    local_repo.repository().delete_backup(ids[2])
    cat = catalog.Catalog(local_repo.repository(), cache=cache)
    entry, _ = cat.latest()
    assert entry is not None and entry.backup_id == ids[1]
    assert catalog.Catalog(local_repo.repository(), cache=cache).latest()[0].backup_id == ids[1]
    view, _ = _view(local_repo.repository(), tmp_path / "cold2")
    assert sorted(view) == ids[:2]
    assert run_cli(["list", "--latest"], env, check=True).stdout.decode().strip() == ids[1]


def _tamper(repo: Repository, name: str, edit) -> None:
    path = Path(repo.storage.root) / layout.CATALOG / name  # type: ignore[attr-defined]
    path.chmod(0o600)
    path.write_bytes(edit(path.read_bytes()))


def test_tampered_entry_is_not_trusted(local_repo: LocalRepo, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = local_repo.repository()
    ids = [_put(repo) for _ in range(3)]
    truth = _truth(repo)
    name = next(n for n in catalog._list_index(repo).adds if ids[1] in n)
    _tamper(repo, name, lambda data: data.replace(b'"raw_size":64', b'"raw_size":65'))
    catalog._warned.clear()
    with caplog.at_level(logging.WARNING):
        view, cat = _view(local_repo.repository(), tmp_path / "c")
    assert view == truth, "the manifest, not the tampered entry, gives the body"
    assert cat.stats.untrusted and ids[1] in cat.stats.from_manifests
    assert "fails authentication" in caplog.text and "not trusted" in caplog.text


def test_entry_naming_another_backup_is_not_trusted(local_repo: LocalRepo, tmp_path: Path) -> None:
    """Correctly MAC'd (the attacker here has the key) but moved: its name and content disagree."""
    repo = local_repo.repository()
    ids = [_put(repo) for _ in range(2)]
    key = repokey.subkey(repo, "catalog")
    other = repo.manifest(ids[0])
    name = catalog._entry_name(ids[1])
    payload = json.dumps({"type": "add", "backup_id": ids[0], "manifest": other}).encode()
    repo.storage.put_bytes(layout.CATALOG + name, catalog.seal(key, catalog.ENTRY_FORMAT, name, payload))
    catalog._warned.clear()
    view, cat = _view(local_repo.repository(), tmp_path / "c")
    assert view == _truth(repo) and any("names another backup" in u for u in cat.stats.untrusted)


def test_tampered_segment_falls_back_to_the_manifests(
    local_repo: LocalRepo, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = local_repo.repository()
    for _ in range(catalog.COMPACT_AT):
        _put(repo)
    (segment,) = catalog._list_index(repo).segments[1]
    _tamper(repo, segment, lambda data: data[:-5] + bytes(b ^ 1 for b in data[-5:]))
    catalog._warned.clear()
    view, cat = _view(local_repo.repository(), tmp_path / "c")
    assert view == _truth(repo) and cat.stats.untrusted
    assert len(cat.stats.from_manifests) == catalog.COMPACT_AT
    assert catalog.status(local_repo.repository())["untrusted"]
    catalog._warned.clear()
    with caplog.at_level(logging.WARNING):  # writers cannot compact on it, but still commit and append
        more = [_put(repo) for _ in range(catalog.COMPACT_AT)]
    assert "was not compacted" in caplog.text and set(more) <= set(repo.backup_ids())
    assert catalog._list_index(repo).loose == catalog.COMPACT_AT
    catalog.rebuild(local_repo.repository())
    catalog._warned.clear()
    view, cat = _view(local_repo.repository(), tmp_path / "c2")
    assert view == _truth(repo) and not cat.stats.untrusted and not cat.stats.from_manifests


def test_cache_is_private_and_optional(local_repo: LocalRepo, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = local_repo.repository()
    _put(repo)
    cache = tmp_path / "cache"
    _view(local_repo.repository(), cache)
    rid = repo.config()["id"]
    root = cache / rid
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    catalog._warned.clear()
    with caplog.at_level(logging.WARNING):
        view, _ = _view(local_repo.repository(), locked / "sub")
        view2, _ = _view(local_repo.repository(), locked / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        assert caplog.text.count("cannot be used") == 1, "warned once"
    assert view == view2 == _truth(repo)


def test_without_a_key_listing_reads_the_manifests(local_repo: LocalRepo) -> None:
    repo = local_repo.repository()
    bid = _put(repo)
    env = {k: v for k, v in local_repo.env.items() if k != "SEEDVAULT_KEY_FILE"}
    proc = run_cli(["list", "--no-verify", "--json"], env, check=True)
    assert [r["id"] for r in json.loads(proc.stdout)] == [bid]
    assert run_cli(["list", "--latest", "--no-verify"], env, check=True).stdout.decode().strip() == bid


def test_catalog_cli(local_repo: LocalRepo) -> None:
    repo = local_repo.repository()
    ids = [_put(repo) for _ in range(2)]
    env = {**local_repo.env, "SEEDVAULT_CATALOG_CACHE": "off"}
    status = json.loads(run_cli(["catalog", "status", "--json"], env, check=True).stdout)
    assert status["indexed"] == status["manifests"] == 2 and status["loose_entries"] == 2
    out = run_cli(["catalog", "rebuild"], env, check=True).stdout.decode()
    assert out.startswith("catalog rebuilt: 2 backups indexed")
    shown = json.loads(run_cli(["show", "--json", ids[0]], env, check=True).stdout)
    assert shown["id"] == ids[0]
    missing = run_cli(["show", "20200101T000000Z-abc123"], env)
    assert missing.returncode == 12


def test_writer_killed_between_manifest_and_entry(local_repo: LocalRepo, tmp_path: Path) -> None:
    """kill -9 right after the commit marker: the backup is complete, unindexed, and still the latest."""
    env = {**local_repo.env, "SEEDVAULT_CATALOG_CACHE": str(tmp_path / "cache")}
    first = run_cli(["put", "--label", "t"], env, input=b"one", check=True).stdout.decode().strip()
    assert run_cli(["list", "--latest"], env, check=True).stdout.decode().strip() == first  # warm from here
    killed = run_cli(["put", "--label", "t"], {**env, "SEEDVAULT_FAULT_KILL_AT": "catalog-entry"}, input=b"two")
    assert killed.returncode == -9
    repo = local_repo.repository()
    (second,) = [b for b in repo.backup_ids() if b != first]
    assert not any(second in n for n in catalog._list_index(repo).adds)
    status = json.loads(run_cli(["catalog", "status", "--json"], env, check=True).stdout)
    assert status["missing_from_index"] == [second]
    again = json.loads(run_cli(["catalog", "status", "--json"], env, check=True).stdout)
    assert again["missing_from_index"] == [second], "status only reports, it does not repair"
    assert run_cli(["list", "--latest"], env, check=True).stdout.decode().strip() == second
    assert json.loads(run_cli(["catalog", "status", "--json"], env, check=True).stdout)["missing_from_index"] == []


def test_chains_children_and_holders(local_repo: LocalRepo, tmp_path: Path) -> None:
    from seedvault import leases

    repo = local_repo.repository()
    ids: list[str] = []
    for parent in (None, 0, 1):
        with repo.begin(kind="put", labels={"name": "c"}, parent=None if parent is None else ids[parent]) as w:
            w.write_object("data", io.BytesIO(b"x"))
        ids.append(w.backup_id)
    cat = catalog.Catalog(local_repo.repository(), cache=tmp_path / "c")
    assert [b for b, _ in cat.chain(ids[2])] == ids
    assert cat.children(ids[0]) == [ids[1]] and cat.children(ids[2]) == []
    assert cat.holders(ids[2]).held is False
    with leases.shared(repo, "restore test", [ids[2]]):
        held = catalog.Catalog(local_repo.repository(), cache=tmp_path / "c").holders(ids[2])
        assert held.held and "restore test" in held.leases[0] and held.children == []
    assert cat.holders(ids[0]).children == [ids[1]]
    repo.storage.delete([layout.manifest_key(ids[1])])
    with pytest.raises(catalog.BackupNotFound, match="the chain is broken"):
        catalog.Catalog(local_repo.repository(), cache="off").chain(ids[2])
