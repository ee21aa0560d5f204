"""One archived WAL file = one self-describing, authenticated record (FORMAT.md, "WAL objects").

Layout::

    0    4  magic "SVWL"
    4    1  version 1
    5    1  flags 0
    6    2  H = header length (big-endian, <= MAX_HEADER)
    8    H  header: canonical JSON
    8+H 32  HMAC-SHA256(K_hdr, bytes[0 : 8+H])
    ...     body: one standard SVLT data object (format.chunk) of the zstd-compressed file

With EK the WAL epoch key (random, wrapped per master key like a backup's data key) and OK the record's
storage key: K_hdr = HKDF(EK, "seedvault/v1/wal-header" 0 OK), K_cmp = HKDF(EK, "seedvault/v1/wal-content"
0 OK), and the body's object key is bound to (EK, "wal/<system id>", OK). A record copied to another
name, timeline or cluster therefore fails its header MAC and every chunk tag.

Records written by seedvault 0.1 also carry ``content_mac`` = HMAC-SHA256(K_cmp, plaintext) in the
header; readers still check it when present. New records leave it out: the chunk tags already
authenticate every byte and the end of the body, and computing the MAC cost a second pass over each
16 MB file (~20 ms of a ~90 ms push) only to spare the rare re-push a download for its comparison.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

from seedvault.crypto.keys import hkdf
from seedvault.errors import AuthenticationFailed, FormatError, TruncatedStream, UnsupportedVersion
from seedvault.format.chunk import ChunkSealer, open_chunks, read_up_to
from seedvault.format.fields import Fields, corrupted, load_json
from seedvault.format.manifest import canonical
from seedvault.stream.compress import compressor, decompress

MAGIC = b"SVWL"
VERSION = 1
PREFIX = struct.Struct(">4sBBH")
MAC_LEN = 32
MAX_HEADER = 7000
FORMAT = "seedvault-wal"


def header_key(epoch_key: bytes, object_key: str) -> bytes:
    return hkdf(epoch_key, b"seedvault/v1/wal-header\x00" + object_key.encode())


def content_key(epoch_key: bytes, object_key: str) -> bytes:
    return hkdf(epoch_key, b"seedvault/v1/wal-content\x00" + object_key.encode())


def body_scope(system_id: str) -> str:
    """The 'backup id' the body's object key is bound to (with the record's storage key as name)."""
    return f"wal/{system_id}"


def content_mac(epoch_key: bytes, object_key: str, reader: BinaryIO, piece: int = 1 << 20) -> tuple[str, int]:
    """Keyed MAC of a file's contents, and its size, in one streaming pass."""
    mac = hmac.new(content_key(epoch_key, object_key), digestmod=hashlib.sha256)
    size = 0
    while data := reader.read(piece):
        mac.update(data)
        size += len(data)
    return mac.hexdigest(), size


def seal_header(epoch_key: bytes, object_key: str, header: dict[str, Any]) -> bytes:
    body = canonical(header)
    if len(body) > MAX_HEADER:
        raise FormatError("WAL record header too large")
    start = PREFIX.pack(MAGIC, VERSION, 0, len(body)) + body
    return start + hmac.new(header_key(epoch_key, object_key), start, hashlib.sha256).digest()


def write_record(
    out: Any,
    reader: BinaryIO,
    *,
    epoch_key: bytes,
    object_key: str,
    header: dict[str, Any],
    level: int,
    chunk_size: int,
    piece: int = 4 << 20,
) -> int:
    """Stream header + body into ``out`` (anything with ``write``) in one pass; returns the stored size.

    The header's ``raw_size`` is written first, so the file must not change length while it is read:
    a different count of bytes read raises, and the caller aborts the write.
    """
    head = seal_header(epoch_key, object_key, header)
    out.write(head)
    stored = len(head)
    comp = compressor(header["compression"], level=level)
    sealer = ChunkSealer(
        epoch_key, body_scope(header["system_id"]), object_key, compression=header["compression"], chunk_size=chunk_size
    )
    buf = bytearray(piece)
    view = memoryview(buf)
    size = 0
    while n := reader.readinto(view):  # type: ignore[attr-defined]
        size += n
        for p in sealer.feed(comp.feed(view[:n])):
            out.write(p)
            stored += len(p)
    if size != header["raw_size"]:
        raise FormatError(f"{header['name']} changed size while it was archived ({header['raw_size']} -> {size} bytes)")
    for p in sealer.feed(comp.finish()) + sealer.finish():
        out.write(p)
        stored += len(p)
    return stored


