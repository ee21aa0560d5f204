"""The legacy reader against files made by the real tools: ``gzip -c | openssl enc ... > f.gz.enc``.

The passphrase reaches openssl only through ``-pass file:`` (never a command line).
"""

from __future__ import annotations

import gzip as gzipmod
import hashlib
import io
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from seedvault.crypto.legacy import (
    LegacyResult,
    decrypt_file,
    derive_key_iv,
    is_legacy,
    iter_decrypt,
    read_sidecar,
    verify_sidecar,
)
from seedvault.errors import (
    ChecksumMismatch,
    ConfigError,
    FormatError,
    SeedvaultError,
    TruncatedStream,
    WrongKey,
)

OPENSSL = "/usr/bin/openssl"
PASSPHRASE = b"Ledger-Quartz-7f3a9c-orbit"
WRONG = b"Ledger-Quartz-7f3a9c-orbiT"
SALT = "5eed0a11c0ffee42"

pytestmark = pytest.mark.skipif(
    not (os.path.exists(OPENSSL) and shutil.which("gzip") and shutil.which("sha256sum")),
    reason="needs openssl, gzip and sha256sum",
)


# --- helpers ---------------------------------------------------------------------------------------------
def _gzip(data: bytes, tmp: Path) -> bytes:
    src = tmp / "gz-src"
    src.write_bytes(data)
    return subprocess.run(["gzip", "-n", "-c", str(src)], check=True, capture_output=True).stdout


def _openssl_enc(
    plaintext: bytes,
    dest: Path,
    *,
    passphrase: bytes = PASSPHRASE,
    iterations: int = 100_000,
    salt_hex: str | None = None,
    extra: tuple[str, ...] = (),
) -> Path:
    pw = dest.parent / f"{dest.name}.pw"
    pw.write_bytes(passphrase + b"\n")  # openssl takes the first line, without its newline
    src = dest.parent / f"{dest.name}.plain"
    src.write_bytes(plaintext)
    cmd = [OPENSSL, "enc", "-aes-256-cbc", "-salt", "-pbkdf2", "-iter", str(iterations)]
    if salt_hex:
        cmd += ["-S", salt_hex]
    cmd += [*extra, "-in", str(src), "-out", str(dest), "-pass", f"file:{pw}"]
    subprocess.run(cmd, check=True, capture_output=True)
    if salt_hex:
        # OpenSSL 3 leaves out the "Salted__" header when the salt is given with -S; put back exactly the
        # 16 bytes it writes for a random salt, so tests that need reproducible ciphertext see the real format.
        dest.write_bytes(b"Salted__" + bytes.fromhex(salt_hex) + dest.read_bytes())
    pw.unlink()
    src.unlink()
    return dest


def _sidecar(path: Path) -> Path:
    line = subprocess.run(["sha256sum", path.name], cwd=path.parent, check=True, capture_output=True).stdout
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.write_bytes(line)
    return sidecar


def make_legacy(tmp: Path, payload: bytes, *, name: str = "dump.sql.gz.enc", compress: bool = True, **kw) -> Path:
    """A legacy file exactly as the old pipeline made it, with its sha256sum sidecar."""
    plaintext = _gzip(payload, tmp) if compress else payload
    path = _openssl_enc(plaintext, tmp / name, **kw)
    _sidecar(path)
    return path


def decrypt_bytes(path: Path, passphrase: bytes = PASSPHRASE, **kw) -> tuple[bytes, LegacyResult]:
    out = io.BytesIO()
    result = decrypt_file(path, out, passphrase, **kw)
    return out.getvalue(), result


def mixed_payload(size: int, seed: int = 1) -> bytes:
    """Random and compressible stretches interleaved, of exactly ``size`` bytes."""
    rng = random.Random(seed)  # deterministic: with a fixed salt the ciphertext is reproducible
    rnd = rng.randbytes(32)
    parts, total, i = [], 0, 0
    while total < size:
        if i % 2:
            part = rng.randbytes(200_000 + (i * 7919) % 50_000)
        else:
            part = (b"INSERT INTO t VALUES (%d, 'row text');\n" % i) * 4000 + rnd
        parts.append(part)
        total += len(part)
        i += 1
    return b"".join(parts)[:size]


class NonSeekable(io.RawIOBase):
    """A reader with only ``read`` that returns short reads of ``step`` bytes, like a network body."""

    def __init__(self, data: bytes, step: int = 7777) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes:
        n = self._step if n < 0 else min(n, self._step)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


