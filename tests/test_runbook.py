"""Run RUNBOOK.md's runnable blocks (```bash runbook), extracted from the file itself, in order.

They run against a local repository and against the moto S3 endpoint, with a real legacy file made by
openssl, in one scratch directory per run; a block that fails names its section. The extraction and
running helpers (``fenced_blocks``, ``runbook_blocks``, ``run_blocks``) also serve
tests/integration/test_runbook_pitr.py, which runs the ```bash runbook-pitr blocks against an archiving server.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import base_env

RUNBOOK = Path(__file__).resolve().parent.parent / "RUNBOOK.md"
HEADING_RE = re.compile(r"^#{2,3} (.+)$")


def fenced_blocks(info: str, path: Path = RUNBOOK) -> list[tuple[str, str]]:
    """``(section, body)`` of every block fenced as ```` ```<info> ````, in document order.

    The section is the nearest ``##``/``###`` heading above the block (headings inside blocks do not count);
    fences may be indented (a block inside a list item).
    """
    section, blocks, body, fence = "preamble", [], [], None
    for line in path.read_text().splitlines(keepends=True):
        if fence is None:
            if line.lstrip().startswith("```"):
                fence, body = line.strip()[3:].strip(), []
            elif m := HEADING_RE.match(line):
                section = m.group(1).strip()
        elif line.lstrip().startswith("```"):
            if fence == info:
                blocks.append((section, "".join(body)))
            fence = None
        else:
            body.append(line)
    return blocks


def runbook_blocks(tag: str = "runbook") -> list[tuple[str, str]]:
    """The runnable blocks fenced as ```` ```bash <tag> ```` (``runbook``: this file; ``runbook-pitr``: the
    PITR sections, run by tests/integration/test_runbook_pitr.py against an archiving server)."""
    return fenced_blocks(f"bash {tag}")


def test_runbook_has_runnable_blocks():
    assert len(runbook_blocks()) >= 8


def _legacy_file(work: Path) -> tuple[Path, Path]:
    pw = work / "legacy.pass"
    pw.write_text("old-passphrase\n")
    enc = work / "old.sql.gz.enc"
    gz = subprocess.run(["gzip", "-c"], input=b"CREATE TABLE t (id int);\n" * 100, capture_output=True, check=True)
    with open(enc, "wb") as out:
        subprocess.run(
            ["openssl", "enc", "-aes-256-cbc", "-salt", "-pbkdf2", "-iter", "100000", "-pass", f"file:{pw}"],
            input=gz.stdout,
            stdout=out,
            check=True,
        )
    (work / "old.sql.gz.enc.sha256").write_text(f"{hashlib.sha256(enc.read_bytes()).hexdigest()}  old.sql.gz.enc\n")
    return enc, pw


def _drop_safety_copies(pg_server, db: str) -> list:
    with pg_server.connect() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{db}_before_%",))
        names = [r[0] for r in rows]
    for name in names:
        pg_server.drop_database(name)
    return names


def _drop_safety_copies(pg_server, db: str) -> None:
    with pg_server.connect() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{db}_before_%",)).fetchall()
    for (name,) in rows:
        pg_server.drop_database(name)


def run_blocks(
    env: dict[str, str],
    tag: str = "runbook",
    *,
    before: dict[str, Callable[[dict[str, str]], dict[str, str] | None]] | None = None,
    timeout: float = 300,
) -> None:
    """Run the ``bash <tag>`` blocks in order with ``bash -euo pipefail``, ``seedvault`` being this checkout.

    ``before`` maps a section heading (its beginning) to a callable run once before that section's first
    block, with the environment; what it returns is added to the environment of the blocks that follow.
    A block that fails names its section.
    """
    bindir = Path(env["WORK"]) / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "seedvault"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m seedvault.cli.app "$@"\n')
    shim.chmod(0o755)
    env = dict(env, PATH=f"{bindir}:{env['PATH']}")
    pending = dict(before or {})
    for section, script in runbook_blocks(tag):
        for prefix in [p for p in pending if section.startswith(p)]:
            env.update(pending.pop(prefix)(env) or {})
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, cwd=env["WORK"], timeout=timeout
        )
        assert proc.returncode == 0, (
            f"RUNBOOK section '{section}' failed (exit {proc.returncode}):\n{script}\n"
            f"stdout:\n{proc.stdout.decode()[-3000:]}\nstderr:\n{proc.stderr.decode()[-3000:]}"
        )
    assert not pending, f"no RUNBOOK section starts with {sorted(pending)}"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_runbook_blocks_run(where, tmp_path, request, pg_server, pg_db):
    from seedvault.sources.postgres.sample import load_sample

    with pg_server.connect(pg_db) as conn:
        load_sample(conn)
    work = tmp_path / "work"
    work.mkdir()
    enc, pw = _legacy_file(work)
    base = f"postgresql://{pg_server.user}@{pg_server.host}:{pg_server.port}"
    env = base_env(
        WORK=str(work),
        SEEDVAULT_KEY_FILE=str(tmp_path / "master.key"),
        LEGACY_FILE=str(enc),
        SEEDVAULT_LEGACY_PASSPHRASE_FILE=str(pw),
        PG_DB=pg_db,
        PG_DSN=f"{base}/{pg_db}",
        PG_SCRATCH_DSN=f"{base}/{pg_db}_scratch",
        PG_TABLE_DSN=f"{base}/{pg_db}_table",
        PG_ADMIN_DSN=f"{base}/postgres",
        **pg_server.env(),
    )

    def drop_extras() -> None:
        for suffix in ("_scratch", "_table", "_scratch_replica"):
            pg_server.drop_database(pg_db + suffix)
        _drop_safety_copies(pg_server, pg_db)

    request.addfinalizer(drop_extras)
    if where == "local":
        env["SEEDVAULT_REPOSITORY"] = f"file://{tmp_path / 'repo'}"
    else:
        moto = request.getfixturevalue("moto_server")
        bucket = request.getfixturevalue("s3_bucket")
        env.update(SEEDVAULT_REPOSITORY=f"s3://{bucket}/runbook", SEEDVAULT_S3_ENDPOINT=moto.endpoint_url)
        env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    run_blocks(env)
