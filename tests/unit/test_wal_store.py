"""WAL names, records and the store's push/fetch rules, on local storage with synthetic segments."""

from __future__ import annotations

import functools
import io
import os
import tarfile
from pathlib import Path

import pytest

from seedvault.crypto.keys import KeySource, generate_raw_key
from seedvault.errors import (
    AuthenticationFailed,
    ForeignWal,
    FormatError,
    ObjectExists,
    ObjectNotFound,
    UsageError,
    WalGap,
)
from seedvault.repository import Repository
from seedvault.sources.postgres.tarscan import TarScanner
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.plan import Target, make_plan
from seedvault.sources.postgres.wal.store import WalStore
from seedvault.storage.local import LocalStorage

SYSID = 7412345678901234567
SEG = 16 * 1024 * 1024


def segment_bytes(tli: int, segno: int, *, sysid: int = SYSID, size: int = SEG, fill: bytes = b"") -> bytes:
    head = wn.LONG_HEADER.pack(wn.PAGE_MAGIC[15], wn.XLP_LONG_HEADER, tli, segno * size, 0, sysid, size, 8192)
    body = (fill or os.urandom(4096)) * 4
    return head + body + b"\0" * (size - len(head) - len(body))


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return make_wal_repo(tmp_path)


def make_wal_repo(tmp_path: Path) -> Repository:
    key = tmp_path / "master.key"
    key.write_text(generate_raw_key())
    key.chmod(0o600)
    storage = LocalStorage(str(tmp_path / "repo"), create=True)
    r = Repository(storage, KeySource("raw", origin="test key", path=key))
    r.config(create=True)
    return r


def write_seg(d: Path, tli: int, segno: int, **kw) -> Path:
    p = d / wn.segment_name(tli, segno, SEG)
    p.write_bytes(segment_bytes(tli, segno, **kw))
    return p


# --- names -------------------------------------------------------------------------------------------
def test_names_and_lsn_math() -> None:
    assert wn.segment_name(1, 0x1FF, SEG) == "0000000100000001000000FF"
    assert wn.segno_of("0000000100000001000000FF", SEG) == 0x1FF
    assert wn.segment_name(0x1A, 5, 1 << 30) == "0000001A0000000100000001"
    assert wn.parse_lsn("1/FF000028") == 0x1FF000028 and wn.format_lsn(0x1FF000028) == "1/FF000028"
    assert wn.classify("00000002.history").kind == "history"
    assert wn.classify("000000010000000000000003.00000028.backup").kind == "backup"
    assert wn.classify("000000010000000000000003.partial").segment == "000000010000000000000003"
    for bad in ("00000001000000000000000g", "../etc/passwd", "0000000100000000000003", "x.history"):
        with pytest.raises(UsageError):
            wn.classify(bad)


def test_history_ancestry_and_segment_timeline() -> None:
    text = "1\t0/90338A0\tafter LSN 0/9033878\n\n# comment\n2\t0/C000000\tno recovery target specified\n"
    anc = wn.parse_history(text, 3)
    assert [(e.tli, e.begin, e.end) for e in anc] == [
        (1, 0, 0x90338A0),
        (2, 0x90338A0, 0xC000000),
        (3, 0xC000000, None),
    ]
    # The segment holding a switch point is read from the new timeline.
    assert wn.timeline_of_segment(anc, 8, SEG) == 1
    assert wn.timeline_of_segment(anc, 9, SEG) == 2
    assert wn.timeline_of_segment(anc, 0xC, SEG) == 3
    with pytest.raises(FormatError):
        wn.parse_history("2\t0/1\tx\n1\t0/2\ty\n", 3)


