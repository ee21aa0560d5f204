"""The catalog: the one query API over backups, answered from an authenticated index and a local cache.

Manifests stay the only commit marker and the truth; everything here is derived from them and can be
re-derived (:func:`rebuild`). What the catalog adds is cost: reading every manifest (a GET of the manifest
and one of the key object per backup) made "the latest backup" 6,000 requests on a 3,000-backup repository.

On storage (FORMAT.md "Catalog")::

    v1/catalog/entries/<stamp>-<backup id>.json    one committed backup's authenticated manifest body
    v1/catalog/entries/<stamp>-forget-<rand>.json  a tombstone: these backups are being deleted
    v1/catalog/segments/<gen>-<rand>.seg           a generation: every indexed backup, zstd-compressed

Every object is MAC'd with ``repokey.subkey(repo, "catalog")`` over its name and payload, so whoever can
write the bucket but has no master key cannot add, alter or move an entry. A writer appends its entry right
after its manifest (:func:`record`); once ``COMPACT_AT`` loose objects exist, whoever notices with a key
folds them and the newest generation into the next generation (:func:`compact`) and deletes what it folded.
Deleting (``delete``, later ``prune``) writes a tombstone *before* the manifests go (:func:`forget`).

The reader (:class:`Catalog`) keeps a local cache per repository id (``$SEEDVAULT_CATALOG_CACHE``, else
``$XDG_CACHE_HOME/seedvault/catalog``, else ``~/.cache/seedvault/catalog``; ``off`` disables it): the bodies
by backup id (immutable), the generation and loose entries it has seen, and a *horizon*. A backup whose
manifest exists but whose entry is missing (its writer died between the two, or it was written by an older
seedvault) is still found: every backup stores its key object (``v1/keys/<id>/``) before anything else, so
the ids listed under ``v1/keys/`` include every complete backup. A cold reader lists them all (one request
per 1,000 backups); a warm one lists only those after its horizon, the older of "an hour before its last
read" and the oldest backup it saw in flight (a long backup started earlier commits later: it stays below
the horizon until it is resolved). An id there that is not indexed costs one GET of its manifest (a 404
while it is still being written). The answer to "latest" is read from its manifest and key object, as without
the catalog: a backup deleted by hand or by an older version (no tombstone) or damaged since its commit is
skipped, never returned.

Requests for "latest", on a repository of N backups: cold = 5 + ceil(N/1000) + generations (1) + loose objects
(< 10 after a writer compacts); warm = 5 + one per new entry (the wrapped repository secret is cached too).
Without a key (``list --no-verify``), or when the repository secret cannot be had, the catalog
falls back to reading the manifests, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import zstandard

from seedvault import faults, repokey
from seedvault.errors import (
    AuthenticationFailed,
    BackupNotFound,
    FormatError,
    KeyMissing,
    ObjectExists,
    ObjectNotFound,
    SeedvaultError,
    UnsupportedVersion,
    WrongKey,
)
from seedvault.format import layout
from seedvault.format import manifest as mf
from seedvault.format.fields import Fields, corrupted, load_json
from seedvault.repository import BackupEntry, Repository

log = logging.getLogger(__name__)

ENTRIES = f"{layout.CATALOG}entries/"
SEGMENTS = f"{layout.CATALOG}segments/"
ENTRY_FORMAT = "seedvault-catalog-entry"
SEGMENT_FORMAT = "seedvault-catalog-segment"
VERSION = 1
COMPACT_AT = 10  # loose objects; a cold reader GETs each, so few (see the module docstring)
READER_COMPACT_AT = 2 * COMPACT_AT  # a reader compacts only when writers did not (e.g. they lacked the key)
SETTLE = timedelta(hours=1)  # clock skew plus the gap between a backup's id and its key object, generously
CACHE_ENV = "SEEDVAULT_CATALOG_CACHE"
STATE_VERSION = 1
_STAMP = "%Y%m%dT%H%M%S.%fZ"
_ADD_RE = re.compile(r"\A\d{8}T\d{6}\.\d{6}Z-(\d{8}T\d{6}Z-[0-9a-f]{6})\.json\Z")
_FORGET_RE = re.compile(r"\A\d{8}T\d{6}\.\d{6}Z-forget-[0-9a-f]{8}\.json\Z")
_SEGMENT_RE = re.compile(r"\A(\d{10})-[0-9a-f]{8}\.seg\Z")
_warned: set[str] = set()


class Untrusted(AuthenticationFailed):
    """A catalog object that does not authenticate (or says something else than its name): never used."""


def _warn(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("seedvault: warning: %s", message)


def _stamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime(_STAMP)


# --- sealing ------------------------------------------------------------------------------------------
def _mac(key: bytes, name: str, payload: bytes) -> str:
    return hmac.new(key, b"seedvault/v1/catalog\x00" + name.encode() + b"\x00" + payload, hashlib.sha256).hexdigest()


def seal(key: bytes, fmt: str, name: str, payload: bytes) -> bytes:
    """``<format> <version>\\nhmac-sha256 <hex>\\n<payload>``; ``name`` is the key below ``v1/catalog/``."""
    return f"{fmt} {VERSION}\nhmac-sha256 {_mac(key, name, payload)}\n".encode() + payload


def unseal(key: bytes, fmt: str, name: str, data: bytes) -> bytes:
    """The payload of a sealed object, authenticated before anything in it is parsed."""
    head, _, rest = data.partition(b"\n")
    mac_line, _, payload = rest.partition(b"\n")
    if head != f"{fmt} {VERSION}".encode():
        if head.startswith(fmt.encode() + b" "):
            raise UnsupportedVersion(f"catalog object {name} has an unknown version", hint="upgrade seedvault")
        raise Untrusted(f"catalog object {name} is not a {fmt}")
    expected = b"hmac-sha256 " + _mac(key, name, payload).encode()
    if not hmac.compare_digest(mac_line, expected):
        raise Untrusted(f"catalog object {name} fails authentication")
    return payload


def _json(payload: bytes, name: str) -> dict:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):
        raise Untrusted(f"catalog object {name} is not JSON") from None
    if not isinstance(value, dict):
        raise Untrusted(f"catalog object {name} is not a JSON object")
    return value


def _check_body(body: Any, backup_id: str, name: str) -> dict:
    if not isinstance(body, dict) or body.get("id") != backup_id or not isinstance(body.get("labels"), dict):
        raise Untrusted(f"catalog object {name} holds no manifest body of backup {backup_id}")
    return body


def _entry_name(backup_id: str) -> str:
    return f"entries/{_stamp()}-{backup_id}.json"


def _key(name: str) -> str:
    return layout.CATALOG + name


# --- the index as listed -----------------------------------------------------------------------------
@dataclass
class _Listing:
    segments: dict[int, list[str]] = field(default_factory=dict)  # generation -> names
    adds: dict[str, str] = field(default_factory=dict)  # name -> backup id
    forgets: list[str] = field(default_factory=list)

    @property
    def top(self) -> tuple[int, list[str]]:
        gen = max(self.segments, default=0)
        return gen, sorted(self.segments.get(gen, []))

    @property
    def loose(self) -> int:
        return len(self.adds) + len(self.forgets)


def _list_index(repo: Repository) -> _Listing:
    out = _Listing()
    for info in repo.storage.list(layout.CATALOG):
        name = info.key[len(layout.CATALOG) :]
        folder, _, base = name.partition("/")
        if folder == "entries" and (m := _ADD_RE.fullmatch(base)):
            out.adds[name] = m.group(1)
        elif folder == "entries" and _FORGET_RE.fullmatch(base):
            out.forgets.append(name)
        elif folder == "segments" and (m := _SEGMENT_RE.fullmatch(base)):
            out.segments.setdefault(int(m.group(1)), []).append(name)
    return out


def _read_add(repo: Repository, key: bytes, name: str, backup_id: str) -> dict:
    record = _json(unseal(key, ENTRY_FORMAT, name, repo.storage.get_bytes(_key(name))), name)
    if record.get("type") != "add" or record.get("backup_id") != backup_id:
        raise Untrusted(f"catalog entry {name} names another backup than its object name")
    return _check_body(record.get("manifest"), backup_id, name)


def _read_forget(repo: Repository, key: bytes, name: str) -> list[str]:
    record = _json(unseal(key, ENTRY_FORMAT, name, repo.storage.get_bytes(_key(name))), name)
    ids = record.get("backup_ids")
    if record.get("type") != "forget" or not isinstance(ids, list) or not all(layout.is_backup_id(i) for i in ids):
        raise Untrusted(f"catalog tombstone {name} is malformed")
    return list(ids)


@dataclass
class _Generation:
    gen: int
    names: list[str]
    backups: dict[str, dict]
    absorbed: set[str]
    forgotten: set[str]


def _read_segments(repo: Repository, key: bytes, gen: int, names: list[str]) -> _Generation:
    """The union of one generation's segments (two compactors may write one each), minus what either dropped."""
    out = _Generation(gen, names, {}, set(), set())
    for name in names:
        payload = unseal(key, SEGMENT_FORMAT, name, repo.storage.get_bytes(_key(name)))
        try:
            seg = _json(zstandard.ZstdDecompressor().decompress(payload, max_output_size=1 << 31), name)
        except zstandard.ZstdError:
            raise Untrusted(f"catalog segment {name} does not decompress") from None
        backups, absorbed, forgotten = seg.get("backups"), seg.get("absorbed"), seg.get("forgotten")
        if seg.get("gen") != gen or not isinstance(backups, dict) or not isinstance(absorbed, list):
            raise Untrusted(f"catalog segment {name} is malformed")
        if not isinstance(forgotten, list):
            raise Untrusted(f"catalog segment {name} is malformed")
        for bid, body in backups.items():
            if not layout.is_backup_id(bid):
                raise Untrusted(f"catalog segment {name} names {bid!r}, not a backup id")
            out.backups[bid] = _check_body(body, bid, name)
        out.absorbed.update(str(a) for a in absorbed)
        out.forgotten.update(str(f) for f in forgotten)
    for bid in out.forgotten:
        out.backups.pop(bid, None)
    return out


