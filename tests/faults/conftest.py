"""Every CLI run of the fault suite is checked: no "internal error", a catalogued exit code, one error line.

Fault tests feed seedvault damaged, hostile or failing input on purpose; whatever they do, the CLI must
answer with an error of its catalogue (see ``tests/faults/catalogued.py``). The hook wraps the two ways tests
run the CLI, in process (``tests.cli_runner.invoke``, through its ``CliRunner``) and as a subprocess
(``tests.helpers.run_cli``, through its ``subprocess.run``), so no test has to remember to check.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
from typer.testing import CliRunner

import tests.cli_runner
import tests.helpers
from tests.faults.catalogued import check_cli


class _CheckedRunner(CliRunner):
    def invoke(self, app: Any, args: Any = None, **kwargs: Any) -> Any:
        result = super().invoke(app, args, **kwargs)
        check_cli(list(args or []), result.exit_code, result.stderr)
        return result


class _CheckedSubprocess:
    """``subprocess`` for tests.helpers, with ``run`` checking runs of the CLI (everything else as is)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def run(args: Any, *rest: Any, **kwargs: Any) -> subprocess.CompletedProcess:
        proc = subprocess.run(args, *rest, **kwargs)
        cli = tests.helpers.CLI
        if isinstance(args, list | tuple) and list(args[: len(cli)]) == cli and proc.stderr is not None:
            check_cli([str(a) for a in args[len(cli) :]], proc.returncode, proc.stderr)
        return proc


@pytest.fixture(autouse=True)
def _no_internal_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tests.cli_runner, "CliRunner", _CheckedRunner)
    monkeypatch.setattr(tests.helpers, "subprocess", _CheckedSubprocess())