def test_page_header_checks() -> None:
    name = wn.classify(wn.segment_name(2, 7, SEG))
    data = segment_bytes(2, 7)
    assert wn.check_segment_header(data, name, system_id=SYSID).seg_size == SEG
    with pytest.raises(ForeignWal, match="belongs to database system"):
        wn.check_segment_header(segment_bytes(2, 7, sysid=SYSID + 1), name, system_id=SYSID)
    with pytest.raises(ForeignWal, match="holds the segment"):
        wn.check_segment_header(segment_bytes(2, 8), name, system_id=SYSID)
    # The first segment of a new timeline still carries the old TLI on its first page: accepted.
    wn.check_segment_header(segment_bytes(1, 7), name, system_id=SYSID)
    with pytest.raises(ForeignWal, match="later than"):
        wn.check_segment_header(segment_bytes(3, 7), name, system_id=SYSID)
    with pytest.raises(ForeignWal, match="page magic"):
        wn.check_segment_header(data, name, system_id=SYSID, pg_major=16)


# --- push / fetch ------------------------------------------------------------------------------------
def test_push_fetch_roundtrip_and_idempotent_repush(repo: Repository, tmp_path: Path) -> None:
    store = WalStore(repo, SYSID)
    p = write_seg(tmp_path, 1, 3)
    first = store.push(p)
    assert first.result == "stored" and first.stored_size < SEG // 100  # compressed
    again = WalStore(repo, SYSID).push(p)  # a new process: another epoch, same content
    assert again.result == "duplicate"
    out = tmp_path / "fetched"
    header = WalStore(repo, SYSID).fetch(p.name, out)
    assert out.read_bytes() == p.read_bytes() and header["kind"] == "segment" and header["timeline"] == 1


def test_repush_with_different_content_fails_and_keeps_first(repo: Repository, tmp_path: Path) -> None:
    store = WalStore(repo, SYSID)
    p = write_seg(tmp_path, 1, 4)
    original = p.read_bytes()
    store.push(p)
    key = store.object_key(wn.classify(p.name))
    before = repo.storage.get_bytes(key)
    p.write_bytes(segment_bytes(1, 4))  # same name, other content
    with pytest.raises(ObjectExists, match="different content"):
        WalStore(repo, SYSID).push(p)
    assert repo.storage.get_bytes(key) == before
    out = tmp_path / "out"
    store.fetch(p.name, out)
    assert out.read_bytes() == original


def test_repush_differing_in_the_last_byte_fails(repo: Repository, tmp_path: Path) -> None:
    """The duplicate check compares the whole authenticated body, not a prefix or the size."""
    store = WalStore(repo, SYSID)
    p = write_seg(tmp_path, 1, 11)
    store.push(p)
    data = bytearray(p.read_bytes())
    data[-1] ^= 1
    p.write_bytes(bytes(data))
    with pytest.raises(ObjectExists, match="different content"):
        WalStore(repo, SYSID).push(p)


def _legacy_record(store: WalStore, p: Path, *, mac_of: bytes | None = None) -> str:
    """Store ``p`` as seedvault < 0.2 did: the header carries a keyed content MAC (of ``mac_of``)."""
    import io as _io

    from seedvault.sources.postgres.wal import record

    wal = wn.classify(p.name)
    key = store.object_key(wal)
    epoch, ek = store.current_epoch()
    data = p.read_bytes()
    mac, _ = record.content_mac(ek, key, _io.BytesIO(mac_of if mac_of is not None else data))
    header = {
        "format": record.FORMAT, "version": 1, "name": wal.name, "kind": wal.kind, "system_id": str(SYSID),
        "timeline": 1, "segno": wal.segno(SEG), "pg_major": 15, "wal_segment_size": SEG, "raw_size": len(data),
        "content_mac": mac, "epoch": epoch, "compression": "zstd", "chunk_size": 1 << 20,
        "source": "archive_command", "archived": "2026-11-01T00:00:00.000000Z", "tool": "seedvault 0.1.0",
    }  # fmt: skip
    out = _io.BytesIO()
    record.write_record(out, _io.BytesIO(data), epoch_key=ek, object_key=key, header=header, level=1,
                        chunk_size=1 << 20)  # fmt: skip
    repo_storage = store.repo.storage
    repo_storage.put_bytes(key, out.getvalue())
    return key