# --- writing ------------------------------------------------------------------------------------------
def _catalog_key(repo: Repository, *, create: bool) -> bytes:
    return repokey.subkey(repo, "catalog", create=create)


def record(repo: Repository, body: dict) -> bool:
    """Append the committed backup's entry (a writer calls this right after its manifest); best effort.

    The backup is committed whatever happens here: a missing entry is found again by readers (see the module
    docstring), so a failure is a warning, never an error. Returns whether the entry was stored.
    """
    faults.reached("catalog-entry")
    try:
        record_entry(repo, body)
    except SeedvaultError as exc:
        _warn(f"backup {body['id']} is committed but not indexed ({exc.one_line()}); readers still find it")
        return False
    faults.reached("catalog-entry-written")
    try:
        listing = _list_index(repo)
        if listing.loose >= COMPACT_AT:
            compact(repo, listing=listing)
    except SeedvaultError as exc:  # e.g. a generation that does not authenticate: 'catalog rebuild' replaces it
        _warn(f"the catalog was not compacted ({exc.one_line()}); run 'seedvault catalog rebuild' if this repeats")
    return True


def forget(repo: Repository, backup_ids: Iterable[str]) -> None:
    """Write a tombstone naming ``backup_ids``; call it BEFORE their manifests are deleted.

    From then on readers treat them as gone (a delete that stops half-way leaves nothing listed that is half
    gone). Raises when the tombstone cannot be written: the caller decides whether to delete anyway.
    """
    ids = sorted(set(backup_ids))
    if not ids:
        return
    key = _catalog_key(repo, create=True)
    name = f"entries/{_stamp()}-forget-{secrets.token_hex(4)}.json"
    payload = mf.canonical({"type": "forget", "backup_ids": ids, "written": _stamp()})
    repo.storage.put_bytes(_key(name), seal(key, ENTRY_FORMAT, name, payload))


