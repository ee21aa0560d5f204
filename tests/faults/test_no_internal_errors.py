"""No stored bytes make seedvault fail with an internal error: a sweep of malformed JSON of every stored kind.

For the key object, the manifest (as stored, and re-sealed with the right data key so that the body passes
its MAC and only the field checks stand between it and the readers), the repository config, the WAL record
header (re-sealed with the epoch key) and the epoch key object, every value at every level is replaced by
values of every other type (null, booleans, huge and negative numbers, floats, empty and 100 kB strings,
lists, nested objects) or removed, and whole documents are replaced by non-objects, invalid or non-UTF-8
bytes, NaN, 100000 levels of nesting. Each mutation is read the way ``list``, ``list --latest``, ``verify``
and ``wal-fetch`` read it: the only acceptable outcomes are success or an error of the catalogue. A sample of
the mutations also goes through the CLI, checked by ``catalogued.check_cli`` (and this package's conftest).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import io
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from seedvault.crypto.keys import KeySource, hkdf
from seedvault.errors import SeedvaultError
from seedvault.format import layout
from seedvault.format import manifest as mf
from seedvault.ops.verify import verify_all
from seedvault.repository import Repository
from seedvault.sources.postgres.wal import epochs, record
from seedvault.sources.postgres.wal.store import WalStore
from seedvault.storage.local import LocalStorage
from tests.faults.catalogued import CATALOGUED, invoke_checked, problems
from tests.fixtures.repo import LocalRepo
from tests.unit.test_wal_store import SYSID, make_wal_repo, write_seg

GARBAGE: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    2**64,
    10**40,
    1.5,
    float("1e308"),
    "",
    "x",
    "line\nbreak",
    "A" * 100_000,
    [],
    [1, "a", None, [{}]],
    {},
    {"a": {"b": [{"c": None}]}},
]
WHOLE: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("list", b"[]"),
    ("number", b"5"),
    ("string", b'"x"'),
    ("null", b"null"),
    ("true", b"true"),
    ("object", b"{}"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
    ("deep objects", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("nesting past the limit", b"[" * 100 + b"]" * 100),
    ("huge integer", b"1" * 5000),
    ("overflowing float", b"1e999"),
    ("NaN", b"NaN"),
    ("NaN inside", b'{"version": NaN}'),
    ("not UTF-8", b"\xff\xfe\x00{"),
    ("binary", bytes(range(256))),
]


def _paths(value: Any, prefix: tuple = ()) -> Iterator[tuple]:
    """Every position in a JSON document (object keys and list indices), depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value[:2]):
            yield (*prefix, i)
            yield from _paths(item, (*prefix, i))


def _replace(doc: Any, path: tuple, value: Any, *, delete: bool = False) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for step in path[:-1]:
        node = node[step]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


def mutations(doc: Any) -> Iterator[tuple[str, Any]]:
    """(what, mutated document) for every value at every position, replaced or removed."""
    for path in _paths(doc):
        where = ".".join(map(str, path))
        for value in GARBAGE:
            yield f"{where} = {str(value)[:20]!r}", _replace(doc, path, value)
        yield f"{where} removed", _replace(doc, path, None, delete=True)


def _dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _catalogued(exc: BaseException, what: str) -> None:
    assert isinstance(exc, SeedvaultError), f"{what}: {type(exc).__name__}: {exc}"
    assert exc.exit_code in CATALOGUED, f"{what}: exit code {exc.exit_code}"
    assert "\n" not in exc.one_line()


def _read_like_list_and_verify(repo: Repository, what: str) -> None:
    """What list, list --latest, list --no-verify and verify --all do; only catalogued errors may appear."""
    try:
        for authenticate in (True, False):
            entries = list(repo.entries(authenticate=authenticate))
            assert all(e.body is not None or e.problem for e in entries), what
            repo.newest(lambda body: body["labels"].get("name") == "sweep", authenticate=authenticate)
        for result in verify_all(repo):
            assert result.ok or result.problems, what
    except Exception as exc:  # noqa: BLE001 - the point: anything but a catalogued error is a failure
        _catalogued(exc, what)
        raise AssertionError(f"{what}: listing or verifying raised {exc.one_line()} instead of reporting it") from None


# --- the checker itself ---------------------------------------------------------------------------------
def test_the_checker_refuses_internal_errors_and_uncatalogued_codes() -> None:
    assert problems(["list"], 0, "") == []
    assert problems(["get", "x"], 12, "seedvault: error: backup x not found\n") == []
    assert problems(["list"], 2, "Usage: seedvault list [OPTIONS]\nError: No such option: --x\n") == []
    assert problems(["list"], 1, "seedvault: internal error: TypeError: boom\n")
    assert problems(["list"], 99, "seedvault: error: what\n")
    assert problems(["list"], 21, "seedvault: error: one\nseedvault: error: two\n")
    assert problems(["list"], 21, "")
    assert problems(["wal-fetch", "a", "b"], 126, "seedvault wal-fetch: FATAL: a: internal error") != []
    assert {2, 3, 10, 12, 21, 23, 24, 33, 40, 41, 42} <= CATALOGUED and 1 not in CATALOGUED


