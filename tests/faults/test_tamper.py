"""Tampering with stored bytes is always detected by verify and get, with one clear line and no bad output."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest

from seedvault.errors import AuthenticationFailed, ChecksumMismatch, TruncatedStream, UnsupportedVersion, WrongKey
from seedvault.format import layout
from tests.cli_runner import invoke
from tests.fixtures.repo import new_key_file
from tests.helpers import mixed_stream

HEADER = 28


def _put(local_repo, data: bytes, chunk_size: int = 16384) -> str:
    env = dict(local_repo.env, SEEDVAULT_CHUNK_SIZE=str(chunk_size))
    res = invoke(["put", "--label", "tamper"], env, input=data)
    assert res.exit_code == 0, res.stderr
    return res.stdout.decode().strip()


def _object_path(local_repo, backup_id: str) -> Path:
    return local_repo.root / layout.data_key(backup_id, "data")


def _split_chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Parse a data object per FORMAT.md: 28-byte header, then [flags u8][length u32][length bytes]."""
    header, pos, chunks = blob[:HEADER], HEADER, []
    while pos < len(blob):
        _, length = struct.unpack(">BI", blob[pos : pos + 5])
        chunks.append(blob[pos : pos + 5 + length])
        pos += 5 + length
    assert pos == len(blob)
    return header, chunks


def _assert_rejected(local_repo, backup_id: str, original: bytes, tmp_path: Path) -> str:
    res = invoke(["verify", backup_id], local_repo.env)
    assert res.exit_code != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("seedvault: error:"), res.stderr
    out = tmp_path / "restored.bin"
    got = invoke(["get", backup_id, "-o", str(out)], local_repo.env)
    assert got.exit_code != 0
    assert not out.exists(), "a failed get must leave no file behind"
    assert not list(tmp_path.glob(".restored.bin*")), "no temporary file left either"
    piped = invoke(["get", backup_id], local_repo.env)
    assert piped.exit_code != 0
    assert original.startswith(piped.stdout), "get wrote bytes that are not authenticated original data"
    return lines[0]


@pytest.fixture
def data() -> bytes:
    return b"".join(mixed_stream(600_000, block=50_000))


def test_hundred_bit_flips_are_each_detected(local_repo, data, tmp_path):
    backup_id = _put(local_repo, data)
    path = _object_path(local_repo, backup_id)
    pristine = path.read_bytes()
    rng = random.Random(1234)
    offsets = sorted(rng.sample(range(len(pristine)), 100))
    # Make sure header, chunk headers and tags are among the targets, not only ciphertext.
    offsets[:3] = [0, 5, HEADER + 2]
    for off in offsets:
        corrupted = bytearray(pristine)
        corrupted[off] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(corrupted))
        _assert_rejected(local_repo, backup_id, data, tmp_path)
    path.write_bytes(pristine)
    assert invoke(["verify", backup_id], local_repo.env).exit_code == 0