def test_legacy_records_with_a_content_mac_stay_readable_and_checked(repo: Repository, tmp_path: Path) -> None:
    store = WalStore(repo, SYSID)
    good = write_seg(tmp_path, 1, 12)
    _legacy_record(store, good)
    store.fetch(good.name, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == good.read_bytes()
    assert WalStore(repo, SYSID).push(good).result == "duplicate"  # compared through the old MAC
    other = good.read_bytes()[:-1] + b"x"
    (tmp_path / "other").write_bytes(other)
    with pytest.raises(ObjectExists, match="different content"):
        WalStore(repo, SYSID).push(tmp_path / "other", name=good.name)
    bad = write_seg(tmp_path, 1, 13)
    _legacy_record(store, bad, mac_of=b"not these bytes")  # authentic chunks, wrong MAC: refused
    with pytest.raises(Exception, match="does not match"):
        store.fetch(bad.name, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_new_records_carry_no_content_mac_and_push_reads_once(repo: Repository, tmp_path: Path) -> None:
    """One pass over the file: the body's chunk tags are the content check, no MAC pass before it."""
    store = WalStore(repo, SYSID)
    p = write_seg(tmp_path, 1, 14)
    reads: list[int] = []

    class Counting(io.FileIO):
        def readinto(self, b):  # type: ignore[override]
            n = super().readinto(b)
            reads.append(n or 0)
            return n

        def read(self, size=-1):  # type: ignore[override]
            data = super().read(size)
            reads.append(len(data))
            return data

    with Counting(str(p), "r") as fh:
        store.push(p, fileobj=fh)  # type: ignore[arg-type]
    assert sum(reads) <= SEG + 64  # the 64-byte page header probe, then the file once
    header = store.read_header(store.object_key(wn.classify(p.name)))
    assert "content_mac" not in header and header["raw_size"] == SEG


def test_foreign_segment_refused_at_push(repo: Repository, tmp_path: Path) -> None:
    p = write_seg(tmp_path, 1, 5, sysid=SYSID + 9)
    with pytest.raises(ForeignWal, match=str(SYSID + 9)):
        WalStore(repo, SYSID).push(p)
    assert all("/keys/" in o.key for o in repo.storage.list("v1/wal/"))  # no record was written


def test_fetch_missing_corrupted_moved_and_wrong_key(repo: Repository, tmp_path: Path) -> None:
    store = WalStore(repo, SYSID)
    with pytest.raises(ObjectNotFound):
        store.fetch(wn.segment_name(1, 9, SEG), tmp_path / "x")
    p = write_seg(tmp_path, 1, 6)
    store.push(p)
    key = store.object_key(wn.classify(p.name))
    good = repo.storage.get_bytes(key)
    dest = tmp_path / "dest"
    # a flipped byte in the body
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01
    repo.storage.put_bytes(key, bytes(bad), overwrite=True)
    with pytest.raises(AuthenticationFailed):
        WalStore(repo, SYSID).fetch(p.name, dest)
    assert not dest.exists() and not [f for f in tmp_path.iterdir() if "seedvault-tmp" in f.name]
    # a flipped header byte
    bad = bytearray(good)
    bad[20] ^= 0x01
    repo.storage.put_bytes(key, bytes(bad), overwrite=True)
    with pytest.raises((AuthenticationFailed, FormatError)):
        WalStore(repo, SYSID).fetch(p.name, dest)
    # truncated
    repo.storage.put_bytes(key, good[: len(good) - 10], overwrite=True)
    with pytest.raises(Exception, match="truncated|authentication"):
        WalStore(repo, SYSID).fetch(p.name, dest)
    # the intact record copied under another segment's name
    other = store.object_key(wn.classify(wn.segment_name(1, 7, SEG)))
    repo.storage.put_bytes(key, good, overwrite=True)
    repo.storage.put_bytes(other, good)
    with pytest.raises(AuthenticationFailed):
        WalStore(repo, SYSID).fetch(wn.segment_name(1, 7, SEG), dest)
    # a different master key
    k2 = tmp_path / "other.key"
    k2.write_text(generate_raw_key())
    k2.chmod(0o600)
    repo2 = Repository(repo.storage, KeySource("raw", origin="other key", path=k2))
    with pytest.raises(AuthenticationFailed, match="no key object for master key"):
        WalStore(repo2, SYSID).fetch(p.name, dest)
    WalStore(repo, SYSID).fetch(p.name, dest)
    assert dest.read_bytes() == p.read_bytes()


def test_history_and_partials(repo: Repository, tmp_path: Path) -> None:
    store = WalStore(repo, SYSID)
    h = tmp_path / "00000002.history"
    h.write_text("1\t0/3000000\tno recovery target specified\n")
    store.push(h)
    assert store.read_history(2).startswith("1\t0/3000000")
    part = tmp_path / (wn.segment_name(1, 8, SEG) + ".partial")
    part.write_bytes(segment_bytes(1, 8))
    store.push(part)
    store.push(part)  # partials never conflict: each push is a version of its own
    assert len([o for o in store.list(1) if o.kind == "partial"]) == 2
    store.fetch(part.name, tmp_path / "p")
    assert (tmp_path / "p").read_bytes() == part.read_bytes()
    # Where the archive ends, asking for the whole segment gets the newest partial, flagged as such ...
    newer = segment_bytes(1, 8)
    part.write_bytes(newer)
    store.push(part)
    header = store.fetch(wn.segment_name(1, 8, SEG), tmp_path / "seg")
    assert header["served_partial"] and (tmp_path / "seg").read_bytes() == newer
    # ... but never once the whole segment is archived, and not when partials are declined.
    whole = write_seg(tmp_path, 1, 8)
    store.push(whole)
    assert "served_partial" not in store.fetch(whole.name, tmp_path / "seg")
    assert (tmp_path / "seg").read_bytes() == whole.read_bytes()
    with pytest.raises(ObjectNotFound):
        store.fetch(wn.segment_name(1, 9, SEG), tmp_path / "none")


# --- plan --------------------------------------------------------------------------------------------
def _fake_base(repo: Repository, tli: int, start: int, stop: int, stop_time: str) -> str:
    with repo.begin(kind="postgres-physical", labels={"name": "t"}) as b:
        b.write_object("base.tar", io.BytesIO(b"x"))
        b.source = {
            "type": "postgres-physical",
            "system_id": str(SYSID),
            "timeline": tli,
            "start_lsn": wn.format_lsn(start),
            "stop_lsn": wn.format_lsn(stop),
            "stop_time": stop_time,
            "wal_segment_size": SEG,
            "pg_major": 15,
        }
    return b.backup_id


def test_plan_walks_timelines_and_names_gaps(repo: Repository, tmp_path: Path) -> None:
    store = WalStore(repo, SYSID)
    for s in range(2, 7):
        store.push(write_seg(tmp_path, 1, s))
    bid = _fake_base(repo, 1, 2 * SEG + 40, 2 * SEG + 400, "2026-12-01T10:00:00Z")
    plan = make_plan(repo, Target("latest"))
    assert plan.backup_id == bid and plan.segments == [wn.segment_name(1, s, SEG) for s in range(2, 7)]
    # a second timeline branching in segment 5
    h = tmp_path / "00000002.history"
    h.write_text(f"1\t{wn.format_lsn(5 * SEG + 100)}\tafter\n")
    store.push(h)
    for s in (5, 6, 7):
        store.push(write_seg(tmp_path, 2, s))
    plan = make_plan(repo, Target("latest"))
    assert plan.timeline == 2
    assert plan.segments[-4:] == [wn.segment_name(1, 4, SEG)] + [wn.segment_name(2, s, SEG) for s in (5, 6, 7)]
    assert make_plan(repo, Target("latest"), timeline=1).segments[-1] == wn.segment_name(1, 6, SEG)
    # a hole with later WAL archived is refused, naming the hole
    key = store.object_key(wn.classify(wn.segment_name(2, 6, SEG)))
    repo.storage.delete([key])
    with pytest.raises(WalGap, match=wn.segment_name(2, 6, SEG)):
        make_plan(repo, Target("latest"))
    with pytest.raises(WalGap, match=wn.segment_name(2, 6, SEG)):
        make_plan(repo, Target("lsn", lsn=6 * SEG + 5))
    plan = make_plan(repo, Target("lsn", lsn=5 * SEG + 500))
    assert plan.segments[-1] == wn.segment_name(2, 5, SEG)


def test_plan_refuses_a_default_timeline_when_the_parent_kept_archiving(repo: Repository, tmp_path: Path) -> None:
    store = WalStore(repo, SYSID)
    for s in range(2, 7):  # timeline 1 up to segment 6 ...
        store.push(write_seg(tmp_path, 1, s))
    _fake_base(repo, 1, 2 * SEG + 40, 2 * SEG + 400, "2026-12-01T10:00:00Z")
    h = tmp_path / "00000002.history"  # ... then a PITR back into segment 4 made timeline 2
    h.write_text(f"1\t{wn.format_lsn(4 * SEG + 100)}\tbefore 2026-12-01 10:05:00+00\n")
    store.push(h)
    store.push(write_seg(tmp_path, 2, 4))
    assert make_plan(repo, Target("latest")).timeline == 2  # the discarded future of timeline 1: normal
    store.push(write_seg(tmp_path, 1, 7))  # but the old server kept running and archiving
    with pytest.raises(UsageError, match="timeline 1 kept archiving after that .up to 000000010000000000000007"):
        make_plan(repo, Target("latest"))
    assert make_plan(repo, Target("latest"), timeline=2).segments[-1] == wn.segment_name(2, 4, SEG)
    assert make_plan(repo, Target("latest"), timeline=1).segments[-1] == wn.segment_name(1, 7, SEG)


# --- tar scanner -------------------------------------------------------------------------------------
def test_tar_scanner_passes_bytes_through_and_captures_members(tmp_path: Path) -> None:
    buf = io.BytesIO()
    long_dir = "base/" + "d" * 120
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in [
            ("backup_label", b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"),
            (f"{long_dir}/16384", os.urandom(3000)),
            ("global/pg_control", SYSID.to_bytes(8, "little") + b"\0" * 8184),
            ("PG_VERSION", b"15\n"),
            ("backup_manifest", b'{"PostgreSQL-Backup-Manifest-Version": 1}\n' * 50),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    for step in (1, 511, 512, 4096, len(raw)):
        scanner = TarScanner(
            io.BytesIO(raw), {"backup_label": 1024, "global/pg_control": 16, "PG_VERSION": 64, "backup_manifest": None}
        )
        out = b"".join(iter(functools.partial(scanner.read, step), b""))
        assert out == raw
        assert scanner.ended and scanner.members == 5
        assert scanner.captured["backup_label"].startswith(b"START WAL LOCATION")
        assert wn.system_id_from_pg_control(scanner.captured["global/pg_control"]) == SYSID
        assert scanner.captured["PG_VERSION"] == b"15\n"
        assert scanner.manifest_bytes() == b'{"PostgreSQL-Backup-Manifest-Version": 1}\n' * 50


def test_pushes_without_a_state_dir_share_the_young_epoch_key(repo: Repository, tmp_path: Path) -> None:
    for s in range(30, 33):  # a fresh store per push, as one wal-push process per segment
        WalStore(repo, SYSID).push(write_seg(tmp_path, 1, s))
    keys = [o.key for o in repo.storage.list(f"v1/wal/{SYSID}/keys/")]
    assert len(keys) == 1, keys


def test_state_dir_cache_is_per_repository(tmp_path: Path) -> None:
    """One state dir, two repositories: WAL pushed to the second must be readable from it."""
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = make_wal_repo(tmp_path / "a"), make_wal_repo(tmp_path / "b")
    WalStore(first, SYSID, state_dir=str(state)).push(write_seg(tmp_path, 1, 40))
    seg = write_seg(tmp_path, 1, 41)
    WalStore(second, SYSID, state_dir=str(state)).push(seg)
    WalStore(second, SYSID).fetch(seg.name, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == seg.read_bytes()


def test_a_cached_epoch_key_spares_the_listing(repo: Repository, tmp_path: Path, monkeypatch) -> None:
    """With a state dir, a new process (store) takes the epoch from its cache: no LIST, the same epoch."""
    state = tmp_path / "state"
    first = WalStore(repo, SYSID, state_dir=str(state))
    first.push(write_seg(tmp_path, 1, 50))
    listed: list[str] = []
    real_list = repo.storage.list
    monkeypatch.setattr(repo.storage, "list", lambda prefix="": listed.append(prefix) or real_list(prefix))
    again = WalStore(repo, SYSID, state_dir=str(state))
    assert again.current_epoch()[0] == first.current_epoch()[0]
    assert listed == []
    cache = next(state.iterdir())
    cache.write_text(cache.read_text().replace('"seedvault-wal-key"', '"something-else"'))  # unknown format
    third = WalStore(repo, SYSID, state_dir=str(state))
    assert third.current_epoch()[0] == first.current_epoch()[0]  # found by listing instead
    assert listed


def test_a_repository_recreated_at_the_same_url_gets_a_new_epoch_key(tmp_path: Path) -> None:
    """Issue 14.6b: the cache is keyed by the repository id, so a re-created repository is not sealed for."""
    import shutil

    state = tmp_path / "state"
    repo = make_wal_repo(tmp_path)
    WalStore(repo, SYSID, state_dir=str(state)).push(write_seg(tmp_path, 1, 60))
    shutil.rmtree(tmp_path / "repo")
    fresh = Repository(LocalStorage(str(tmp_path / "repo"), create=True), repo.key_source)  # same URL, same key
    fresh.config(create=True)  # re-initialised: a new repository id
    assert fresh.master.key_id == repo.master.key_id
    assert str(fresh.storage.url) == str(repo.storage.url)
    seg = write_seg(tmp_path, 1, 61)
    WalStore(fresh, SYSID, state_dir=str(state)).push(seg)
    assert [o.key for o in fresh.storage.list(f"v1/wal/{SYSID}/keys/")]  # a new epoch key in the new repository
    WalStore(fresh, SYSID).fetch(seg.name, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == seg.read_bytes()


def test_a_cached_epoch_whose_key_object_is_gone_is_not_trusted(tmp_path: Path) -> None:
    """Same repository id, but the cached epoch's key object was deleted: the push makes a new epoch."""
    state = tmp_path / "state"
    repo = make_wal_repo(tmp_path)
    first = WalStore(repo, SYSID, state_dir=str(state))
    first.push(write_seg(tmp_path, 1, 70))
    old_epoch = first.current_epoch()[0]
    repo.storage.delete([o.key for o in repo.storage.list(f"v1/wal/{SYSID}/keys/")])
    seg = write_seg(tmp_path, 1, 71)
    again = WalStore(repo, SYSID, state_dir=str(state))
    again.push(seg)
    assert again.current_epoch()[0] != old_epoch
    WalStore(repo, SYSID).fetch(seg.name, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == seg.read_bytes()