def assert_no_secret(exc: BaseException) -> None:
    """The passphrase (or either spelling of it) appears nowhere in the error chain."""
    seen: BaseException | None = exc
    while seen is not None:
        texts = [str(seen), repr(seen)]
        if isinstance(seen, SeedvaultError):
            texts += [seen.one_line(), seen.message, seen.hint or ""]
        for text in texts:
            for secret in (PASSPHRASE, WRONG):
                assert secret.decode() not in text
                assert secret.hex() not in text
        seen = seen.__cause__ or seen.__context__


def one_line_lowercase(exc: SeedvaultError) -> None:
    msg = exc.message
    assert "\n" not in msg and not msg.endswith(".")
    assert msg[0].islower()


# --- round trips -----------------------------------------------------------------------------------------
def test_multi_mib_mixed_payload_is_byte_identical(tmp_path: Path) -> None:
    payload = mixed_payload(5 * 1024 * 1024 + 123)
    path = make_legacy(tmp_path, payload)
    data, result = decrypt_bytes(path)
    assert data == payload
    assert result.bytes_out == len(payload)
    assert result.sidecar == path.with_name(path.name + ".sha256")
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == read_sidecar(result.sidecar)


def test_generator_over_non_seekable_short_reads(tmp_path: Path) -> None:
    payload = mixed_payload(2 * 1024 * 1024 + 5, seed=2)
    path = make_legacy(tmp_path, payload)
    reader = NonSeekable(path.read_bytes(), step=7777)
    pieces = list(iter_decrypt(reader, PASSPHRASE, name="s3://b/k", chunk_size=64 * 1024))
    assert b"".join(pieces) == payload
    assert max(len(p) for p in pieces) <= 64 * 1024


def test_generator_with_prefix_already_read(tmp_path: Path) -> None:
    payload = b"prefix test " * 5000
    raw = make_legacy(tmp_path, payload).read_bytes()
    reader = NonSeekable(raw, step=4096)
    head = reader.read(8)
    assert is_legacy(head)
    assert b"".join(iter_decrypt(reader, PASSPHRASE, prefix=head)) == payload


@pytest.mark.parametrize("compress", [True, False])
def test_empty_input(tmp_path: Path, compress: bool) -> None:
    path = make_legacy(tmp_path, b"", compress=compress)
    if not compress:
        assert path.stat().st_size == 32  # header + one block of pure padding
    data, result = decrypt_bytes(path)
    assert data == b"" and result.bytes_out == 0


@pytest.mark.parametrize("size", [1, 15, 16, 17, 1_000_003])
@pytest.mark.parametrize("compress", [True, False])
def test_lengths_not_multiple_of_block(tmp_path: Path, size: int, compress: bool) -> None:
    payload = os.urandom(size)
    path = make_legacy(tmp_path, payload, compress=compress)
    assert decrypt_bytes(path)[0] == payload
    assert b"".join(iter_decrypt(NonSeekable(path.read_bytes(), 13), PASSPHRASE, gzip=compress)) == payload


def test_multi_member_gzip(tmp_path: Path) -> None:
    parts = [b"first member\n" * 1000, os.urandom(300_000), b"", b"third\n" * 70_000]
    plaintext = b"".join(_gzip(p, tmp_path) for p in parts)
    path = _openssl_enc(plaintext, tmp_path / "multi.gz.enc")
    assert decrypt_bytes(path)[0] == b"".join(parts)
    # member boundaries falling inside tiny reads and pieces
    streamed = iter_decrypt(NonSeekable(path.read_bytes(), 1), PASSPHRASE, chunk_size=16)
    assert b"".join(streamed) == b"".join(parts)


def test_non_gzipped_payload_auto_and_forced(tmp_path: Path) -> None:
    payload = b"PGDMP" + os.urandom(100_000)
    path = make_legacy(tmp_path, payload, compress=False)
    assert decrypt_bytes(path)[0] == payload
    assert decrypt_bytes(path, gzip=False)[0] == payload
    # gzip=False on a gzipped file hands back the gzip stream itself
    gz_path = make_legacy(tmp_path, b"hello\n" * 100, name="g.gz.enc")
    raw, _ = decrypt_bytes(gz_path, gzip=False)
    assert gzipmod.decompress(raw) == b"hello\n" * 100


def test_iteration_count_is_a_parameter(tmp_path: Path) -> None:
    path = make_legacy(tmp_path, b"abc" * 1000, iterations=1000)
    assert decrypt_bytes(path, iterations=1000)[0] == b"abc" * 1000
    with pytest.raises(WrongKey) as info:
        decrypt_bytes(path, gzip=True)
    assert "100000" in (info.value.hint or "")


