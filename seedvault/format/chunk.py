"""Data-object framing: a plain header, then independently authenticated AES-256-GCM chunks.

Layout (all integers big-endian; FORMAT.md section "Data objects" is the normative text)::

    header (28 bytes)
      0  4  magic   b"SVLT"
      4  1  version 1
      5  1  compression  0 = none, 1 = zstd (applied before encryption)
      6  2  reserved, 0
      8  4  chunk size   maximum plaintext bytes in one chunk
     12 16  salt         random per object; input to the object key derivation
    chunk (repeated)
      0  1  flags   bit 0 = final chunk; other bits 0
      1  4  length  of ciphertext + 16-byte tag (<= chunk size + 16)
      5  n  ciphertext || tag

Nonce of chunk i = i as 8 bytes || flags || 3 zero bytes; associated data = the 28 header bytes.
So a reordered, dropped or duplicated chunk fails (its index changes its nonce), a stream cut at a chunk
boundary fails (no chunk carrying the final flag), bytes after the final chunk fail, and a header edit
fails every chunk. Each object has its own key (HKDF over the backup's data key, the object salt, the
backup id and the object name), so an object moved to another name or backup does not authenticate.

Readers only ever release plaintext of a chunk that authenticated.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from seedvault.crypto.keys import hkdf
from seedvault.errors import AuthenticationFailed, FormatError, TruncatedStream, UnsupportedVersion

MAGIC = b"SVLT"
VERSION = 1
HEADER = struct.Struct(">4sBBHI16s")
CHUNK_HEAD = struct.Struct(">BI")
TAG = 16
FINAL = 0x01
COMPRESSION_IDS = {"none": 0, "zstd": 1}
COMPRESSION_NAMES = {v: k for k, v in COMPRESSION_IDS.items()}
MIN_CHUNK = 1024
MAX_CHUNK = 16 * 1024 * 1024
DEFAULT_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectHeader:
    compression: str
    chunk_size: int
    salt: bytes

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, VERSION, COMPRESSION_IDS[self.compression], 0, self.chunk_size, self.salt)

    @classmethod
    def unpack(cls, data: bytes, name: str) -> ObjectHeader:
        if len(data) < HEADER.size:
            raise TruncatedStream(f"object {name} is truncated: {len(data)} bytes, shorter than its header")
        magic, version, comp, reserved, chunk_size, salt = HEADER.unpack(data[: HEADER.size])
        if magic != MAGIC:
            raise FormatError(f"object {name} is not a seedvault data object (bad magic)")
        if version != VERSION:
            raise UnsupportedVersion(
                f"object {name} has format version {version}; this seedvault reads version {VERSION}",
                hint="upgrade seedvault",
            )
        if comp not in COMPRESSION_NAMES or reserved != 0 or not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise FormatError(f"object {name} has an invalid header")
        return cls(COMPRESSION_NAMES[comp], chunk_size, salt)


def object_key(data_key: bytes, salt: bytes, backup_id: str, name: str) -> bytes:
    info = b"seedvault/v1/object\x00" + backup_id.encode() + b"\x00" + name.encode()
    return hkdf(data_key, info, salt=salt)


def _nonce(index: int, flags: int) -> bytes:
    return index.to_bytes(8, "big") + bytes((flags, 0, 0, 0))


class ChunkSealer:
    """Turns a plaintext byte stream into header + sealed chunks; call :meth:`finish` exactly once."""

    def __init__(self, data_key: bytes, backup_id: str, name: str, *, compression: str, chunk_size: int) -> None:
        if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise FormatError(f"chunk size must be between {MIN_CHUNK} and {MAX_CHUNK} bytes")
        self.header = ObjectHeader(compression, chunk_size, os.urandom(16))
        self._header_bytes = self.header.pack()
        self._aead = AESGCM(object_key(data_key, self.header.salt, backup_id, name))
        self._chunk = chunk_size
        self._buf = bytearray()
        self._index = 0
        self._started = False

    @property
    def chunks(self) -> int:
        """Chunks sealed so far."""
        return self._index

    def _seal(self, plain: bytes | memoryview, flags: int) -> list[bytes]:
        ct = self._aead.encrypt(_nonce(self._index, flags), plain, self._header_bytes)
        self._index += 1
        return [CHUNK_HEAD.pack(flags, len(ct)), ct]

    def feed(self, data: bytes) -> list[bytes]:
        """Return the stored pieces that are ready; a full chunk is held back until more data or finish.

        Pieces are returned unjoined (5-byte chunk head, then ciphertext) to avoid copying each chunk.
        """
        out: list[bytes] = []
        if not self._started:
            out.append(self._header_bytes)
            self._started = True
        if not data:
            return out
        if not self._buf and len(data) > self._chunk:
            # Fast path: seal straight out of the caller's buffer, no copy into ours.
            view = memoryview(data)
            pos = 0
            while len(data) - pos > self._chunk:
                out += self._seal(view[pos : pos + self._chunk], 0)
                pos += self._chunk
            self._buf += view[pos:]
            return out
        self._buf += data
        # Keep at least one byte buffered: the last chunk must carry the final flag.
        if len(self._buf) > self._chunk:
            view = memoryview(self._buf)
            pos = 0
            while len(self._buf) - pos > self._chunk:
                out += self._seal(view[pos : pos + self._chunk], 0)
                pos += self._chunk
            rest = bytes(view[pos:])
            view.release()
            self._buf = bytearray(rest)
        return out

    def finish(self) -> list[bytes]:
        out = self.feed(b"")
        out += self._seal(bytes(self._buf), FINAL)
        self._buf = bytearray()
        return out


def open_chunks(reader: BinaryIO, data_key: bytes, backup_id: str, name: str) -> Iterator[bytes]:
    """Yield the authenticated plaintext of each chunk of a stored object read from ``reader``.

    Raises :class:`AuthenticationFailed`, :class:`TruncatedStream` or :class:`FormatError` at the first
    defect, before releasing any byte of the chunk concerned.
    """
    header_bytes = read_up_to(reader, HEADER.size)
    header = ObjectHeader.unpack(header_bytes, name)
    aead = AESGCM(object_key(data_key, header.salt, backup_id, name))
    limit = header.chunk_size + TAG
    index = 0
    while True:
        head = read_up_to(reader, CHUNK_HEAD.size)
        if len(head) == 0:
            raise TruncatedStream(f"object {name} of backup {backup_id} is truncated: no final chunk")
        if len(head) < CHUNK_HEAD.size:
            raise TruncatedStream(f"object {name} of backup {backup_id} is truncated inside chunk {index}")
        flags, length = CHUNK_HEAD.unpack(head)
        if flags & ~FINAL or not TAG <= length <= limit:
            raise AuthenticationFailed(f"object {name} of backup {backup_id}: chunk {index} has an invalid header")
        ct = read_up_to(reader, length)
        if len(ct) < length:
            raise TruncatedStream(f"object {name} of backup {backup_id} is truncated inside chunk {index}")
        try:
            plain = aead.decrypt(_nonce(index, flags), ct, header_bytes)
        except InvalidTag:
            raise AuthenticationFailed(
                f"object {name} of backup {backup_id}: chunk {index} failed authentication (corrupted or altered)"
            ) from None
        index += 1
        if flags & FINAL:
            if reader.read(1):
                raise AuthenticationFailed(f"object {name} of backup {backup_id} has data after its final chunk")
            if plain:
                yield plain
            return
        yield plain


def read_up_to(reader: BinaryIO, n: int) -> bytes:
    """Read up to n bytes, looping over short reads; fewer bytes only at end of stream (the one exact-read
    helper of the format: chunks here, WAL record headers in seedvault.sources.postgres.wal.record)."""
    first = reader.read(n)
    if not first or len(first) == n:
        return first or b""
    parts = [first]
    got = len(first)
    while got < n:
        more = reader.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