def _write_segment(
    repo: Repository, key: bytes, gen: int, backups: dict[str, dict], absorbed: Iterable[str], forgotten: Iterable[str]
) -> str:
    name = f"segments/{gen:010d}-{secrets.token_hex(4)}.seg"
    body = {
        "format": SEGMENT_FORMAT,
        "gen": gen,
        "created": _stamp(),
        "backups": backups,
        "absorbed": sorted(absorbed),
        "forgotten": sorted(forgotten),
    }
    payload = zstandard.ZstdCompressor(level=9).compress(mf.canonical(body))
    repo.storage.put_bytes(_key(name), seal(key, SEGMENT_FORMAT, name, payload))
    return name


def compact(
    repo: Repository,
    *,
    listing: _Listing | None = None,
    extra: dict[str, dict] | None = None,
    drop: Iterable[str] = (),
    replace: dict[str, dict] | None = None,
) -> str | None:
    """Fold the newest generation and every loose entry into the next generation; delete what was folded.

    ``extra``: bodies of backups found without an entry (a reader's repair); ``drop``: ids whose manifests are
    gone; ``replace``: the whole set (``rebuild``), ignoring what the index says. Returns the new segment's
    name, or None when another compactor removed an entry meanwhile (it did the work).
    """
    key = _catalog_key(repo, create=True)
    listing = listing or _list_index(repo)
    gen, names = listing.top
    if replace is not None:  # rebuild: the manifests say everything, whatever the index held
        new = _write_segment(repo, key, gen + 1, dict(replace), [], set(drop))
        old = [name for group in listing.segments.values() for name in group]
        repo.storage.delete(_key(name) for name in [*listing.adds, *listing.forgets, *old])
        return new
    try:
        current = _read_segments(repo, key, gen, names)
        backups = dict(current.backups)
        forgotten: set[str] = set(drop)
        absorbed: list[str] = []
        for name, bid in sorted(listing.adds.items()):
            if name in current.absorbed:
                absorbed.append(name)
                continue
            try:
                body = _read_add(repo, key, name, bid)
            except Untrusted as exc:  # left for rebuild or a reader to fall back on; never folded in
                _warn(f"{exc.one_line()}: not trusted, left out of the compaction")
                continue
            backups[bid] = body
            absorbed.append(name)
        for name in sorted(listing.forgets):
            try:
                forgotten.update(_read_forget(repo, key, name))
            except Untrusted as exc:
                _warn(f"{exc.one_line()}: not trusted, left out of the compaction")
                continue
            absorbed.append(name)
    except ObjectNotFound:
        return None  # folded by another compactor between our listing and our read
    forgotten -= set(extra or {})  # found again with their manifests: a delete that never happened
    for bid in forgotten:
        backups.pop(bid, None)
    backups.update(extra or {})
    new = _write_segment(repo, key, gen + 1, backups, absorbed, forgotten)
    old = [name for g, group in listing.segments.items() if g <= gen for name in group]
    repo.storage.delete(_key(name) for name in absorbed + old)
    return new