def test_key_derivation_matches_openssl(tmp_path: Path) -> None:
    printed = subprocess.run(
        [OPENSSL, "enc", "-aes-256-cbc", "-pbkdf2", "-iter", "100000", "-S", "0011223344556677", "-P"]
        + ["-pass", f"file:{_pw_file(tmp_path)}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    fields = {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in printed.splitlines() if "=" in line)}
    key, iv = derive_key_iv(PASSPHRASE, bytes.fromhex("0011223344556677"))
    assert fields["key"].lower() == key.hex() and fields["iv"].lower() == iv.hex()


def _pw_file(tmp: Path) -> Path:
    pw = tmp / "pw"
    pw.write_bytes(PASSPHRASE + b"\n")
    return pw


# --- wrong passphrase --------------------------------------------------------------------------------------
def test_wrong_passphrase_gzip_file_nothing_written(tmp_path: Path) -> None:
    # Fixed salt: in auto mode the early signal is the final padding, which a wrong key passes ~1/256.
    path = make_legacy(tmp_path, mixed_payload(300_000), salt_hex=SALT)
    for kw in ({}, {"gzip": True}, {"sidecar": None}):
        out = io.BytesIO()
        with pytest.raises(WrongKey) as info:
            decrypt_file(path, out, WRONG, **kw)
        assert out.getvalue() == b""
        assert "wrong passphrase" in info.value.message and str(path) in info.value.message
        if kw.get("gzip"):
            assert info.value.message == f"wrong passphrase for legacy file {path}"
        one_line_lowercase(info.value)
        assert_no_secret(info.value)


def test_wrong_passphrase_generator_raises_before_yielding(tmp_path: Path) -> None:
    path = make_legacy(tmp_path, mixed_payload(300_000), salt_hex=SALT)
    # gzip expected: the first block is not a gzip header, even on a non-seekable stream
    gen = iter_decrypt(NonSeekable(path.read_bytes()), WRONG, gzip=True, name="s3://bucket/old.gz.enc")
    with pytest.raises(WrongKey) as info:
        next(gen)
    assert info.value.message == "wrong passphrase for legacy file s3://bucket/old.gz.enc"
    assert_no_secret(info.value)
    # auto mode on a seekable reader: the final block's padding is checked first
    with path.open("rb") as f, pytest.raises(WrongKey):
        next(iter_decrypt(f, WRONG))


def test_wrong_passphrase_raw_payload_auto_non_seekable(tmp_path: Path) -> None:
    # Fixed salt: deterministic ciphertext, so the (~1/256) chance of a valid-looking padding is excluded.
    payload = b"raw payload, not gzip\n" * 1000
    path = make_legacy(tmp_path, payload, compress=False, salt_hex="a1b2c3d4e5f60718")
    with pytest.raises(WrongKey) as info:
        for _ in iter_decrypt(NonSeekable(path.read_bytes()), WRONG):
            pass
    assert "wrong passphrase or corrupted data" in info.value.message
    assert "bad padding" in info.value.message
    assert_no_secret(info.value)
    out = io.BytesIO()
    with pytest.raises(WrongKey):
        decrypt_file(path, out, WRONG)
    assert out.getvalue() == b""


# --- sidecar ---------------------------------------------------------------------------------------------
def test_bad_sidecar_checksum_nothing_written(tmp_path: Path) -> None:
    path = make_legacy(tmp_path, b"important rows\n" * 10_000)
    sidecar = path.with_name(path.name + ".sha256")
    digest, rest = sidecar.read_text().split(" ", 1)
    sidecar.write_text(("0" if digest[0] != "0" else "1") + digest[1:] + " " + rest)
    out = io.BytesIO()
    with pytest.raises(ChecksumMismatch) as info:
        decrypt_file(path, out, PASSPHRASE)
    assert out.getvalue() == b""
    assert str(path) in info.value.message
    one_line_lowercase(info.value)
    assert_no_secret(info.value)
    with pytest.raises(ChecksumMismatch):
        verify_sidecar(path, sidecar)
    # explicitly skipping the sidecar decrypts
    assert decrypt_bytes(path, sidecar=None)[0] == b"important rows\n" * 10_000


def test_tampered_file_is_caught_by_sidecar_before_output(tmp_path: Path) -> None:
    path = make_legacy(tmp_path, b"A" * 100_000)
    raw = bytearray(path.read_bytes())
    raw[40] ^= 0x01  # a flipped ciphertext bit: garbles one block, flips one bit of the next
    path.write_bytes(bytes(raw))
    out = io.BytesIO()
    with pytest.raises(ChecksumMismatch):
        decrypt_file(path, out, PASSPHRASE)
    assert out.getvalue() == b""
    # without the sidecar only the gzip checks at the end can notice, after output was written
    with pytest.raises((FormatError, ChecksumMismatch)):
        decrypt_bytes(path, sidecar=None)


def test_sidecar_formats(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    cases = {
        "text": f"{digest}  dump.gz.enc\n",
        "binary": f"{digest} *dump.gz.enc\n",
        "upper": f"{digest.upper()}  dump.gz.enc",
        "bare": f"{digest}\n",
        "escaped": f"\\{digest}  dump\\nname.gz.enc\n",
    }
    for label, text in cases.items():
        p = tmp_path / f"{label}.sha256"
        p.write_text(text)
        assert read_sidecar(p) == digest, label
    multi = tmp_path / "multi.sha256"
    multi.write_text(f"{digest}  dump.gz.enc\n{'0' * 64}  other.gz.enc\n")
    assert read_sidecar(multi, "dump.gz.enc") == digest
    with pytest.raises(FormatError):
        read_sidecar(multi)
    bad = tmp_path / "bad.sha256"
    bad.write_text("not a checksum  dump.gz.enc\n")
    with pytest.raises(FormatError) as info:
        read_sidecar(bad)
    assert str(bad) in info.value.message


def test_sidecar_explicit_missing_and_auto_absent(tmp_path: Path) -> None:
    path = make_legacy(tmp_path, b"data\n" * 10)
    with pytest.raises(ConfigError):
        decrypt_bytes(path, sidecar=tmp_path / "nope.sha256")
    path.with_name(path.name + ".sha256").unlink()
    data, result = decrypt_bytes(path)  # "auto" and no sidecar: decrypts, reports the hash
    assert data == b"data\n" * 10
    assert result.sidecar is None and result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_sidecar_binary_marker_from_real_sha256sum(tmp_path: Path) -> None:
    path = make_legacy(tmp_path, b"z" * 1000)
    line = subprocess.run(["sha256sum", "--binary", path.name], cwd=tmp_path, check=True, capture_output=True).stdout
    assert b" *" in line
    sidecar = tmp_path / "explicit.sha256"
    sidecar.write_bytes(line)
    assert decrypt_bytes(path, sidecar=sidecar)[1].sidecar == sidecar


# --- truncation and corruption ---------------------------------------------------------------------------
@pytest.mark.parametrize("cut", [1, 5, 16, 32, 4096])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    # Fixed salt: a cut on a block boundary leaves a last block whose padding must look wrong (~255/256).
    path = make_legacy(tmp_path, mixed_payload(200_000, seed=3), salt_hex=SALT)
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(ChecksumMismatch):  # the sidecar says so first
        decrypt_bytes(path)
    out = io.BytesIO()
    with pytest.raises(TruncatedStream) as info:
        decrypt_file(path, out, PASSPHRASE, sidecar=None)
    assert out.getvalue() == b""  # length / final padding are checked before the first write
    assert "truncated" in info.value.message and str(path) in info.value.message
    one_line_lowercase(info.value)
    # a non-seekable stream finds out at the end
    with pytest.raises(TruncatedStream):
        for _ in iter_decrypt(NonSeekable(path.read_bytes()), PASSPHRASE):
            pass


@pytest.mark.parametrize("keep", [0, 3, 8, 12])
def test_truncated_inside_header(tmp_path: Path, keep: int) -> None:
    path = make_legacy(tmp_path, b"q" * 100)
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(TruncatedStream) as info:
        decrypt_bytes(path, sidecar=None)
    assert str(path) in info.value.message


def test_header_only_no_ciphertext(tmp_path: Path) -> None:
    path = make_legacy(tmp_path, b"q" * 100)
    path.write_bytes(path.read_bytes()[:16])
    with pytest.raises(TruncatedStream, match="no ciphertext"):
        decrypt_bytes(path, sidecar=None)
    with pytest.raises(TruncatedStream, match="no ciphertext"):
        list(iter_decrypt(NonSeekable(path.read_bytes()), PASSPHRASE))


def test_truncated_gzip_inside_valid_encryption(tmp_path: Path) -> None:
    gz = _gzip(mixed_payload(100_000), tmp_path)
    path = _openssl_enc(gz[: len(gz) // 2], tmp_path / "half.gz.enc")
    with pytest.raises(TruncatedStream, match="gzip data in legacy file .* is truncated"):
        decrypt_bytes(path)


def test_trailing_garbage_after_gzip(tmp_path: Path) -> None:
    gz = _gzip(b"payload\n" * 1000, tmp_path)
    path = _openssl_enc(gz + b"GARBAGE", tmp_path / "garbage.gz.enc")
    with pytest.raises(FormatError, match="trailing garbage"):
        decrypt_bytes(path)
    zeros = _openssl_enc(gz + b"\0" * 100, tmp_path / "zeros.gz.enc")  # gzip(1) ignores NUL padding
    assert decrypt_bytes(zeros)[0] == b"payload\n" * 1000


def test_corrupt_gzip_crc(tmp_path: Path) -> None:
    gz = bytearray(_gzip(b"payload\n" * 1000, tmp_path))
    gz[-8] ^= 0xFF  # the member's CRC-32
    path = _openssl_enc(bytes(gz), tmp_path / "crc.gz.enc")
    with pytest.raises(ChecksumMismatch, match="gzip checksum mismatch"):
        decrypt_bytes(path)


# --- not an openssl file -----------------------------------------------------------------------------------
def test_not_an_openssl_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.gz"
    path.write_bytes(_gzip(b"not encrypted\n" * 100, tmp_path))
    out = io.BytesIO()
    with pytest.raises(FormatError) as info:
        decrypt_file(path, out, PASSPHRASE)
    assert "not an openssl enc file" in info.value.message and str(path) in info.value.message
    assert out.getvalue() == b""
    one_line_lowercase(info.value)
    assert not is_legacy(path.read_bytes()[:16])


def test_base64_openssl_file_gets_a_hint(tmp_path: Path) -> None:
    path = _openssl_enc(b"x" * 100, tmp_path / "b64.enc", extra=("-a",))
    with pytest.raises(FormatError) as info:
        decrypt_bytes(path)
    assert "base64" in (info.value.hint or "")


def test_is_legacy(tmp_path: Path) -> None:
    path = make_legacy(tmp_path, b"x")
    assert is_legacy(path.read_bytes()[:16])
    assert is_legacy(b"Salted__")
    assert not is_legacy(b"Salted_")
    assert not is_legacy(b"\x1f\x8b\x08\x00")
    assert not is_legacy(b"")


def test_empty_passphrase_is_a_config_error(tmp_path: Path) -> None:
    path = make_legacy(tmp_path, b"x")
    with pytest.raises(ConfigError):
        decrypt_bytes(path, b"")
    with pytest.raises(TypeError):
        decrypt_bytes(path, PASSPHRASE.decode())  # type: ignore[arg-type]


def test_passphrase_never_in_any_error_text(tmp_path: Path) -> None:
    good = make_legacy(tmp_path, mixed_payload(50_000), name="good.gz.enc", salt_hex=SALT)
    truncated = tmp_path / "trunc.gz.enc"
    truncated.write_bytes(good.read_bytes()[:-7])
    not_openssl = tmp_path / "plain.bin"
    not_openssl.write_bytes(b"hello world, this is not openssl")
    attempts = [
        (good, WRONG, {}),
        (good, WRONG, {"gzip": True}),
        (good, WRONG, {"gzip": False, "sidecar": None}),
        (truncated, PASSPHRASE, {"sidecar": None}),
        (truncated, WRONG, {"sidecar": None}),
        (not_openssl, PASSPHRASE, {}),
    ]
    for path, passphrase, kw in attempts:
        with pytest.raises(SeedvaultError) as info:
            decrypt_bytes(path, passphrase, **kw)
        assert_no_secret(info.value)
        one_line_lowercase(info.value)


def test_file_changed_between_sidecar_pass_and_decryption(tmp_path: Path, monkeypatch) -> None:
    from seedvault.crypto import legacy

    path = make_legacy(tmp_path, b"original\n" * 100)
    original = hashlib.sha256(path.read_bytes()).hexdigest()
    make_legacy(tmp_path, b"replaced\n" * 100)  # same name: the file and its sidecar are replaced
    path.with_name(path.name + ".sha256").write_text(f"{original}  {path.name}\n")
    # the sidecar pass sees the original bytes; the decryption pass then reads the replacement
    monkeypatch.setattr(legacy, "_sha256_of", lambda stream: original)
    with pytest.raises(ChecksumMismatch, match="changed while it was being decrypted"):
        decrypt_bytes(path)


def test_highly_compressible_output_stays_in_bounded_pieces(tmp_path: Path) -> None:
    path = make_legacy(tmp_path, b"\0" * (24 * 1024 * 1024))
    assert path.stat().st_size < 100_000
    sizes = [len(p) for p in iter_decrypt(NonSeekable(path.read_bytes(), 65536), PASSPHRASE, chunk_size=65536)]
    assert sum(sizes) == 24 * 1024 * 1024 and max(sizes) <= 65536
