"""Legacy commands: read files made by the old ``gzip | openssl enc -aes-256-cbc -pbkdf2`` pipeline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from seedvault.cli.runtime import handle_errors
from seedvault.errors import ConfigError

app = typer.Typer(no_args_is_help=True)


def _passphrase(path: Path | None) -> bytes:
    path = path or (
        Path(os.environ["SEEDVAULT_LEGACY_PASSPHRASE_FILE"])
        if os.environ.get("SEEDVAULT_LEGACY_PASSPHRASE_FILE")
        else None
    )
    if path is None:
        raise ConfigError("no legacy passphrase: use --passphrase-file or SEEDVAULT_LEGACY_PASSPHRASE_FILE")
    try:
        # Same rule as openssl's -pass file: the first line, without its newline.
        return path.read_bytes().split(b"\n", 1)[0]
    except OSError as exc:
        raise ConfigError(f"cannot read passphrase file {path}: {exc.strerror}") from None


@app.command()
@handle_errors
def decrypt(
    file: Path = typer.Argument(..., help="The .enc file."),
    output: Path = typer.Option(None, "--output", "-o", help="Write here (atomically) instead of stdout."),
    passphrase_file: Path = typer.Option(
        None, "--passphrase-file", help="File with the old passphrase [env SEEDVAULT_LEGACY_PASSPHRASE_FILE]."
    ),
    sidecar: Path = typer.Option(None, "--sidecar", help="sha256sum file (default: FILE.sha256 when present)."),
    no_sidecar: bool = typer.Option(False, "--no-sidecar", help="Do not look for a .sha256 sidecar."),
    iterations: int = typer.Option(100000, "--iter", help="PBKDF2 iterations used by the old pipeline."),
    not_gzipped: bool = typer.Option(False, "--not-gzipped", help="The payload was encrypted without gzip."),
) -> None:
    """Decrypt and gunzip one old backup file; its sidecar checksum is verified before any output."""
    from seedvault.crypto import legacy
    from seedvault.ops.transfer import write_atomically

    passphrase = _passphrase(passphrase_file)
    side = None if no_sidecar else (sidecar or "auto")
    if output is None:
        legacy.decrypt_file(
            file, sys.stdout.buffer, passphrase, sidecar=side, iterations=iterations, gzip=not not_gzipped
        )
        sys.stdout.buffer.flush()
        return
    write_atomically(
        output,
        lambda fh: legacy.decrypt_file(file, fh, passphrase, sidecar=side, iterations=iterations, gzip=not not_gzipped),
    )
