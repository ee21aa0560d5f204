"""Run RUNBOOK.md's runnable blocks (```bash runbook), extracted from the file itself, in order.

They run against a local repository and against the moto S3 endpoint, with a real legacy file made by
openssl, in one scratch directory per run; a block that fails names its section.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import base_env

RUNBOOK = Path(__file__).resolve().parent.parent / "RUNBOOK.md"
BLOCK_RE = re.compile(r"^```bash runbook\n(.*?)^```", re.S | re.M)


def runbook_blocks() -> list[tuple[str, str]]:
    text = RUNBOOK.read_text()
    blocks = []
    for match in BLOCK_RE.finditer(text):
        heading = re.findall(r"^## (.+)$", text[: match.start()], re.M)
        blocks.append((heading[-1] if heading else "preamble", match.group(1)))
    return blocks


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


def _run_blocks(env: dict[str, str]) -> None:
    bindir = Path(env["WORK"]) / "bin"
    bindir.mkdir()
    shim = bindir / "seedvault"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m seedvault.cli.app "$@"\n')
    shim.chmod(0o755)
    env = dict(env, PATH=f"{bindir}:{env['PATH']}")
    for section, script in runbook_blocks():
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, cwd=env["WORK"], timeout=300
        )
        assert proc.returncode == 0, f"RUNBOOK section '{section}' failed:\n{script}\n{proc.stderr.decode()}"


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
        for suffix in ("_scratch", "_table"):
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
    _run_blocks(env)
