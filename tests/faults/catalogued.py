"""What every CLI run of the fault suite must look like: a catalogued exit code, and one error line.

A command that fails says so in exactly one ``seedvault: error: ...`` line and exits with the code of its
class in :mod:`seedvault.errors`; "internal error" (exit 1) is a bug whatever the input. ``conftest.py`` of
this package applies :func:`check_cli` to every run made through ``tests.cli_runner.invoke`` and
``tests.helpers.run_cli``; tests may also call it (or :func:`invoke_checked`) directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from seedvault import errors

ERROR_PREFIX = "seedvault: error:"
# Exits that are not errors of the catalogue: success, a reader that went away (`| head`), killed by a signal.
NOT_ERRORS = {0, 141}


def catalogued_codes() -> set[int]:
    """The exit codes of :mod:`seedvault.errors` (1, the base's and the 'unexpected bug' code, excluded)."""
    codes = {
        cls.exit_code
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.SeedvaultError) and cls is not errors.SeedvaultError
    }
    return codes - {1}


CATALOGUED = catalogued_codes()


def problems(args: Sequence[str], exit_code: int, stderr: str | bytes) -> list[str]:
    """What is wrong with one CLI run (empty: nothing)."""
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    found = []
    if "internal error" in text:
        found.append("it printed an internal error")
    if any(a in ("wal-push", "wal-fetch") for a in args):
        return found  # PostgreSQL's exit codes and its own message form (seedvault.sources.postgres.wal.direct)
    if exit_code in NOT_ERRORS or exit_code < 0:
        return found
    if exit_code == 2 and "Usage:" in text:
        return found  # the command line itself was refused by the option parser
    if exit_code not in CATALOGUED:
        found.append(f"exit code {exit_code} is not in seedvault.errors")
    lines = [ln for ln in text.splitlines() if ln.startswith(ERROR_PREFIX)]
    if len(lines) != 1:
        found.append(f"{len(lines)} lines start with {ERROR_PREFIX!r}, not exactly one")
    return found


def check_cli(args: Sequence[str], exit_code: int, stderr: str | bytes) -> None:
    """Fail the test when a CLI run exited with an uncatalogued code or did not say why in one line."""
    found = problems(args, exit_code, stderr)
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    assert not found, f"seedvault {' '.join(map(str, args))} (exit {exit_code}): {'; '.join(found)}\n{text}"


def invoke_checked(args: list[str], env: dict[str, str], *, input: bytes | None = None, expect: int | None = None):
    """``tests.cli_runner.invoke`` and :func:`check_cli`, with the exit code compared to ``expect`` if given."""
    from tests.cli_runner import invoke

    res = invoke(args, env, input=input)
    check_cli(args, res.exit_code, res.stderr)
    if expect is not None:
        assert res.exit_code == expect, f"seedvault {' '.join(args)}: exit {res.exit_code}, not {expect}\n{res.stderr}"
    return res
