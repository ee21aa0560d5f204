"""The direct (no daemon) ``wal-push``/``wal-fetch``: the one implementation of PostgreSQL's contracts.

The console script calls these without loading the command-line framework (typer and its imports are
~150 ms of a ~0.5 s process, paid once per WAL segment); the typer commands in ``seedvault.cli.wal_cmds``
call the same functions, so ``seedvault wal-push --help`` and friends behave identically.

Exit codes are PostgreSQL's, not only our catalogue's:

* ``wal-push`` exits 0 only once the file is durable in storage (or proven already stored with the
  same content). Every failure exits 1..125 (PostgreSQL retries and counts it in ``pg_stat_archiver``);
  a code above 125 would make the archiver process abort instead, and the failure would not be counted.
* ``wal-fetch`` exits 0 once the verified file is in place, 1 **quietly** when the file is not archived
  (that is how recovery finds the end of the archive and how PostgreSQL probes for timelines), and 126
  for everything that must stop recovery (corrupt, foreign or unauthenticated WAL, wrong key, storage
  unreachable): PostgreSQL treats > 125 as fatal, where any other code would end recovery early, at an
  earlier point than asked, without saying so.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seedvault.errors import ConfigError, ObjectNotFound, SeedvaultError, StorageError, StorageUnreachable

PUSH_MAX_EXIT = 125
FETCH_MISSING = 1
FETCH_FATAL = 126
FETCH_RETRY_SECONDS = 60.0
LAGGING_REPLICA = (
    "not in the replica, which may lag behind the unreachable repository; recovery stopped rather than ending early"
    " (recover from the replica on purpose with --replica)"
)
FALLBACK_AFTER_SECONDS = 5.0  # a broken connection is retried first; an endpoint down for 5 s is down

_GLOBAL_TO_SETTING = {
    "--config": "config",
    "--repository": "repository",
    "-r": "repository",
    "--s3-endpoint": "s3_endpoint",
    "--key-file": "key_file",
    "--passphrase-file": "passphrase_file",
}


def global_options(overrides: dict[str, Any]) -> dict[str, str]:
    """The command-line global options that produce ``overrides`` (for a daemon started on our behalf)."""
    back = {setting: opt for opt, setting in _GLOBAL_TO_SETTING.items() if opt != "-r"}
    return {back[k]: str(v) for k, v in overrides.items() if k in back and v is not None}


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"


def system_id_of(pgdata: str | None) -> int:
    from seedvault.sources.postgres.wal.names import system_id_from_pg_control

    base = Path(pgdata) if pgdata else Path.cwd()
    control = base / "global" / "pg_control"
    try:
        return system_id_from_pg_control(control.read_bytes()[:16])
    except OSError as exc:
        raise ConfigError(
            f"cannot read {control}: {exc.strerror}",
            hint="run from the data directory (as archive_command does) or pass --pgdata or --system-id",
        ) from None


def _repository(overrides: dict[str, Any], *, create: bool = False) -> tuple[Any, Any]:
    from seedvault.config import load
    from seedvault.repository import Repository
    from seedvault.storage.open import open_storage

    settings = load(overrides)
    return Repository(open_storage(settings, create=create), settings.key_source()), settings


def push(
    overrides: dict[str, Any], path: str, *, pgdata: str | None, system_id: str | None, pg_major: int | None
) -> int:
    """Archive one WAL file directly; the exit code for PostgreSQL."""
    try:
        from seedvault.sources.postgres.wal.store import WalStore

        sid = int(system_id) if system_id else system_id_of(pgdata)
        full = Path(path) if os.path.isabs(path) or not pgdata else Path(pgdata) / path
        repo, settings = _repository(overrides, create=True)
        store = WalStore(repo, sid, state_dir=settings.wal_state_dir)
        res = store.push(full, pg_major=pg_major, settings_level=settings.zstd_level)
        if res.result == "duplicate":
            _say(f"seedvault wal-push: {res.name} was already archived with identical content")
        return 0
    except SeedvaultError as exc:
        _say(f"seedvault wal-push: error: {exc.one_line()}")
        return min(max(exc.exit_code, 1), PUSH_MAX_EXIT)
    except (KeyboardInterrupt, Exception) as exc:
        _say(f"seedvault wal-push: error: {_first_line(exc)}")
        return 1


def fetch(overrides: dict[str, Any], name: str, dest: str, *, pgdata: str | None, system_id: str | None) -> int:
    """Fetch and verify one WAL file directly; 0, 1 (quietly: not archived) or 126 (stop recovery)."""
    started = time.monotonic()
    deadline = started + FETCH_RETRY_SECONDS
    delay = 0.5
    switched = False  # fell back to the replica in this call: it may lag, so "not there" is not the end
    while True:
        try:
            from seedvault.sources.postgres.wal.store import WalStore, partial_note

            sid = int(system_id) if system_id else system_id_of(pgdata)
            full = Path(dest) if os.path.isabs(dest) or not pgdata else Path(pgdata) / dest
            repo, _ = _repository(overrides)
            header = WalStore(repo, sid).fetch(name, full)
            if header.get("served_partial"):
                _say(f"seedvault wal-fetch: {partial_note(name, header)}")
            return 0
        except ObjectNotFound:
            if switched:  # the replica lags the repository recovery was planned on: stop, never end early
                return _fatal(name, LAGGING_REPLICA)
            return FETCH_MISSING  # not archived: the normal end of the archive
        except StorageUnreachable as exc:  # retried a few seconds, then the replica if there is one, else retried
            if time.monotonic() - started > FALLBACK_AFTER_SECONDS and _replica_instead(overrides, exc):
                overrides = {**overrides, "use_replica": "on"}
                switched = True
                continue
            if time.monotonic() + delay > deadline:
                return _fatal(name, exc.one_line())
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        except StorageError as exc:  # throttled, broken connections: retry a while, then stop recovery
            if time.monotonic() + delay > deadline:
                return _fatal(name, exc.one_line())
            time.sleep(delay)
            delay = min(delay * 2, 8.0)
        except SeedvaultError as exc:
            return _fatal(name, exc.one_line())
        except (KeyboardInterrupt, Exception) as exc:
            return _fatal(name, _first_line(exc))


def _replica_instead(overrides: dict[str, Any], exc: StorageUnreachable) -> bool:
    """Switch to the replica (saying so) when the repository is unreachable and a replica is configured."""
    from seedvault.config import load

    if overrides.get("use_replica") == "on":
        return False
    try:
        settings = load(overrides)
        replica = None if settings.is_replica else settings.replica_settings()
    except SeedvaultError:
        return False
    if replica is None:
        return False
    from seedvault.storage.base import redact_url

    _say(f"seedvault wal-fetch: warning: repository {redact_url(settings.repository or '')} is unreachable "
         f"({exc.one_line()}); reading from the replica {redact_url(replica.repository or '')}")  # fmt: skip
    return True


def _fatal(name: str, message: str) -> int:
    _say(f"seedvault wal-fetch: FATAL: {name}: {message}")
    return FETCH_FATAL


def main(argv: Sequence[str]) -> int | None:
    """Run ``wal-push``/``wal-fetch`` from raw arguments, or None when the full CLI must parse them."""
    from seedvault.sources.postgres.wal.client import FETCH_OPTS, PUSH_OPTS, parse_args

    command = "wal-push" if "wal-push" in argv else "wal-fetch" if "wal-fetch" in argv else None
    if command is None:
        return None
    parsed = parse_args(argv, command, PUSH_OPTS if command == "wal-push" else FETCH_OPTS)
    if parsed is None:
        return None
    options, args = parsed
    overrides = {setting: options[opt] for opt, setting in _GLOBAL_TO_SETTING.items() if opt in options}
    try:
        if command == "wal-push" and len(args) == 1:
            major = int(options["--pg-major"]) if options.get("--pg-major") else None
            return push(overrides, args[0], pgdata=options.get("--pgdata"), system_id=options.get("--system-id"),
                        pg_major=major)  # fmt: skip
        if command == "wal-fetch" and len(args) == 2:
            return fetch(overrides, args[0], args[1], pgdata=options.get("--pgdata"),
                         system_id=options.get("--system-id"))  # fmt: skip
    except ValueError:
        return None  # e.g. --pg-major x: the full CLI explains
    return None