def rebuild(repo: Repository) -> RebuildReport:
    """Re-derive the index from the manifests (each read and authenticated): the repair when it looks wrong."""
    report = RebuildReport()
    listing = _list_index(repo)
    backups: dict[str, dict] = {}
    for entry in repo.entries():
        if entry.body is None:
            report.unreadable.append(f"{entry.backup_id}: {entry.problem}")
            continue
        backups[entry.backup_id] = entry.body
    report.indexed = len(backups)
    report.segment = compact(repo, listing=listing, replace=backups)
    report.removed = listing.loose + sum(len(g) for g in listing.segments.values())
    return report


@dataclass
class RebuildReport:
    indexed: int = 0
    unreadable: list[str] = field(default_factory=list)
    segment: str | None = None
    removed: int = 0

    def as_dict(self) -> dict:
        return self.__dict__.copy()


# --- the local cache ---------------------------------------------------------------------------------
def cache_root(override: str | None = None) -> Path | None:
    """Where caches live (None: disabled with ``off``)."""
    value = override or os.environ.get(CACHE_ENV)
    if value:
        return None if value.strip().lower() == "off" else Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "seedvault" / "catalog"


class _Cache:
    """Authenticated bodies by backup id and the reader's state, in a 0700 directory of 0600 files.

    Anything that goes wrong here (read-only home, full disk) turns the cache off with one warning: the
    catalog then reads the index every time, which is slower, never wrong.
    """

    def __init__(self, root: Path | None, repository_id: str) -> None:
        self.dir: Path | None = None
        if root is None or not re.fullmatch(r"[A-Za-z0-9-]{1,64}", repository_id):
            return
        target = root / repository_id
        try:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            (target / "bodies").mkdir(mode=0o700, exist_ok=True)
            os.chmod(target, 0o700)
            probe = target / ".probe"
            probe.touch(mode=0o600)
            probe.unlink()
        except OSError as exc:
            _warn(f"catalog cache {target} cannot be used ({exc.strerror or type(exc).__name__}); working without it")
            return
        self.dir = target

    def _write(self, path: Path, data: bytes) -> None:
        if self.dir is None:
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.chmod(tmp, 0o600)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            _warn(f"catalog cache {self.dir} cannot be written ({reason}); working without it")
            self.dir = None

    def body(self, backup_id: str) -> dict | None:
        if self.dir is None:
            return None
        try:
            body = json.loads((self.dir / "bodies" / f"{backup_id}.json").read_bytes())
        except (OSError, ValueError):
            return None
        return body if isinstance(body, dict) and body.get("id") == backup_id else None

    def put_body(self, backup_id: str, body: dict) -> None:
        if self.dir is not None and not (self.dir / "bodies" / f"{backup_id}.json").exists():
            self._write(self.dir / "bodies" / f"{backup_id}.json", mf.canonical(body))

    def secret_object(self, key_id: str) -> bytes | None:
        if self.dir is None or not layout.KEY_ID_RE.fullmatch(key_id):
            return None
        try:
            return (self.dir / f"repokey-{key_id}.json").read_bytes()
        except OSError:
            return None

    def put_secret_object(self, key_id: str, data: bytes) -> None:
        if self.dir is not None and layout.KEY_ID_RE.fullmatch(key_id):
            self._write(self.dir / f"repokey-{key_id}.json", data)

    def state(self) -> dict | None:
        if self.dir is None:
            return None
        try:
            state = json.loads((self.dir / "state.json").read_bytes())
        except (OSError, ValueError):
            return None
        return state if isinstance(state, dict) and state.get("version") == STATE_VERSION else None

    def save(self, state: dict) -> None:
        if self.dir is not None:
            self._write(self.dir / "state.json", json.dumps(state, sort_keys=True).encode())


# --- reading --------------------------------------------------------------------------------------------
@dataclass
class ReadStats:
    """What the last read did (``catalog status``, tests)."""

    cold: bool = True
    fallback: str = ""  # why the manifests were read instead ("" when the index was used)
    indexed: int = 0
    loose: int = 0
    generation: int = 0
    segments: int = 0
    from_manifests: list[str] = field(default_factory=list)  # found without an index entry
    in_flight: list[str] = field(default_factory=list)  # key objects, no manifest (yet)
    untrusted: list[str] = field(default_factory=list)
    repaired: bool = False
    compacted: str | None = None

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Holders:
    """What keeps a backup from being deleted: DIFF children and the live leases naming it."""

    children: list[str]
    leases: list[str]

    @property
    def held(self) -> bool:
        return bool(self.children or self.leases)


