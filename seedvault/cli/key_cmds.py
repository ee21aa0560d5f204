"""Key commands: generate, id, rotate, retire. Key material only ever moves through files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from seedvault.cli.runtime import err, handle_errors, print_json, state
from seedvault.crypto.keys import KeySource, generate_raw_key, parse_raw_key
from seedvault.errors import ConfigError, UsageError, VerificationFailed
from seedvault.ops import keys as key_ops

app = typer.Typer(no_args_is_help=True)


@app.command()
@handle_errors
def generate(
    out: Path = typer.Option(..., "--out", "-o", help="File to create (mode 0600); '-' prints to stdout."),
) -> None:
    """Create a new random 256-bit master key (base64) and print its key id."""
    key = generate_raw_key()
    kid = parse_raw_key(key, "new key").key_id
    if str(out) == "-":
        sys.stdout.write(key + "\n")
        err(f"key id {kid}")
        return
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{out} already exists; seedvault never overwrites a key file") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    sys.stdout.write(f"wrote new master key {kid} to {out}\n")


@app.command("id")
@handle_errors
def key_id(ctx: typer.Context) -> None:
    """Print the id of the configured master key (safe to share: it reveals nothing of the key)."""
    st = state(ctx)
    source = st.settings.key_source()
    assert source is not None
    # A raw key's id needs no repository; a passphrase needs the repository's KDF salt.
    master = source.resolve(None) if source.kind == "raw" else st.repository().master
    sys.stdout.write(master.key_id + "\n")


def _new_source(key_file: Path | None, passphrase_file: Path | None) -> KeySource:
    key_file = key_file or (
        Path(os.environ["SEEDVAULT_NEW_KEY_FILE"]) if os.environ.get("SEEDVAULT_NEW_KEY_FILE") else None
    )
    if passphrase_file is None and os.environ.get("SEEDVAULT_NEW_PASSPHRASE_FILE"):
        passphrase_file = Path(os.environ["SEEDVAULT_NEW_PASSPHRASE_FILE"])
    if bool(key_file) == bool(passphrase_file):
        raise UsageError("give the new key with exactly one of --new-key-file or --new-passphrase-file")
    if key_file:
        return KeySource("raw", origin=f"key file {key_file}", path=key_file)
    assert passphrase_file is not None
    return KeySource("passphrase", origin=f"passphrase file {passphrase_file}", path=passphrase_file)


@app.command()
@handle_errors
def rotate(
    ctx: typer.Context,
    new_key_file: Path = typer.Option(
        None, "--new-key-file", help="File with the new base64 key [env SEEDVAULT_NEW_KEY_FILE]."
    ),
    new_passphrase_file: Path = typer.Option(None, "--new-passphrase-file", help="File with the new passphrase."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Wrap every backup's data key and every archived WAL epoch key under a new master key too.

    No data is re-encrypted and no manifest or WAL record rewritten; safe to run again (it adds only what is
    missing, e.g. WAL epochs a server started under the old key before it got the new one).
    """
    repo = state(ctx).repository()
    new = repo.resolve_key(_new_source(new_key_file, new_passphrase_file))
    repo.check_kdf_pinned(repo.master)
    repo.check_kdf_pinned(new, new_key=True)
    report = key_ops.rotate(repo, new)
    old_id = repo.master.key_id
    failed = report.all_failed()
    if json_out:
        print_json(report.as_dict() | {"new_key_id": new.key_id, "old_key_id": old_id})
    else:
        skipped = len(report.skipped) + len(report.wal_skipped)
        already = f" ({skipped} already were, verified)" if skipped else ""
        retire_hint = (
            f"; retire the old key with: seedvault key retire {old_id} (using the new key)" if not failed else ""
        )
        sys.stdout.write(
            f"re-wrapped {_count(len(report.done), 'backup')} and {_count(len(report.wal_done), 'WAL epoch')} "
            f"under {new.key_id}{already}{retire_hint}\n"
        )
    if failed:
        name, why = failed[0]
        raise VerificationFailed(
            f"{_count(len(report.failed), 'backup')} and {_count(len(report.wal_failed), 'WAL epoch')} "
            f"could not be re-wrapped; {name}: {why}"
        )


@app.command()
@handle_errors
def retire(
    ctx: typer.Context,
    key_id: str = typer.Argument(..., help="Id of the old key (k-...), see 'seedvault show'."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Remove an old master key's key objects (backups and WAL epochs).

    Refused, with nothing deleted, while any backup or WAL epoch wrapped for it does not open with the
    configured key.
    """
    repo = state(ctx).repository()
    report = key_ops.retire(repo, key_id)
    if json_out:
        print_json(report.as_dict())
    else:
        sys.stdout.write(
            f"retired {key_id} from {_count(len(report.done), 'backup')} and "
            f"{_count(len(report.wal_done), 'WAL epoch')}\n"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
