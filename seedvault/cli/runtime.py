"""What every command shares: settings, the repository, error-to-exit mapping, output, progress.

The one place where errors become exit codes is :func:`handle_errors`: a catalogued error prints one line
``seedvault: error: ...`` on stderr and exits with its class's code; anything else is a bug and exits 1
with the exception type (and a traceback only with ``SEEDVAULT_DEBUG=1``). Rich tracebacks with local
variables are never shown, because locals can hold key material.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import typer

from seedvault.config import Settings
from seedvault.errors import Interrupted, SeedvaultError
from seedvault.repository import Repository

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class AppState:
    overrides: dict[str, Any] = field(default_factory=dict)
    _settings: Settings | None = None
    _repo: Repository | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from seedvault.config import load

            self._settings = load(self.overrides)
        return self._settings

    def repository(self, *, key: bool = True, create: bool = False, fallback: bool = False) -> Repository:
        """The repository of the settings; ``fallback`` (restores): the replica when it is unreachable, said on stderr.

        See :mod:`seedvault.ops.fallback` for why only restores fall back.
        """
        if self._repo is None:
            from seedvault.storage.open import open_storage

            settings = self.settings
            if fallback and not settings.is_replica:
                from seedvault.ops.fallback import open_for_restore

                chosen = open_for_restore(settings, key=key, warn=err)
                self._repo, self._settings = chosen.repository, chosen.settings
            else:
                storage = open_storage(settings, create=create)
                self._repo = Repository(storage, settings.key_source(required=key))
                self._repo.catalog_cache = settings.catalog_cache  # type: ignore[attr-defined]  # seedvault.catalog
            self._repo.is_replica = self.settings.is_replica  # type: ignore[attr-defined]  # read by PITR
        return self._repo


def state(ctx: typer.Context) -> AppState:
    obj = ctx.find_root().obj
    if not isinstance(obj, AppState):
        obj = AppState()
        ctx.find_root().obj = obj
    return obj


def err(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def fail(exc: SeedvaultError) -> typer.Exit:
    err(f"seedvault: error: {exc.one_line()}")
    return typer.Exit(exc.exit_code)


def handle_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except SeedvaultError as exc:
            raise fail(exc) from None
        except KeyboardInterrupt:
            raise fail(Interrupted("interrupted")) from None
        except BrokenPipeError:
            # The reader went away (e.g. `| head`); nothing more to say.
            try:
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush at exit
            except OSError:
                pass
            raise typer.Exit(141) from None
        except Exception as exc:  # a bug: say what kind, never dump locals
            if os.environ.get("SEEDVAULT_DEBUG") == "1":
                traceback.print_exc()
            first = (str(exc).splitlines() or [""])[0][:300]
            err(f"seedvault: internal error: {type(exc).__name__}: {first}")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("CI") and os.environ.get("SEEDVAULT_PROGRESS") != "0"


@contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr when it is a terminal (bytes, rate, ETA if the size is known)."""
    if not show_progress():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()]
    if total:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