class Catalog:
    """Every query over backups. One instance reads the index once; make a new one to see later changes."""

    def __init__(
        self,
        repo: Repository,
        *,
        authenticate: bool = True,
        cache: str | Path | None = None,
        repair: bool = True,
        full: bool = False,
    ) -> None:
        self.repo = repo
        # A deleter (prune) wants the exact set: every key object listed, as a cold read does, so that a backup
        # a killed delete forgot but did not remove is seen again (see _Reader.run).
        self.full = full
        self.authenticate = authenticate
        self.repair = repair  # index what is found missing, compact when writers did not (needs the key)
        self._cache_override = str(cache) if cache is not None else getattr(repo, "catalog_cache", None)
        self._entries: list[BackupEntry] | None = None
        self._cache: _Cache | None = None
        self.stats = ReadStats()

    # --- queries ----------------------------------------------------------------------------------------
    def entries(self) -> list[BackupEntry]:
        """Every complete backup, oldest first: authenticated body, or why it cannot be read."""
        if self._entries is None:
            self._entries = self._read()
        return self._entries

    def bodies(self, match: Callable[[dict], bool] | None = None) -> list[tuple[str, dict]]:
        return [(e.backup_id, e.body) for e in self.entries() if e.body is not None and (not match or match(e.body))]

    def latest(self, match: Callable[[dict], bool] | None = None) -> tuple[BackupEntry | None, list[BackupEntry]]:
        """The newest readable backup whose body ``match``es, and the unreadable newer ones skipped.

        Same semantics as :meth:`Repository.newest`. The chosen backup's manifest is confirmed with one HEAD
        (deleted without a tombstone: the next one is taken).
        """
        skipped: list[BackupEntry] = []
        for entry in reversed(self.entries()):
            if entry.body is None:
                skipped.append(entry)
            elif match is None or match(entry.body):
                if not entry.verified or self.stats.fallback:  # read from the manifests just now (or no key)
                    return entry, skipped
                try:  # the answer is read from its manifest and key object, as without the catalog
                    body = self.repo.manifest(entry.backup_id)
                except BackupNotFound:  # deleted without a tombstone (by hand, or by an older seedvault)
                    self._note_gone(entry.backup_id)
                    continue
                except SeedvaultError as exc:  # damaged after its commit: skipped and named, as newest() does
                    skipped.append(BackupEntry(entry.backup_id, None, problem=exc.one_line()))
                    continue
                return BackupEntry(entry.backup_id, body, verified=True), skipped
        return None, skipped

    def latest_per(self, key: Callable[[dict], Any]) -> tuple[dict[Any, BackupEntry], list[BackupEntry]]:
        """The newest readable backup per ``key(body)`` (e.g. kind and name label); also every unreadable one."""
        newest: dict[Any, BackupEntry] = {}
        unreadable = []
        for entry in self.entries():
            if entry.body is None:
                unreadable.append(entry)
            else:
                newest[key(entry.body)] = entry
        return newest, unreadable

    def body(self, backup_id: str) -> dict:
        """One backup's manifest body, read and authenticated (``show``: damage must show), then cached."""
        cache = self._open_cache()
        body = self.repo.manifest(backup_id)
        if cache:
            cache.put_body(backup_id, body)
        return body

    def children(self, backup_id: str) -> list[str]:
        """Backups whose ``parent`` is ``backup_id`` (Neo4j DIFFs), oldest first."""
        return [e.backup_id for e in self.entries() if (e.body or {}).get("parent") == backup_id]

    def chain(self, backup_id: str) -> list[tuple[str, dict]]:
        """``backup_id`` and its parents, FULL first; BackupNotFound when a parent is missing (each one HEADed)."""
        known = {e.backup_id: e.body for e in self.entries() if e.body is not None}
        if backup_id not in known:
            raise BackupNotFound(f"backup {backup_id} not found (or not readable) in {self.repo.storage.url}")
        chain = [(backup_id, known[backup_id])]
        while chain[-1][1].get("parent"):
            parent = chain[-1][1]["parent"]
            if parent not in known or any(parent == b for b, _ in chain):
                raise BackupNotFound(f"backup {chain[-1][0]} extends {parent}, which is missing: the chain is broken")
            chain.append((parent, known[parent]))
        for (bid, _), child in zip(chain[1:], chain, strict=False):  # one HEAD each: a restore needs them all
            if not self._confirm(bid):
                raise BackupNotFound(f"backup {child[0]} extends {bid}, which is missing: the chain is broken")
        return list(reversed(chain))

    def holders(self, backup_id: str, *, stale_after: timedelta | None = None) -> Holders:
        """What holds ``backup_id``: its children and the live leases naming it."""
        from seedvault import leases

        held = leases.read_leases(self.repo, stale_after=stale_after)
        return Holders(
            children=self.children(backup_id),
            leases=[lease.describe() for lease in held.live if backup_id in lease.backup_ids],
        )

    def physical_backups(self, system_id: str | None, kind: str = "postgres-physical") -> list[tuple[str, dict]]:
        """Base backups (of ``system_id``, if given), oldest first: what a recovery plan chooses from."""
        return self.bodies(
            lambda b: b.get("kind") == kind and (not system_id or b["source"].get("system_id") == system_id)
        )

    def bases_before(self, system_id: str, stop_before: datetime) -> list[tuple[str, dict]]:
        """Base backups of ``system_id`` that finished (stop_time) before ``stop_before``: PITR candidates."""
        out = []
        for bid, body in self.physical_backups(system_id):
            stop = body["source"].get("stop_time")
            if stop and datetime.fromisoformat(str(stop).replace("Z", "+00:00")) < stop_before:
                out.append((bid, body))
        return out

    # --- reading ------------------------------------------------------------------------------------------
    def _confirm(self, backup_id: str) -> bool:
        return self.repo.storage.exists(layout.manifest_key(backup_id))

    def _note_gone(self, backup_id: str) -> None:
        """Remember a backup whose manifest is gone (deleted without a tombstone): ids are never reused."""
        cache = self._open_cache()
        state = cache.state() if cache else None
        if cache and state:
            state["gone"] = sorted({*state.get("gone", []), backup_id})
            cache.save(state)

    def _open_cache(self) -> _Cache | None:
        if self._cache is None:
            root = cache_root(self._cache_override)
            self._cache = _Cache(root, str(self.repo.config()["id"]))
        return self._cache if self._cache.dir is not None else None

    def _fallback(self, why: str) -> list[BackupEntry]:
        self.stats.fallback = why
        return list(self.repo.entries(authenticate=self.authenticate))

    def _read(self) -> list[BackupEntry]:
        repo = self.repo
        if not self.authenticate or repo.key_source is None:
            return self._fallback("no key: manifests listed without the index")
        repo.config()
        repo.master  # noqa: B018 - resolved (or refused) once, before anything is listed, as entries() does
        listing = _list_index(repo)
        cache = self._open_cache()
        key: bytes | None = None
        try:
            _load_secret(repo, cache)
            key = _catalog_key(repo, create=False)
        except KeyMissing:
            if listing.loose or listing.segments:
                _warn("the catalog exists but the repository secret does not; reading the manifests")
        except (WrongKey, AuthenticationFailed, UnsupportedVersion, FormatError) as exc:
            _warn(f"the catalog cannot be used ({exc.one_line()}); reading the manifests")
            return self._fallback(exc.one_line())
        state = (cache.state() if cache else None) or {}
        if key is None:
            state = {}
        self.stats.cold = not state
        return _Reader(self, repo, key, cache, state, listing).run()


