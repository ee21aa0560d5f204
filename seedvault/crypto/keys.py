"""Master keys, data keys, key ids, and the wrapping of data keys.

Why two levels: every backup is encrypted with its own random 256-bit *data key*. The data key is stored
only *wrapped* (AES-256-GCM) under a *master key*, in a small key object of its own. Rotating the master
key therefore re-wraps 32-byte data keys and never touches data objects or manifests, which stay
immutable (compatible with S3 Object Lock).

A master key is either a raw 32-byte key (base64 in a file, from ``seedvault key generate``) or a
passphrase stretched with scrypt. The scrypt salt and cost live in the repository's config object, so a
passphrase yields the same master key for the whole repository (and one derivation per process).

Everything is derived with HKDF-SHA256 and a distinct ``info`` label, so no key is used for two purposes:

* key id      = "k-" + hex(HKDF(master, info="seedvault/v1/key-id", 8 bytes))
* wrap key    = HKDF(master, info="seedvault/v1/wrap")
* object key  = HKDF(data key, salt=object salt, info="seedvault/v1/object\\0<backup id>\\0<object name>")
* manifest MAC key = HKDF(data key, info="seedvault/v1/manifest\\0<backup id>")

Key material is held in :class:`bytes` attributes that are never formatted: ``repr`` shows the key id only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from seedvault.errors import AuthenticationFailed, ConfigError, FormatError, InvalidKey, WrongKey
from seedvault.format.fields import Fail, Fields, corrupted, short

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
SALT_MIN_BYTES = 8
# Bounds a stored KDF must keep (a repository config is input): scrypt needs 128 * n * r bytes of memory,
# so at most 1 GiB (the default needs 64 MiB), and p parallel passes of that, at most 16 (the default is 2).
SCRYPT_MAX_MEMORY = 2**30
SCRYPT_MAX_P = 16
# OWASP's scrypt floor (N=2^16, r=8, p=2): 64 MiB and ~0.3 s here, once per process.
DEFAULT_SCRYPT = {"name": "scrypt", "n": 2**16, "r": 8, "p": 2}
# The floor every stored scrypt KDF must reach (FORMAT.md section 3): the repository config is not
# authenticated, so whoever can write the bucket could otherwise weaken the next passphrase derivation.
SCRYPT_MIN_N = 2**15
SCRYPT_MIN_R = 8
SCRYPT_MIN_P = 1


def hkdf(key: bytes, info: bytes, *, salt: bytes | None = None, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(key)


def key_id_of(master: bytes) -> str:
    return "k-" + hkdf(master, b"seedvault/v1/key-id", length=8).hex()


@dataclass(frozen=True)
class MasterKey:
    """A resolved 32-byte master key. ``origin`` says where it came from (a path or variable name)."""

    secret: bytes = field(repr=False)
    kind: str  # "raw" | "passphrase"
    origin: str

    @property
    def key_id(self) -> str:
        return key_id_of(self.secret)

    def __repr__(self) -> str:  # never show key material
        return f"MasterKey(key_id={self.key_id!r}, kind={self.kind!r}, origin={self.origin!r})"

    def wrap(self, data_key: bytes, backup_id: str) -> dict[str, str]:
        """Wrap a data key for one backup; the backup id and key id are bound in as associated data."""
        nonce = os.urandom(12)
        ct = AESGCM(hkdf(self.secret, b"seedvault/v1/wrap")).encrypt(nonce, data_key, _wrap_aad(backup_id, self.key_id))
        return {"nonce": _b64(nonce), "wrapped": _b64(ct)}

    def unwrap(self, record: object, backup_id: str) -> bytes:
        """The data key of a parsed key object; any malformed record is AuthenticationFailed, never a TypeError."""
        what = f"key object of backup {backup_id} for key {self.key_id}"
        fields = Fields(record, corrupted(what, AuthenticationFailed))
        nonce = b64_field(fields, "nonce", NONCE_BYTES)
        ct = b64_field(fields, "wrapped", KEY_BYTES + TAG_BYTES)
        try:
            return AESGCM(hkdf(self.secret, b"seedvault/v1/wrap")).decrypt(nonce, ct, _wrap_aad(backup_id, self.key_id))
        except InvalidTag as exc:
            raise AuthenticationFailed(f"{what} failed authentication") from exc


def b64_field(fields: Fields, key: str, size: int) -> bytes:
    """A base64 string field that must decode to exactly ``size`` bytes."""
    text = fields.text(key, max_len=4 * size)
    assert text is not None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise fields.fail(f"field {fields.name(key)!r} is not base64") from None
    if len(raw) != size:
        raise fields.fail(f"field {fields.name(key)!r} holds {len(raw)} bytes, not {size}")
    return raw


def _wrap_aad(backup_id: str, key_id: str) -> bytes:
    return b"seedvault/v1/key\x00" + backup_id.encode() + b"\x00" + key_id.encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def generate_raw_key() -> str:
    """A new random master key, base64-encoded, for ``seedvault key generate``."""
    return _b64(secrets.token_bytes(KEY_BYTES))


def parse_raw_key(text: str | bytes, origin: str) -> MasterKey:
    """Decode a base64 raw key; errors name the origin, never the content."""
    raw = text.strip() if isinstance(text, bytes) else text.strip().encode("ascii", "replace")
    try:
        secret = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(
            f"key in {origin} is not valid base64", hint="create one with 'seedvault key generate'"
        ) from None
    if len(secret) != KEY_BYTES:
        raise InvalidKey(f"key in {origin} must decode to {KEY_BYTES} bytes, got {len(secret)}")
    from seedvault import process

    process.register_secret(secret)
    return MasterKey(secret, "raw", origin)


def scrypt_params(kdf: object, fail: Fail) -> tuple[bytes, int, int, int]:
    """(salt, n, r, p) of a stored scrypt KDF object, each checked; ``fail`` names the object it came from."""
    fields = Fields(kdf, fail, "kdf")
    name = fields.raw("name")
    if name != "scrypt":
        raise ConfigError(f"unsupported key derivation {short(name)} in repository config")
    n = fields.int("n", lo=2, hi=SCRYPT_MAX_MEMORY)
    r = fields.int("r", lo=1, hi=SCRYPT_MAX_MEMORY)
    p = fields.int("p", lo=1, hi=SCRYPT_MAX_P)
    assert n is not None and r is not None and p is not None
    if n & (n - 1):
        raise fail("field 'kdf.n' is not a power of two")
    if 128 * n * r > SCRYPT_MAX_MEMORY:
        raise fail(f"its scrypt parameters need more than {SCRYPT_MAX_MEMORY >> 20} MiB of memory")
    if n < SCRYPT_MIN_N or r < SCRYPT_MIN_R or p < SCRYPT_MIN_P:
        raise fail(
            f"its scrypt parameters (n={n}, r={r}, p={p}) are below the floor "
            f"n>={SCRYPT_MIN_N}, r>={SCRYPT_MIN_R}, p>={SCRYPT_MIN_P}: the config may have been tampered with"
        )
    text = fields.text("salt", max_len=256)
    assert text is not None
    try:
        salt = base64.b64decode(text, validate=True)
    except ValueError:
        raise fail("field 'kdf.salt' is not base64") from None
    if len(salt) < SALT_MIN_BYTES:
        raise fail(f"field 'kdf.salt' is shorter than {SALT_MIN_BYTES} bytes")
    return salt, n, r, p


def derive_passphrase_key(passphrase: bytes, kdf: dict, origin: str) -> MasterKey:
    """Stretch a passphrase with the repository's scrypt parameters."""
    salt, n, r, p = scrypt_params(kdf, corrupted("repository config", FormatError))
    if not passphrase:
        raise InvalidKey(f"passphrase in {origin} is empty")
    secret = Scrypt(salt=salt, length=KEY_BYTES, n=n, r=r, p=p).derive(passphrase)
    return MasterKey(secret, "passphrase", origin)