def same_plaintext(body: Iterator[bytes], local: BinaryIO) -> bool:
    """Whether an authenticated record body holds exactly the bytes of ``local`` (read from its start)."""
    for piece in body:
        mine = local.read(len(piece))
        if not hmac.compare_digest(mine, piece):
            for _ in body:  # drain: the body's last chunk must still authenticate
                pass
            return False
    return local.read(1) == b""


def read_header_unverified(reader: BinaryIO, what: str) -> tuple[dict[str, Any], bytes]:
    """Parse the header (not yet authenticated: the epoch key it names is needed first)."""
    start = _exact(reader, PREFIX.size, what)
    magic, version, flags, length = PREFIX.unpack(start)
    if magic != MAGIC:
        raise FormatError(f"{what} is not a seedvault WAL record (bad magic)")
    if version != VERSION:
        raise UnsupportedVersion(
            f"{what} has WAL record version {version}; this seedvault reads version {VERSION}", hint="upgrade seedvault"
        )
    if flags != 0 or length > MAX_HEADER:
        raise FormatError(f"{what} has an invalid WAL record header")
    body = _exact(reader, length, what)
    mac = _exact(reader, MAC_LEN, what)
    fail = corrupted(f"{what}: WAL record header", AuthenticationFailed)
    header = Fields(load_json(body, fail), fail)
    if header.raw("format", optional=True) != FORMAT:
        raise fail(f"its format is not {FORMAT}")
    check_header(header)
    return header.data, start + body + mac


KINDS = ("segment", "partial", "history", "backup")
SYSTEM_ID_RE = re.compile(r"\A[0-9]{1,20}\Z")
HEX64_RE = re.compile(r"\A[0-9a-f]{64}\Z")


def check_header(header: Fields) -> None:
    """Every header field has its FORMAT.md 8.3 type (checked before use; authenticated by the MAC after)."""
    header.int("version")
    header.text("name", max_len=64)
    header.text("kind", choices=KINDS)
    header.text("system_id", pattern=SYSTEM_ID_RE)
    header.int("timeline", hi=0xFFFFFFFF)
    header.int("segno", nullable=True)
    header.int("pg_major", nullable=True, hi=1000)
    header.int("wal_segment_size", nullable=True, hi=1 << 30)
    header.int("raw_size")
    header.text("content_mac", optional=True, pattern=HEX64_RE)
    header.text("epoch", max_len=64)
    header.text("compression", choices=("zstd", "none"))
    header.int("chunk_size")
    header.text("source", max_len=64)
    header.text("archived", max_len=64)
    header.text("tool", max_len=256)


def verify_header(raw: bytes, epoch_key: bytes, object_key: str, what: str) -> None:
    start, mac = raw[:-MAC_LEN], raw[-MAC_LEN:]
    expect = hmac.new(header_key(epoch_key, object_key), start, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expect):
        raise AuthenticationFailed(f"{what}: WAL record header failed authentication (corrupted, altered or moved)")


def open_body(
    reader: BinaryIO, epoch_key: bytes, object_key: str, header: dict[str, Any], what: str
) -> Iterator[bytes]:
    """Authenticated, decompressed plaintext of the record body (the reader is past the header)."""
    chunks = open_chunks(reader, epoch_key, body_scope(header["system_id"]), object_key)
    yield from decompress(header.get("compression", "zstd"), chunks, what)


def _exact(reader: BinaryIO, n: int, what: str) -> bytes:
    data = read_up_to(reader, n)
    if len(data) < n:
        raise TruncatedStream(f"{what} is truncated inside its WAL record header")
    return data