class _Reader:
    """One read of the index (see the module docstring and FORMAT.md "Catalog": the reader's algorithm)."""

    def __init__(
        self, owner: Catalog, repo: Repository, key: bytes | None, cache: _Cache | None, state: dict, listing: _Listing
    ) -> None:
        self.owner, self.repo, self.key, self.cache, self.listing = owner, repo, key, cache, listing
        self.stats = owner.stats
        self.state = state
        self.bodies: dict[str, dict] = {}
        self.problems: dict[str, str] = dict(state.get("problems", {}))
        self.full_listing = not state or owner.full
        self.recheck: set[str] = set()  # ids whose index entry is untrusted: their manifests decide
        self.ghosts: set[str] = set()  # indexed, but the manifest is gone (deleted without a tombstone)

    def _untrusted(self, exc: SeedvaultError) -> None:
        self.stats.untrusted.append(exc.one_line())
        _warn(f"{exc.one_line()}: not trusted; reading the manifests instead (run 'seedvault catalog rebuild')")

    def _index_view(self) -> tuple[set[str], dict[str, dict], set[str]]:
        """The ids the index holds, the loose entries' effects, the ids forgotten, as of this listing."""
        gen, names = self.listing.top
        self.stats.generation, self.stats.segments = gen, len(names)
        snapshot: set[str] = set()
        absorbed: set[str] = set()
        if self.state and self.state.get("gen") == gen and self.state.get("segments") == names:
            snapshot = set(self.state.get("snapshot", []))
            absorbed = set(self.state.get("absorbed", []))
        elif names and self.key is not None:
            try:
                generation = _read_segments(self.repo, self.key, gen, names)
            except Untrusted as exc:
                self._untrusted(exc)
                self.full_listing = True
            else:
                snapshot, absorbed = set(generation.backups), generation.absorbed
                for bid, body in generation.backups.items():
                    self.bodies[bid] = body
        elif names:
            self.full_listing = True
        seen: dict[str, dict] = self.state.get("loose", {})  # names are unique, objects immutable
        loose: dict[str, dict] = {}
        for name, bid in sorted(self.listing.adds.items()):
            if name in absorbed:
                continue
            if name in seen:
                loose[name] = seen[name]
                continue
            try:
                if self.key is None:
                    raise Untrusted(f"catalog entry {name} cannot be authenticated without the repository secret")
                self.bodies[bid] = _read_add(self.repo, self.key, name, bid)
                loose[name] = {"add": bid}
            except Untrusted as exc:
                if self.key is not None:
                    self._untrusted(exc)
                self.recheck.add(bid)
            except ObjectNotFound:  # folded into a generation meanwhile: its id is found below via v1/keys/
                self.full_listing = True
        for name in sorted(self.listing.forgets):
            if name in absorbed:
                continue
            if name in seen:
                loose[name] = seen[name]
                continue
            try:
                if self.key is None:
                    raise Untrusted(f"catalog tombstone {name} cannot be authenticated without the repository secret")
                loose[name] = {"forget": _read_forget(self.repo, self.key, name)}
            except Untrusted as exc:
                if self.key is not None:
                    self._untrusted(exc)  # an untrusted tombstone hides nothing
            except ObjectNotFound:
                continue
        self.stats.loose = len(loose)
        self.snapshot_names = (gen, names, sorted(snapshot), sorted(absorbed))
        forgotten = {bid for effect in loose.values() for bid in effect.get("forget", [])}
        ids = snapshot | {e["add"] for e in loose.values() if "add" in e}
        return ids, loose, forgotten

    def run(self) -> list[BackupEntry]:
        repo = self.repo
        ids, loose, forgotten = self._index_view()
        gone = set(self.state.get("gone", [])) | forgotten
        found = {b for b in self.state.get("found", []) if b not in gone}
        live = (ids | found) - gone
        # Which backups exist: every one stored its key object first (the writer's order).
        if self.full_listing:
            infos = repo.storage.list(layout.KEYS)
        else:
            infos = repo.storage.list(layout.KEYS, start_after=layout.KEYS + str(self.state.get("horizon", "")))
        keyed = {bid for info in infos if (bid := layout.backup_id_of(info.key))}
        if self.full_listing:  # exact: an indexed backup without any key object was deleted (or is unreadable)
            for bid in sorted(live - keyed):
                if not self.owner._confirm(bid):
                    gone.add(bid)
                    self.ghosts.add(bid)
            live -= gone
            self.problems = {b: p for b, p in self.problems.items() if b in keyed}
        # Forgotten (a tombstone) but still keyed: a delete that was killed before it removed the manifest, or one
        # still running. Its manifest decides: present, the backup exists (and is indexed again); absent, gone.
        back = (gone & keyed) if self.full_listing else set()
        in_flight: list[str] = []
        new_found: dict[str, dict] = {}
        for bid in sorted((keyed | self.recheck) - live - (gone - back)):
            if bid in self.problems and not self.full_listing:
                continue
            try:
                data = repo.storage.get_bytes(layout.manifest_key(bid))
            except ObjectNotFound:
                if bid not in back:  # a forgotten one without its manifest is simply gone
                    in_flight.append(bid)
                continue
            try:
                mf.parse(data, bid)
                body = mf.open_(data, repo.data_key(bid), bid)
            except BackupNotFound:
                in_flight.append(bid)
                continue
            except SeedvaultError as exc:
                self.problems[bid] = exc.one_line()
                continue
            self.problems.pop(bid, None)
            new_found[bid] = body
            self.bodies[bid] = body
            gone.discard(bid)
        live |= set(new_found)
        self.stats.from_manifests = sorted(new_found)
        self.stats.in_flight = in_flight
        self.stats.indexed = len(ids - gone)
        entries = self._entries(live)
        found = (found | set(new_found)) - ids
        self._maintain(new_found, self.ghosts)
        self._save(loose, gone & (ids | found), found, in_flight)  # what the index still names
        return entries

    def _entries(self, live: set[str]) -> list[BackupEntry]:
        out: list[BackupEntry] = []
        for bid in sorted(live | set(self.problems)):
            if bid in self.problems and bid not in live:
                out.append(BackupEntry(bid, None, problem=self.problems[bid]))
                continue
            body = self.bodies.get(bid) or (self.cache.body(bid) if self.cache else None)
            if body is None:  # not cached (cache cleared or off): the manifest is the truth
                try:
                    body = self.repo.manifest(bid)
                except BackupNotFound:
                    continue
                except SeedvaultError as exc:
                    out.append(BackupEntry(bid, None, problem=exc.one_line()))
                    continue
            self.bodies[bid] = body
            out.append(BackupEntry(bid, body, verified=True))
        return out

    def _maintain(self, found: dict[str, dict], ghosts: set[str]) -> None:
        """Repair what this read noticed (entries missing, ghosts) and compact when writers did not."""
        if not self.owner.repair or (self.key is None and not found):
            return
        if self.stats.untrusted:
            return  # never build on a tampered index: 'catalog rebuild' re-derives it from the manifests
        try:
            if found and len(found) + self.listing.loose < COMPACT_AT:
                for _bid, body in sorted(found.items()):
                    record_entry(self.repo, body)
            elif found or ghosts or self.listing.loose >= READER_COMPACT_AT:
                self.stats.compacted = compact(self.repo, listing=self.listing, extra=found, drop=ghosts)
            else:
                return
            self.stats.repaired = bool(found or ghosts)
        except SeedvaultError as exc:
            _warn(f"the catalog could not be repaired ({exc.one_line()}); 'seedvault catalog rebuild' does it")

    def _save(self, loose: dict[str, dict], gone: set[str], found: set[str], in_flight: list[str]) -> None:
        if self.cache is None:
            return
        for bid, body in self.bodies.items():
            self.cache.put_body(bid, body)
        gen, names, snapshot, absorbed = self.snapshot_names
        settled = (datetime.now(UTC) - SETTLE).strftime("%Y%m%dT%H%M%SZ")
        horizon = min([settled] + [bid[:16] for bid in in_flight])
        if self.stats.compacted or self.stats.untrusted:
            state: dict = {}  # the index changed under us (or cannot be trusted): next read starts cold
        else:
            state = {
                "version": STATE_VERSION,
                "url": self.repo.storage.url,
                "gen": gen,
                "segments": names,
                "snapshot": snapshot,
                "absorbed": absorbed,
                "loose": {n: e for n, e in loose.items() if "add" in e or "forget" in e},
                "gone": sorted(gone),
                "found": sorted(found),
                "problems": self.problems,
                "horizon": horizon,
                "updated": _stamp(),
            }
        self.cache.save(state)