def new_kdf_params() -> dict:
    return {**DEFAULT_SCRYPT, "salt": _b64(os.urandom(16))}


@dataclass(frozen=True)
class KeySource:
    """Where a master key comes from, before the repository (and its KDF salt) is known.

    Holds file paths or an in-memory value handed over by a Prefect block; never a command-line value.
    """

    kind: str  # "raw" | "passphrase"
    origin: str
    path: Path | None = None
    value: bytes | None = field(default=None, repr=False)

    def read(self) -> bytes:
        """The key file's bytes; a passphrase file loses exactly one trailing newline (FORMAT.md section 6)."""
        if self.value is not None:
            return self.value
        assert self.path is not None
        try:
            with open(self.path, "rb") as fh:
                mode = os.fstat(fh.fileno()).st_mode
                data = fh.read()
        except FileNotFoundError:
            raise ConfigError(f"key file {self.path} does not exist") from None
        except PermissionError:
            raise ConfigError(f"key file {self.path} is not readable") from None
        except IsADirectoryError:
            raise ConfigError(f"key file {self.path} is a directory, not a file") from None
        except OSError as exc:  # an I/O error, a dangling mount...: the setting is wrong, not seedvault
            reason = (exc.strerror or type(exc).__name__).lower()
            raise ConfigError(f"key file {self.path} cannot be read: {reason}") from None
        if stat.S_ISREG(mode) and mode & 0o077:
            _warn_once(
                f"{self.kind}:{self.path}",
                f"key file {self.path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {self.path}",
            )
        from seedvault import process

        if self.kind == "passphrase":
            data = data.removesuffix(b"\n")
            process.register_secret(data)
            if data.endswith((b"\n", b"\r")):
                _warn_once(
                    f"newline:{self.path}",
                    f"passphrase file {self.path} still ends with a line break after its one trailing newline "
                    "was removed; that line break is part of the passphrase (FORMAT.md section 6)",
                )
        process.register_secret(data.strip())
        return data

    def resolve(self, kdf: dict | None) -> MasterKey:
        """Turn the source into a master key; passphrases need the repository's KDF parameters."""
        if self.kind == "raw":
            return parse_raw_key(self.read(), self.origin)
        if kdf is None:
            raise ConfigError("repository has no key-derivation parameters for a passphrase")
        return derive_passphrase_key(self.read(), kdf, self.origin)


_WARNED: set[str] = set()


def _warn_once(what: str, message: str) -> None:
    """A warning on stderr, once per process for ``what`` (a key is read once per repository, or more)."""
    if what not in _WARNED:
        _WARNED.add(what)
        sys.stderr.write(f"seedvault: warning: {message}\n")
        sys.stderr.flush()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def wrong_key(backup_id: str, key_id: str, available: list[str]) -> WrongKey:
    """The error for a master key that has no key object in a backup: the operator holds the wrong key."""
    listed = ", ".join(available) if available else "none"
    return WrongKey(
        f"wrong key: backup {backup_id} is not wrapped for key {key_id} (wrapped for: {listed})",
        hint="use the key the backup was made with, or rotate keys first",
    )
