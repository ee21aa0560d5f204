"""In-process CLI runs (typer's CliRunner) for tests that need hundreds of invocations."""

from __future__ import annotations

from dataclasses import dataclass

from typer.testing import CliRunner

from seedvault.cli.app import app


@dataclass
class Result:
    exit_code: int
    stdout: bytes
    stderr: str


def invoke(args: list[str], env: dict[str, str], input: bytes | None = None) -> Result:
    clean = {k: None for k in __import__("os").environ if k.startswith("SEEDVAULT_")}
    clean.update({k: v for k, v in env.items() if k.startswith("SEEDVAULT_") or k.startswith("AWS_")})
    clean["CI"] = "1"
    res = CliRunner().invoke(app, args, env=clean, input=input, catch_exceptions=False)
    return Result(res.exit_code, res.stdout_bytes, res.stderr)
