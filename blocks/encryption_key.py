"""The master key block: a raw key (base64, from ``seedvault key generate``) or a passphrase, kept secret.

The engine reads keys from files in the CLI; in Prefect the key lives in this block and reaches the engine
in memory (``KeySource(value=...)``), so it is never written to disk, a parameter or an argument vector.
It is registered with :mod:`seedvault.process` on use, so no child process can be started with it in argv.
"""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, model_validator

from seedvault import process
from seedvault.crypto.keys import KeySource, generate_raw_key, parse_raw_key
from seedvault.errors import SeedvaultError


class SeedvaultEncryptionKey(Block):
    """Master key of a seedvault repository (wraps every backup's data key)."""

    _block_type_name = "Seedvault Encryption Key"
    _block_type_slug = "seedvault-encryption-key"
    _description = "Master key (raw base64 key or passphrase) of a seedvault repository."
    # A validation error must not echo the input: it holds the secret.
    model_config = ConfigDict(hide_input_in_errors=True)

    kind: Literal["raw", "passphrase"] = Field(
        default="raw", description="raw: base64 of 32 random bytes (seedvault key generate); passphrase: scrypt"
    )
    value: SecretStr = Field(description="The base64 raw key or the passphrase.")

    @model_validator(mode="after")
    def _check_raw_key(self) -> SeedvaultEncryptionKey:
        # Fail when the block is created, not at 02:00; the message names the problem, never the value.
        if self.kind == "raw":
            try:
                parse_raw_key(self.value.get_secret_value(), "the encryption key block")
            except SeedvaultError as exc:
                raise ValueError(exc.one_line()) from None
        return self

    @classmethod
    def generate(cls) -> SeedvaultEncryptionKey:
        """A block holding a fresh random raw key (save it, and keep an offline copy)."""
        return cls(kind="raw", value=SecretStr(generate_raw_key()))

    def key_source(self) -> KeySource:
        """The key for :class:`seedvault.repository.Repository`, in memory only."""
        secret = self.value.get_secret_value().encode()
        process.register_secret(secret)
        name = getattr(self, "_block_document_name", None) or "unsaved"
        return KeySource(self.kind, origin=f"prefect block {name}", value=secret)