@pytest.mark.parametrize("edit", ["drop", "duplicate", "swap", "drop_final", "cut_mid_chunk", "trailing", "empty"])
def test_chunk_level_edits_are_detected(local_repo, data, tmp_path, edit):
    backup_id = _put(local_repo, data)
    path = _object_path(local_repo, backup_id)
    header, chunks = _split_chunks(path.read_bytes())
    assert len(chunks) > 6
    if edit == "drop":
        chunks = chunks[:3] + chunks[4:]
    elif edit == "duplicate":
        chunks = chunks[:4] + [chunks[3]] + chunks[4:]
    elif edit == "swap":
        chunks[2], chunks[3] = chunks[3], chunks[2]
    elif edit == "drop_final":
        chunks = chunks[:-1]
    blob = header + b"".join(chunks)
    if edit == "cut_mid_chunk":
        blob = blob[: len(blob) - len(chunks[-1]) // 2]
    elif edit == "trailing":
        blob += b"\x00" * 21
    elif edit == "empty":
        blob = b""
    path.write_bytes(blob)
    line = _assert_rejected(local_repo, backup_id, data, tmp_path)
    assert "backup " + backup_id in line or backup_id in line


def test_drop_final_chunk_is_reported_as_truncation(local_repo, data):
    backup_id = _put(local_repo, data)
    path = _object_path(local_repo, backup_id)
    header, chunks = _split_chunks(path.read_bytes())
    path.write_bytes(header + b"".join(chunks[:-1]))
    repo = local_repo.repository()
    with pytest.raises(TruncatedStream):
        b"".join(repo.read_object(backup_id, "data"))


def test_swapping_objects_between_backups_is_detected(local_repo, data, tmp_path):
    a = _put(local_repo, data)
    b = _put(local_repo, data)  # same plaintext: only the per-backup keys differ
    pa, pb = _object_path(local_repo, a), _object_path(local_repo, b)
    blob_a, blob_b = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(blob_b)
    pb.write_bytes(blob_a)
    _assert_rejected(local_repo, a, data, tmp_path)
    _assert_rejected(local_repo, b, data, tmp_path)
    pa.write_bytes(blob_a)
    pb.write_bytes(blob_b)
    # Manifests and key objects cannot be moved between backups either.
    ma, mb = local_repo.root / layout.manifest_key(a), local_repo.root / layout.manifest_key(b)
    man_a, man_b = ma.read_bytes(), mb.read_bytes()
    ma.write_bytes(man_b)
    repo = local_repo.repository()
    with pytest.raises(AuthenticationFailed):
        repo.manifest(a)
    ma.write_bytes(man_a)
    kid = repo.master.key_id
    ka, kb = local_repo.root / layout.key_object(a, kid), local_repo.root / layout.key_object(b, kid)
    key_a = ka.read_bytes()
    ka.write_bytes(kb.read_bytes())
    with pytest.raises(AuthenticationFailed):
        local_repo.repository().data_key(a)
    ka.write_bytes(key_a)
    assert invoke(["verify", "--all"], local_repo.env).exit_code == 0


def test_edited_manifest_is_detected(local_repo, data, tmp_path):
    backup_id = _put(local_repo, data)
    path = local_repo.root / layout.manifest_key(backup_id)
    doc = json.loads(path.read_bytes())
    doc["body"]["labels"]["name"] = "forged"
    path.write_text(json.dumps(doc))
    line = _assert_rejected(local_repo, backup_id, data, tmp_path)
    assert "manifest" in line and "authentication" in line


def test_wrong_key_is_clear_and_writes_nothing(local_repo, data, tmp_path):
    backup_id = _put(local_repo, data)
    other = new_key_file(tmp_path, "other.key")
    env = dict(local_repo.env, SEEDVAULT_KEY_FILE=str(other))
    res = invoke(["get", backup_id], env)
    assert res.exit_code == WrongKey.exit_code
    assert res.stdout == b""
    assert res.stderr.startswith("seedvault: error: wrong key") and res.stderr.count("\n") == 1
    out = tmp_path / "x.bin"
    assert invoke(["get", backup_id, "-o", str(out)], env).exit_code == WrongKey.exit_code
    assert not out.exists()
    assert invoke(["verify", backup_id], env).exit_code != 0


def test_unknown_format_versions_are_named(local_repo, data):
    backup_id = _put(local_repo, data)
    obj = _object_path(local_repo, backup_id)
    pristine = obj.read_bytes()
    obj.write_bytes(pristine[:4] + b"\x02" + pristine[5:])
    res = invoke(["get", backup_id], local_repo.env)
    assert res.exit_code == UnsupportedVersion.exit_code and "format version 2" in res.stderr
    obj.write_bytes(pristine)

    man = local_repo.root / layout.manifest_key(backup_id)
    doc = json.loads(man.read_bytes())
    doc["body"]["version"] = 99
    man.write_text(json.dumps(doc))
    res = invoke(["show", backup_id], local_repo.env)
    assert res.exit_code == UnsupportedVersion.exit_code and "format version 99" in res.stderr

    cfg = local_repo.root / layout.CONFIG
    conf = json.loads(cfg.read_bytes())
    conf["version"] = 7
    cfg.write_text(json.dumps(conf))
    res = invoke(["put", "--label", "x"], local_repo.env, input=b"abc")
    assert res.exit_code == UnsupportedVersion.exit_code and "format version 7" in res.stderr


def test_digest_mismatch_with_valid_chunks_is_detected(local_repo, data):
    """Even a stored object that authenticates must match the manifest's SHA-256 and size."""
    a = _put(local_repo, data)
    repo = local_repo.repository()
    body = repo.manifest(a)
    body["objects"][0]["sha256"] = "0" * 64
    with pytest.raises(ChecksumMismatch):
        b"".join(repo.read_object(a, "data", body=body))