# --- backups: key objects and manifests --------------------------------------------------------------------
@pytest.fixture
def two(local_repo: LocalRepo) -> tuple[Repository, str, str]:
    repo = local_repo.repository()
    ids = []
    for data in (b"first", b"second"):
        with repo.begin(kind="put", labels={"name": "sweep"}, source={"type": "stream"}) as backup:
            backup.write_object("data", io.BytesIO(data * 1000))
        ids.append(backup.backup_id)
    return repo, ids[0], ids[1]


def _sample(items: list, n: int, seed: int) -> list:
    return random.Random(seed).sample(items, min(n, len(items)))


def test_every_malformed_key_object_is_reported_not_raised(local_repo, two) -> None:
    repo, bad, _ = two
    path = local_repo.root / layout.key_object(bad, repo.master.key_id)
    doc = json.loads(path.read_bytes())
    cases = [(f"key object: {w}", raw) for w, raw in WHOLE] + [
        (f"key object: {w}", _dumps(m)) for w, m in mutations(doc)
    ]
    for what, raw in cases:
        path.write_bytes(raw)
        _read_like_list_and_verify(local_repo.repository(), what)
    for _what, raw in _sample(cases, 12, 1):
        path.write_bytes(raw)
        for args in (["list"], ["list", "--latest"], ["verify", "--all"], ["get", bad]):
            invoke_checked(args, local_repo.env)


def _sealed(body: Any, data_key: bytes, backup_id: str) -> bytes:
    """A stored manifest whose MAC is right for ``body``, whatever ``body`` is."""
    key = hkdf(data_key, b"seedvault/v1/manifest\x00" + backup_id.encode())
    mac = hmac.new(key, mf.canonical(body), hashlib.sha256).hexdigest()
    return mf.canonical({"body": body, "mac": mac})


def test_every_malformed_manifest_is_reported_not_raised(local_repo, two) -> None:
    repo, bad, _ = two
    path = local_repo.root / layout.manifest_key(bad)
    doc = json.loads(path.read_bytes())
    data_key = repo.data_key(bad)
    cases = [(f"manifest: {w}", raw) for w, raw in WHOLE]
    for what, mutated in mutations(doc):
        cases.append((f"manifest: {what}", _dumps(mutated)))
        if isinstance(mutated.get("body"), dict | list):
            cases.append((f"sealed manifest: {what}", _sealed(mutated["body"], data_key, bad)))
    for what, raw in cases:
        path.write_bytes(raw)
        _read_like_list_and_verify(local_repo.repository(), what)
    sealed = [c for c in cases if c[0].startswith("sealed")]
    for _what, raw in _sample(cases, 10, 2) + _sample(sealed, 10, 3):
        path.write_bytes(raw)
        for args in (["list"], ["list", "--latest"], ["verify", "--all"], ["show", bad], ["get", bad]):
            invoke_checked(args, local_repo.env)


def test_labels_of_a_sealed_manifest_that_are_not_strings_are_corruption(local_repo, two) -> None:
    repo, bad, good = two
    path = local_repo.root / layout.manifest_key(bad)
    body = json.loads(path.read_bytes())["body"]
    body["labels"] = {"name": ["sweep"]}
    path.write_bytes(_sealed(body, repo.data_key(bad), bad))
    (entry,) = [e for e in local_repo.repository().entries() if e.backup_id == bad]
    assert entry.body is None and "field 'body.labels.name' is a list" in entry.problem
    assert local_repo.repository().newest()[0].backup_id == good


# --- the repository config -------------------------------------------------------------------------------
def _passphrase_repo(tmp_path: Path) -> tuple[Path, KeySource, dict]:
    root = tmp_path / "prepo"
    pw = tmp_path / "pass"
    pw.write_text("sweep passphrase\n")
    pw.chmod(0o600)
    # the cheapest scrypt parameters allowed (the floor, FORMAT.md section 3): a mutation that still derives is fast
    config = {
        "format": "seedvault-repository",
        "version": 1,
        "id": "0b0f0d2e-6a9b-4c1e-9d8e-0f1e2d3c4b5a",
        "created": "2026-11-25T02:00:00.000000Z",
        "kdf": {"name": "scrypt", "n": 2**15, "r": 8, "p": 1, "salt": "c2VlZHZhdWx0LXNhbHQtMTY="},
    }
    LocalStorage(root).put_bytes(layout.CONFIG, _dumps(config))
    return root, KeySource("passphrase", origin="test passphrase", path=pw), config


