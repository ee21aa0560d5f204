"""Reader for the platform's legacy backups: ``gzip -c dump | openssl enc -aes-256-cbc -salt -pbkdf2``.

Years of backups were written by::

    gzip -c dump | openssl enc -aes-256-cbc -salt -pbkdf2 -iter 100000 -pass ... > file.gz.enc
    sha256sum file.gz.enc > file.gz.enc.sha256

This module decrypts and decompresses them as a stream (memory does not grow with the file) and checks the
``sha256sum`` sidecar. It needs only the passphrase; nothing else about a file is configurable except the
PBKDF2 iteration count, which the file does not record.

File format (OpenSSL ``enc`` with ``-salt -pbkdf2``, OpenSSL 1.1.1 and later)
------------------------------------------------------------------------------

======== ============ ===============================================================================
offset   length       content
======== ============ ===============================================================================
0        8            the ASCII magic ``Salted__`` (``53 61 6c 74 65 64 5f 5f``)
8        8            the salt, random per file
16       16 * n, n>=1 the AES-256-CBC ciphertext; its length is always a non-zero multiple of 16
======== ============ ===============================================================================

* Key and IV: ``PBKDF2-HMAC-SHA256(password=passphrase, salt=salt, iterations=iter, dkLen=48)``; the first
  32 bytes are the AES-256 key, the last 16 the CBC IV. ``iter`` is whatever ``-iter`` said (100000 on this
  platform; ``openssl enc -pbkdf2`` without ``-iter`` uses 10000) and is **not** stored in the file: a
  wrong count looks exactly like a wrong passphrase. ``-pbkdf2`` uses SHA-256 unless ``-md`` said otherwise.
* The passphrase is the exact bytes openssl was given. With ``-pass file:PATH`` that is the first line of
  the file *without* its ``\\n`` (a ``\\r`` before it stays part of the passphrase); with ``-pass env:VAR``
  the variable's value; with ``-pass pass:TEXT`` the text.
* Padding: PKCS#7. The last plaintext block ends in ``k`` bytes of value ``k``, ``1 <= k <= 16``; a
  plaintext whose length is a multiple of 16 (including the empty one) gets a whole extra block of 16
  bytes ``0x10``. So the ciphertext of N plaintext bytes is ``16 * (N // 16 + 1)`` bytes long.
* The plaintext is normally a gzip stream (RFC 1952: ``1f 8b 08 FLG ...``, deflate data, CRC-32 and
  length of the member), possibly several members concatenated (``cat a.gz b.gz``), which decompress to
  the concatenation of their contents. Some files were encrypted without gzip; ``gzip=None`` detects
  this from the first plaintext bytes.
* There is **no MAC**. CBC is malleable and unauthenticated: the final padding and the gzip CRC-32 catch
  accidental damage late (at the end of the file or member) and catch deliberate tampering not at all.

The sidecar, and why it is checked before any output
-----------------------------------------------------

``file.gz.enc.sha256`` is ``sha256sum`` output: ``<64 hex digits><space><space or *><file name>\\n``,
the SHA-256 of the *encrypted* file. :func:`decrypt_file` verifies it in a separate, complete pass over
the file *before a single plaintext byte is written*, because the consumers of the output (a restore
piping SQL into ``psql``, a ``pg_restore``) act on bytes as they arrive, and without a MAC the decryption
pass itself can only discover damage at the end: a flipped ciphertext bit garbles one 16-byte block and
flips one bit in the next, which gzip notices only at the member's CRC, and a raw (not gzipped) payload
never. Checking first turns "corrupted, truncated or altered" into an error with nothing written. The
decryption pass hashes the ciphertext again and fails if the file changed between the two passes.

Wrong passphrase detection
--------------------------

There is no key check value in the format; the signals are, earliest first:

1. for a seekable input, the final block is decrypted up front (CBC allows decrypting any block given the
   one before it) and its padding checked: a wrong passphrase fails this with probability ~255/256;
2. when gzip is expected (``gzip=True``) the first plaintext bytes must be a gzip header (``1f 8b 08``,
   reserved flag bits clear): a wrong passphrase fails this with probability 1 - 2**-27, before anything
   is yielded;
3. the padding of the final block when the stream ends.

With ``gzip=None`` (auto) and a wrong passphrase the first bytes are random, so the data is taken for a
raw payload; only the padding can then tell, which misses about one wrong passphrase in 256. Callers that
know the file is gzipped (every file of the pipeline above) should pass ``gzip=True``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from seedvault.errors import (
    ChecksumMismatch,
    ConfigError,
    FormatError,
    SeedvaultError,
    TruncatedStream,
    WrongKey,
)

MAGIC = b"Salted__"
HEADER_LEN = 16
BLOCK = 16
DEFAULT_ITERATIONS = 100_000
CHUNK_SIZE = 1 << 20
SIDECAR_SUFFIX = ".sha256"

_BASE64_MAGIC = b"U2FsdGVkX1"  # base64 of "Salted__": a file written with ``openssl enc -a``
_GZIP_MAGIC = b"\x1f\x8b"
_SIDECAR_LINE = re.compile(r"^\\?([0-9a-fA-F]{64})(?:[ \t]+\*?(.*))?$")

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_ITERATIONS",
    "LegacyResult",
    "MAGIC",
    "decrypt_file",
    "derive_key_iv",
    "is_legacy",
    "iter_decrypt",
    "read_sidecar",
    "verify_sidecar",
]


@dataclass(frozen=True)
class LegacyResult:
    """What :func:`decrypt_file` did.

    ``sha256`` is the hex SHA-256 of the *encrypted* file (the value a ``sha256sum`` sidecar holds),
    ``bytes_out`` the number of plaintext bytes written, ``sidecar`` the sidecar that was verified, if any.
    """

    sha256: str
    bytes_out: int
    sidecar: Path | None = None


def is_legacy(header: bytes) -> bool:
    """Whether the first bytes of an object are an OpenSSL ``enc`` salted header (needs 8 bytes)."""
    return bytes(header[: len(MAGIC)]) == MAGIC


def derive_key_iv(passphrase: bytes, salt: bytes, iterations: int = DEFAULT_ITERATIONS) -> tuple[bytes, bytes]:
    """The AES-256 key and CBC IV ``openssl enc -pbkdf2`` derives from a passphrase and an 8-byte salt."""
    material = hashlib.pbkdf2_hmac("sha256", bytes(passphrase), bytes(salt), iterations, dklen=48)
    return material[:32], material[32:]


# --- sidecar -------------------------------------------------------------------------------------------
def read_sidecar(path: str | os.PathLike[str], name: str | None = None) -> str:
    """The lowercase hex SHA-256 in a ``sha256sum``-format sidecar.

    Accepts ``<hex>  <name>``, the binary marker ``<hex> *<name>``, sha256sum's escaped form (a leading
    backslash) and a bare ``<hex>``. A sidecar listing several files needs ``name`` (a file name, matched
    against the listed names and their base names) to choose one.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise ConfigError(f"sha256 sidecar {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read sha256 sidecar {path}: {exc.strerror or exc}") from None
    entries: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        match = _SIDECAR_LINE.match(line)
        if match is None:
            raise FormatError(f"malformed sha256 sidecar {path}: expected '<sha256 hex>  <file name>'")
        entries.append((match.group(1).lower(), (match.group(2) or "").strip()))
    if not entries:
        raise FormatError(f"sha256 sidecar {path} is empty")
    if len(entries) == 1:
        return entries[0][0]
    if name is not None:
        wanted = Path(name).name
        found = {digest for digest, listed in entries if listed == name or Path(listed).name == wanted}
        if len(found) == 1:
            return found.pop()
    raise FormatError(f"sha256 sidecar {path} lists {len(entries)} files and none is unambiguously {name}")