def _load_secret(repo: Repository, cache: _Cache | None) -> None:
    """Put the repository secret on ``repo`` (seedvault.repokey's cache), from the local cache when it can.

    The cache keeps the secret's *wrapped* object (not secret: it is stored in the repository as is) and
    unwraps it here with the master key, bound to this repository's id: a warm read spends no request on it.
    The secret never changes for a repository; a retired key's copy still opens to the same secret.
    """
    if getattr(repo, "_repository_secret", None) is not None:
        return
    master = repo.master
    cached = cache.secret_object(master.key_id) if cache else None
    data = cached
    if data is None:
        try:
            data = repo.storage.get_bytes(repokey.secret_path(master.key_id))
        except ObjectNotFound:
            repokey.secret(repo)  # raises what is wrong (WrongKey, KeyMissing) or finds one after all
            return
    fail = corrupted("repository secret object", AuthenticationFailed)
    record = Fields(load_json(data, fail), fail)
    if record.raw("format", optional=True) != repokey.FORMAT or record.raw("version", optional=True) != 1:
        raise UnsupportedVersion(
            "the repository secret object has an unknown format or version", hint="upgrade seedvault"
        )
    repo._repository_secret = master.unwrap(record.data, repokey.scope(repo))  # type: ignore[attr-defined]
    if cache and cached is None:
        cache.put_secret_object(master.key_id, data)