def test_every_malformed_repository_config_is_a_format_or_config_error(tmp_path, local_repo) -> None:
    root, source, config = _passphrase_repo(tmp_path)
    path = root / layout.CONFIG
    cases = [(f"config: {w}", raw) for w, raw in WHOLE] + [(f"config: {w}", _dumps(m)) for w, m in mutations(config)]
    derived = 0
    for what, raw in cases:
        path.write_bytes(raw)
        try:
            Repository(LocalStorage(root), source).master  # noqa: B018 - parses the config, derives the key
            derived += 1
        except Exception as exc:  # noqa: BLE001 - anything but a catalogued error is a failure
            _catalogued(exc, what)
    assert derived < 20  # almost every mutation is refused (those left: e.g. another id string)
    env = dict(local_repo.env, SEEDVAULT_REPOSITORY=f"file://{root}")
    env.pop("SEEDVAULT_KEY_FILE")
    env["SEEDVAULT_PASSPHRASE_FILE"] = str(source.path)
    for _what, raw in _sample(cases, 12, 4):
        path.write_bytes(raw)
        for args in (["list"], ["verify", "--all"], ["put", "--label", "x"]):
            invoke_checked(args, env, input=b"data")


def test_kdf_parameters_that_would_exhaust_memory_are_refused(tmp_path) -> None:
    root, source, config = _passphrase_repo(tmp_path)
    for n, r, p in ((2**40, 8, 1), (2**20, 2**20, 1), (1024, 8, 10**6), (1000, 8, 1)):
        config["kdf"].update(n=n, r=r, p=p)
        (root / layout.CONFIG).write_bytes(_dumps(config))
        with pytest.raises(SeedvaultError, match="repository config .* is corrupted") as info:
            Repository(LocalStorage(root), source).master  # noqa: B018
        assert info.value.exit_code == 40


# --- WAL: record headers and epoch key objects -----------------------------------------------------------
@pytest.fixture
def wal(tmp_path: Path) -> tuple[Repository, WalStore, Path, str]:
    repo = make_wal_repo(tmp_path)
    store = WalStore(repo, SYSID)
    seg = write_seg(tmp_path, 1, 7)
    key = store.push(seg).key
    return repo, store, seg, key


def _split_record(blob: bytes) -> tuple[dict, bytes]:
    _, _, _, length = record.PREFIX.unpack(blob[: record.PREFIX.size])
    start = record.PREFIX.size
    return json.loads(blob[start : start + length]), blob[start + length + record.MAC_LEN :]


def _record(header_bytes: bytes, body: bytes, epoch_key: bytes | None, object_key: str) -> bytes | None:
    if len(header_bytes) > 0xFFFF:
        return None  # does not fit the length field at all
    start = record.PREFIX.pack(record.MAGIC, record.VERSION, 0, len(header_bytes)) + header_bytes
    mac = (
        hmac.new(record.header_key(epoch_key, object_key), start, hashlib.sha256).digest() if epoch_key else b"\0" * 32
    )
    return start + mac + body


def _fetch(repo: Repository, seg: Path, tmp_path: Path, what: str) -> None:
    dest = tmp_path / "fetched"
    try:
        WalStore(repo, SYSID).fetch(seg.name, dest)
    except Exception as exc:  # noqa: BLE001 - anything but a catalogued error is a failure
        _catalogued(exc, what)
        assert not dest.exists(), f"{what}: a failed fetch left {dest}"
        return
    assert dest.read_bytes() == seg.read_bytes(), f"{what}: fetched other bytes"
    dest.unlink()


def test_every_malformed_wal_record_header_is_refused_cleanly(wal, tmp_path) -> None:
    repo, store, seg, key = wal
    path = repo.storage.root / key
    header, body = _split_record(path.read_bytes())
    ek = store.epoch_key(header["epoch"])
    cases = [(f"header: {w}", raw, False) for w, raw in WHOLE]
    for what, mutated in mutations(header):
        cases.append((f"header: {what}", _dumps(mutated), False))
        cases.append((f"sealed header: {what}", mf.canonical(mutated), True))
    tried = 0
    for what, raw, sealed in cases:
        blob = _record(raw, body, ek if sealed else None, key)
        if blob is None:
            continue
        path.write_bytes(blob)
        _fetch(repo, seg, tmp_path, what)
        tried += 1
    assert tried > 300


def test_every_malformed_epoch_key_object_is_refused_cleanly(wal, tmp_path) -> None:
    repo, store, seg, key = wal
    header, _ = _split_record((repo.storage.root / key).read_bytes())
    path = repo.storage.root / epochs.epoch_key_path(str(SYSID), header["epoch"], repo.master.key_id)
    doc = json.loads(path.read_bytes())
    for what, raw in [(f"epoch key: {w}", raw) for w, raw in WHOLE] + [
        (f"epoch key: {w}", _dumps(m)) for w, m in mutations(doc)
    ]:
        path.write_bytes(raw)
        _fetch(repo, seg, tmp_path, what)