def _sha256_of(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while piece := stream.read(CHUNK_SIZE):
        digest.update(piece)
    return digest.hexdigest()


def _check_digest(actual: str, expected: str, file_path: Path, sidecar_path: Path) -> None:
    if not hmac.compare_digest(actual, expected):
        raise ChecksumMismatch(
            f"sha256 of legacy file {file_path} does not match its sidecar {sidecar_path}",
            hint="the file is corrupted, truncated or was altered; nothing was decrypted",
        )


def verify_sidecar(file_path: str | os.PathLike[str], sidecar_path: str | os.PathLike[str]) -> str:
    """Hash the (encrypted) file and compare it with the sidecar; return the hex digest.

    Raises :class:`ChecksumMismatch` naming the file when they differ.
    """
    file_path, sidecar_path = Path(file_path), Path(sidecar_path)
    expected = read_sidecar(sidecar_path, file_path.name)
    with _open_input(file_path) as stream:
        actual = _sha256_of(stream)
    _check_digest(actual, expected, file_path, sidecar_path)
    return actual


# --- decryption ----------------------------------------------------------------------------------------
class _BadPadding(Exception):
    """Internal: the final block's PKCS#7 padding is invalid (mapped to a catalogued error by the caller)."""


class _Source:
    """A reader with bytes already taken from it put back in front (``prefix``) and an optional hook that
    sees every byte read from the underlying reader exactly once."""

    def __init__(self, reader: BinaryIO, prefix: bytes, hook: Callable[[bytes], object] | None) -> None:
        self.reader = reader
        self.buf = bytes(prefix)
        self._hook = hook

    def read(self, n: int) -> bytes:
        if self.buf:
            out, self.buf = self.buf[:n], self.buf[n:]
            return out
        data = self.reader.read(n)
        if data and self._hook is not None:
            self._hook(data)
        return bytes(data or b"")

    def read_exact(self, n: int) -> bytes:
        parts: list[bytes] = []
        want = n
        while want > 0:
            piece = self.read(want)
            if not piece:
                break
            parts.append(piece)
            want -= len(piece)
        return b"".join(parts)

    def peek(self, n: int) -> bytes:
        data = self.read_exact(n)
        self.buf = data + self.buf
        return data


def _padding_ok(block: bytes) -> bool:
    pad = block[-1]
    return 1 <= pad <= BLOCK and block[-pad:] == bytes([pad]) * pad


def _looks_gzip(head: bytes) -> bool:
    """A gzip member header: magic ``1f 8b``, method 8 (deflate), reserved flag bits clear."""
    return len(head) >= 4 and head[:2] == _GZIP_MAGIC and head[2] == 8 and head[3] & 0xE0 == 0


def _aes_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def _wrong_key_hint(iterations: int) -> str:
    return f"check the passphrase and the pbkdf2 iteration count ({iterations})"


def _bad_padding_error(name: str, first_plain: bytes, iterations: int, gzip: bool | None) -> SeedvaultError:
    if _looks_gzip(first_plain):
        # The first block decrypted to a gzip header, so the passphrase is right: the end is damaged.
        return TruncatedStream(f"legacy file {name} is truncated or corrupted: bad padding in the final block")
    if gzip:
        # gzip was expected and neither the first block nor the last decrypts sensibly: both signals agree.
        return WrongKey(f"wrong passphrase for legacy file {name}", hint=_wrong_key_hint(iterations))
    return WrongKey(
        f"wrong passphrase or corrupted data for legacy file {name}: bad padding in the final block",
        hint=_wrong_key_hint(iterations),
    )


def _not_a_multiple(name: str, length: int) -> TruncatedStream:
    return TruncatedStream(
        f"legacy file {name} is truncated: {length} bytes of ciphertext is not a multiple of {BLOCK}"
    )


class _Decryptor:
    """AES-256-CBC over a stream, holding back the last block until the end to strip its padding."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self.head = b""  # the first 4 decrypted bytes, before unpadding (to classify a padding failure)

    def run(self, source: _Source, name: str, chunk_size: int) -> Iterator[bytes]:
        held = b""
        length = 0
        while ciphertext := source.read(chunk_size):
            length += len(ciphertext)
            plain = self._cipher.update(ciphertext)
            if not plain:
                continue
            if len(self.head) < 4:
                self.head += plain[: 4 - len(self.head)]
            joined = held + plain
            held = joined[-BLOCK:]
            if len(joined) > BLOCK:
                yield joined[:-BLOCK]
        if length == 0:
            raise TruncatedStream(f"legacy file {name} is truncated: no ciphertext after the salt header")
        try:
            self._cipher.finalize()
        except ValueError:
            raise _not_a_multiple(name, length) from None
        if not _padding_ok(held):
            raise _BadPadding
        pad = held[-1]
        if pad < BLOCK:
            yield held[:-pad]


def _precheck_tail(source: _Source, key: bytes, iv: bytes, name: str, iterations: int, gzip: bool | None) -> None:
    """On a seekable reader, check the length and the final block's padding before anything is yielded."""
    reader = source.reader
    try:
        if not reader.seekable():
            return
        pos = reader.tell()
        end = reader.seek(0, os.SEEK_END)
    except (AttributeError, OSError, ValueError):
        return
    try:
        length = len(source.buf) + (end - pos)
        if length <= 0:
            raise TruncatedStream(f"legacy file {name} is truncated: no ciphertext after the salt header")
        if length % BLOCK:
            raise _not_a_multiple(name, length)
        need = min(2 * BLOCK, length)
        from_reader = min(need, end - pos)
        from_buf = need - from_reader
        reader.seek(end - from_reader)
        tail = source.buf[len(source.buf) - from_buf :] + _read_all(reader, from_reader)
    finally:
        reader.seek(pos)
    if len(tail) != need:
        return  # the file changed under us; the sequential pass will report what it finds
    previous, last = (iv, tail) if need == BLOCK else (tail[:BLOCK], tail[BLOCK:])
    if _padding_ok(_aes_cbc_decrypt(key, previous, last)):
        return
    first = _aes_cbc_decrypt(key, iv, source.peek(BLOCK))[:4]
    raise _bad_padding_error(name, first, iterations, gzip)


def _read_all(reader: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        piece = reader.read(n)
        if not piece:
            break
        parts.append(piece)
        n -= len(piece)
    return b"".join(parts)


def _read_header(source: _Source, name: str) -> bytes:
    header = source.read_exact(HEADER_LEN)
    if not header:
        raise TruncatedStream(f"legacy file {name} is empty")
    if not MAGIC.startswith(header[: len(MAGIC)]):
        hint = None
        if header.startswith(_BASE64_MAGIC[: len(header)]):
            hint = "it looks base64-encoded (openssl enc -a); decode it first"
        raise FormatError(f"legacy file {name} is not an openssl enc file: no Salted__ header", hint=hint)
    if len(header) < HEADER_LEN:
        raise TruncatedStream(f"legacy file {name} is truncated inside its 16-byte salt header")
    return header[len(MAGIC) :]


def _gzip_error(name: str, exc: zlib.error) -> SeedvaultError:
    reason = str(exc).split(": ", 1)[-1]
    if "data check" in reason or "length check" in reason:
        return ChecksumMismatch(f"gzip checksum mismatch in legacy file {name}: {reason}")
    return FormatError(f"corrupt gzip data in legacy file {name}: {reason}")


def _inflate(d: zlib._Decompress, data: bytes, name: str, chunk_size: int) -> Iterator[bytes]:
    """Feed ``data`` to one gzip member's decompressor, yielding at most ``chunk_size`` bytes at a time."""
    pending = data
    while True:
        try:
            out = d.decompress(pending, chunk_size)
        except zlib.error as exc:
            raise _gzip_error(name, exc) from None
        if out:
            yield out
        if d.eof:
            return
        pending = d.unconsumed_tail
        if not pending and len(out) < chunk_size:
            return


def _gunzip(pieces: Iterator[bytes], name: str, chunk_size: int) -> Iterator[bytes]:
    """Decompress a gzip stream of one or more members; trailing NUL bytes are ignored (as gzip(1) does)."""

    def garbage() -> FormatError:
        return FormatError(f"trailing garbage after gzip data in legacy file {name}")

    d = zlib.decompressobj(31)
    in_member = True  # ``d`` is reading a member (or waiting for its first byte)
    between = b""  # bytes after a member's end, not yet known to start another member
    zeros = False  # only NUL padding may follow
    for piece in pieces:
        data = piece
        while data:
            if zeros:
                if data.count(0) != len(data):
                    raise garbage()
                break
            if not in_member:
                between += data
                data = b""
                if between[0] == 0:
                    zeros, data, between = True, between, b""
                    continue
                if between[0] != _GZIP_MAGIC[0] or (len(between) >= 2 and between[:2] != _GZIP_MAGIC):
                    raise garbage()
                if len(between) < 2:
                    break
                d = zlib.decompressobj(31)
                in_member, data, between = True, between, b""
                continue
            yield from _inflate(d, data, name, chunk_size)
            if d.eof:
                in_member, data = False, d.unused_data
            else:
                data = b""
    if in_member or between:
        raise TruncatedStream(f"gzip data in legacy file {name} is truncated")


def _decrypt(
    source: _Source,
    passphrase: bytes,
    name: str,
    gzip: bool | None,
    iterations: int,
    chunk_size: int,
) -> Iterator[bytes]:
    salt = _read_header(source, name)
    key, iv = derive_key_iv(passphrase, salt, iterations)
    _precheck_tail(source, key, iv, name, iterations, gzip)
    decryptor = _Decryptor(key, iv)
    plain = decryptor.run(source, name, chunk_size)
    try:
        head_parts: list[bytes] = []
        head_len = 0
        while head_len < 4:
            piece = next(plain, None)
            if piece is None:
                break
            head_parts.append(piece)
            head_len += len(piece)
        head = b"".join(head_parts)
        use_gzip = _looks_gzip(head) if gzip is None else gzip
        if use_gzip and not _looks_gzip(head):
            raise WrongKey(
                f"wrong passphrase for legacy file {name}",
                hint=_wrong_key_hint(iterations) + ", or whether the file was gzip-compressed at all",
            )

        def rest() -> Iterator[bytes]:
            if head:
                yield head
            yield from plain

        if use_gzip:
            yield from _gunzip(rest(), name, chunk_size)
        else:
            yield from rest()
    except _BadPadding:
        raise _bad_padding_error(name, decryptor.head, iterations, gzip) from None


def _validate(passphrase: bytes, iterations: int, chunk_size: int, name: str) -> None:
    if not isinstance(passphrase, bytes | bytearray | memoryview):
        raise TypeError("the passphrase must be bytes")
    if len(passphrase) == 0:
        raise ConfigError(f"empty passphrase given for legacy file {name}")
    if not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"invalid pbkdf2 iteration count for legacy file {name}: {iterations}")
    if chunk_size < BLOCK:
        raise ValueError("chunk_size must be at least 16")


def _reader_name(reader: object) -> str:
    name = getattr(reader, "name", None)
    return str(name) if isinstance(name, str | os.PathLike) else "<stream>"


def iter_decrypt(
    reader: BinaryIO,
    passphrase: bytes,
    *,
    name: str | None = None,
    gzip: bool | None = None,
    iterations: int = DEFAULT_ITERATIONS,
    prefix: bytes = b"",
    chunk_size: int = CHUNK_SIZE,
) -> Iterator[bytes]:
    """Yield the plaintext of a legacy file read from ``reader`` in pieces of at most ``chunk_size``.

    ``reader`` needs only ``read(n)`` (an S3 streaming body will do); when it is also seekable the final
    block is checked first, so a wrong passphrase or a truncation is reported before anything is yielded.
    ``prefix`` holds bytes already taken from ``reader`` (e.g. the ones given to :func:`is_legacy`).
    ``gzip``: True = the plaintext must be gzip, False = yield it as is, None = decide from its first bytes.
    ``name`` names the file in error messages (default: ``reader.name``). The reader is not closed.

    Errors are raised when met, so a consumer may already hold earlier pieces (see the module docstring
    for what is detected before the first piece): write to a temporary place and discard it on error.
    """
    name = name if name is not None else _reader_name(reader)
    _validate(passphrase, iterations, chunk_size, name)
    return _decrypt(_Source(reader, prefix, None), bytes(passphrase), name, gzip, iterations, chunk_size)


def _open_input(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - returned to a ``with`` in the caller
    except FileNotFoundError:
        raise ConfigError(f"legacy file {path} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read legacy file {path}: {exc.strerror or exc}") from None


def _resolve_sidecar(path: Path, sidecar: str | os.PathLike[str] | None) -> Path | None:
    if sidecar is None:
        return None
    if isinstance(sidecar, str) and sidecar == "auto":
        candidate = path.with_name(path.name + SIDECAR_SUFFIX)
        return candidate if candidate.is_file() else None
    sidecar = Path(sidecar)
    if not sidecar.is_file():
        raise ConfigError(f"sha256 sidecar {sidecar} for legacy file {path} not found")
    return sidecar


def decrypt_file(
    path: str | os.PathLike[str],
    out: BinaryIO,
    passphrase: bytes,
    *,
    sidecar: str | os.PathLike[str] | Literal["auto"] | None = "auto",
    gzip: bool | None = None,
    iterations: int = DEFAULT_ITERATIONS,
) -> LegacyResult:
    """Decrypt (and gunzip) the legacy file at ``path`` into ``out``.

    ``sidecar``: ``"auto"`` uses ``<path>.sha256`` when it exists, a path names one (it must exist),
    None skips the check. A sidecar is verified in a full pass over the file before anything is written
    to ``out``; the decryption pass hashes the file again and raises :class:`ChecksumMismatch` if the file
    changed in between. Length, padding and (when gzip) the header are also checked before the first write.
    """
    path = Path(path)
    name = str(path)
    _validate(passphrase, iterations, CHUNK_SIZE, name)
    sidecar_path = _resolve_sidecar(path, sidecar)
    expected = read_sidecar(sidecar_path, path.name) if sidecar_path is not None else None
    with _open_input(path) as stream:
        if expected is not None:
            assert sidecar_path is not None
            _check_digest(_sha256_of(stream), expected, path, sidecar_path)
            stream.seek(0)
        digest = hashlib.sha256()
        written = 0
        source = _Source(stream, b"", digest.update)
        for piece in _decrypt(source, bytes(passphrase), name, gzip, iterations, CHUNK_SIZE):
            out.write(piece)
            written += len(piece)
        while rest := stream.read(CHUNK_SIZE):  # nothing is left after a clean pass; hash it anyway
            digest.update(rest)
    actual = digest.hexdigest()
    if expected is not None and not hmac.compare_digest(actual, expected):
        raise ChecksumMismatch(f"legacy file {path} changed while it was being decrypted")
    return LegacyResult(sha256=actual, bytes_out=written, sidecar=sidecar_path)