def record_entry(repo: Repository, body: dict) -> None:
    """Store one entry for a backup found without one (no compaction check: the caller decides)."""
    key = _catalog_key(repo, create=True)
    name = _entry_name(body["id"])
    payload = mf.canonical({"type": "add", "backup_id": body["id"], "manifest": body, "written": _stamp()})
    with contextlib.suppress(ObjectExists):
        repo.storage.put_bytes(_key(name), seal(key, ENTRY_FORMAT, name, payload))


def status(repo: Repository) -> dict:
    """Counts for ``seedvault catalog status``: one cold read plus a LIST of the manifests (the truth)."""
    listing = _list_index(repo)
    catalog = Catalog(repo, cache="off", repair=False)
    entries = catalog.entries()
    manifests = set(repo.backup_ids())
    listed = {e.backup_id for e in entries}
    return {
        "generation": listing.top[0],
        "segments": sum(len(g) for g in listing.segments.values()),
        "loose_entries": len(listing.adds),
        "tombstones": len(listing.forgets),
        "indexed": catalog.stats.indexed,
        "manifests": len(manifests),
        "missing_from_index": catalog.stats.from_manifests,
        "listed_without_manifest": sorted(listed - manifests),
        "untrusted": catalog.stats.untrusted,
        "in_flight": catalog.stats.in_flight,
        "fallback": catalog.stats.fallback,
    }
