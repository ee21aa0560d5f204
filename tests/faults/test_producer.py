"""``seedvault put -- COMMAND``: a producer that dies half-way never gives a listed backup (issue 13.3).

Before, the README's ``pg_dump -Fc mydb | seedvault put`` turned a pg_dump that died half-way into a good,
listed and verifying backup that pg_restore cannot read: from a pipe, a truncated stream ends like a complete
one. With ``-- COMMAND`` seedvault runs the producer and commits only when it exits 0.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.helpers import repo_files, run_cli

PAYLOAD_THEN_DIE = "head -c 3000000 /dev/urandom; echo 'pg_dump: error: connection to server was lost' >&2; exit 1"


def _listed(env) -> list[str]:
    return [row["id"] for row in json.loads(run_cli(["list", "--json"], env, check=True).stdout)]


def test_a_producer_that_fails_after_writing_gives_no_backup_and_names_its_error(local_repo):
    good = run_cli(["put", "--label", "good", "--", "sh", "-c", "echo complete"], local_repo.env, check=True)
    good_id = good.stdout.decode().strip()
    before = repo_files(local_repo.root)
    proc = run_cli(["put", "--label", "dump", "--", "sh", "-c", PAYLOAD_THEN_DIE], local_repo.env)
    err = proc.stderr.decode()
    assert proc.returncode == 50, err
    assert err.strip() == "seedvault: error: sh failed (exit 1): pg_dump: error: connection to server was lost"
    assert _listed(local_repo.env) == [good_id]
    assert repo_files(local_repo.root) == before, "nothing of the failed backup is left"
    assert run_cli(["get", good_id], local_repo.env, check=True).stdout == b"complete\n"


def test_a_producer_killed_by_a_signal_gives_no_backup(local_repo):
    proc = run_cli(["put", "--label", "k", "--", "sh", "-c", "head -c 2000000 /dev/zero; kill -9 $$"], local_repo.env)
    assert proc.returncode == 50 and b"killed by signal 9 (SIGKILL)" in proc.stderr, proc.stderr
    assert _listed(local_repo.env) == []


def test_a_missing_producer_is_a_missing_tool(local_repo):
    proc = run_cli(["put", "--label", "m", "--", "/nonexistent/pg_dump", "-Fc"], local_repo.env)
    assert proc.returncode == 53 and b"cannot run '/nonexistent/pg_dump': not found" in proc.stderr


def test_pg_dump_whose_session_is_terminated_mid_copy_gives_no_backup(local_repo, pg_server, pg_db):
    """The README's case with a real pg_dump: its backend is terminated while COPY streams the table."""
    with pg_server.connect(pg_db) as conn:
        conn.execute("CREATE TABLE big AS SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 100000) g")
    env = dict(local_repo.env, **pg_server.env())
    pg_dump = str(pg_server.cluster.binaries.tool("pg_dump"))
    argv = [sys.executable, "-m", "seedvault.cli.app", "put", "--label", "db", "--", pg_dump, "-Fc", "-d", pg_db]
    put = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stopped = False
    try:
        with pg_server.connect() as admin:
            pid = None
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and put.poll() is None:
                row = admin.execute(
                    "SELECT pid, query FROM pg_stat_activity WHERE application_name = 'pg_dump' AND datname = %s",
                    (pg_db,),
                ).fetchone()
                if row and not stopped:
                    os.kill(put.pid, signal.SIGSTOP)  # the pipe fills: pg_dump, then its backend, block mid-COPY
                    stopped = True
                if row and row[1].startswith("COPY public.big"):
                    pid = row[0]
                    break
                time.sleep(0.02)
            assert pid is not None, "pg_dump never reached the COPY of the big table"
            time.sleep(0.5)
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        if stopped:
            os.kill(put.pid, signal.SIGCONT)
    out, err = put.communicate(timeout=120)
    assert put.returncode == 50, err.decode()
    assert b"pg_dump failed (exit 1)" in err and err.decode().count("\n") == 1, err
    assert _listed(local_repo.env) == []
