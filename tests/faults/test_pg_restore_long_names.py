"""Restores into databases with long non-ASCII names, interrupted and run again (issue 13.5).

PostgreSQL names hold 63 *bytes* (NAMEDATALEN - 1) and longer ones are cut on a UTF-8 character boundary.
A temporary database ``<db>_sv_<stamp>`` derived by cutting *characters* is stored under a shorter name
than seedvault computes, so after a kill the next run did not recognise its own leftover ("exists and is
not an unfinished seedvault restore"). Each test kills the real CLI during pg_restore and runs it again.
"""

from __future__ import annotations

import json
import signal

import pytest
from psycopg import sql

from seedvault.ops.postgres_restore import MARKER_PREFIX, work_name
from seedvault.sources.postgres.sample import load_sample
from tests.helpers import run_cli

LIVE = "€" * 20  # 60 bytes in 20 characters; "€" is 3 bytes, so a cut can fall inside one
NEW = "ü" * 30  # 60 bytes in 30 characters
STAMP_ID = "20261202T134945Z-0a1b2c"


def _pg_cut(name: str) -> str:
    """What PostgreSQL stores for ``name``: at most 63 bytes of UTF-8, cut on a character boundary."""
    return name.encode()[:63].decode(errors="ignore")


def _dsn(pg_server, db: str) -> str:
    return f"postgresql://{pg_server.user}@{pg_server.host}:{pg_server.port}/{db}"


def _names(pg_server, prefix: str) -> set[str]:
    with pg_server.connect() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,))
        return {r[0] for r in rows}


def _drop_all(pg_server, prefix: str) -> None:
    for name in _names(pg_server, prefix):
        pg_server.drop_database(name)


def _count(pg_server, db: str) -> int:
    with pg_server.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM order_items").fetchone()[0]


@pytest.fixture
def long_case(local_repo, pg_server):
    """A live database named LIVE (sample data) and its backup in small chunks: (env, backup id)."""
    _drop_all(pg_server, LIVE[:3])
    _drop_all(pg_server, NEW[:3])
    pg_server.create_database(LIVE)
    with pg_server.connect(LIVE) as conn:
        load_sample(conn, customers=100, orders=1000, readings=4000)
    env = dict(local_repo.env, **pg_server.env())
    # Small chunks, so the kill at pg-restore-streaming lands while pg_restore is loading.
    res = run_cli(
        ["backup", "postgres", "--dsn", _dsn(pg_server, LIVE), "--json", "--no-globals"],
        dict(env, SEEDVAULT_CHUNK_SIZE=str(4 << 10)),
        check=True,
    )
    try:
        yield env, json.loads(res.stdout)["id"]
    finally:
        _drop_all(pg_server, LIVE[:3])
        _drop_all(pg_server, NEW[:3])


def test_derived_names_are_cut_by_bytes_on_a_character_boundary():
    from seedvault.ops.postgres_restore import _db_name, clip_name

    assert clip_name("€" * 22) == "€" * 21  # 63 bytes
    assert clip_name("a" + "€" * 21) == "a" + "€" * 20  # 61 bytes: another "€" would make 64
    assert clip_name("x" * 63) == "x" * 63 and clip_name("x" * 64) == "x" * 63
    work = work_name(LIVE, STAMP_ID)
    assert work == "€" * 14 + "_sv_20261202t134945z" and len(work.encode()) == 62
    safety = _db_name(NEW, "_before_20261202t134945_2")
    assert safety.endswith("_before_20261202t134945_2") and len(safety.encode()) <= 63
    safety.encode().decode()  # still valid UTF-8


def _killed(env, trace, *argv: str):
    crash_env = dict(env, SEEDVAULT_FAULT_KILL_AT="pg-restore-streaming", SEEDVAULT_FAULT_TRACE=str(trace))
    res = run_cli(list(argv), crash_env)
    assert res.returncode == -signal.SIGKILL, res.stderr.decode()
    assert trace.read_text().split()[-1] == "pg-restore-streaming"


def test_replace_killed_during_pg_restore_then_run_again(long_case, pg_server, tmp_path):
    env, bid = long_case
    with pg_server.connect(LIVE) as conn:
        conn.execute("DELETE FROM order_items WHERE order_id > 100")
    damaged = _count(pg_server, LIVE)
    argv = ["restore", "postgres", bid, "--target-dsn", _dsn(pg_server, LIVE), "--replace", "--json"]
    _killed(env, tmp_path / "trace", *argv)
    (leftover,) = _names(pg_server, LIVE[:3]) - {LIVE}
    assert leftover == work_name(LIVE, bid), "the temporary database is stored under the name seedvault derives"
    assert _count(pg_server, LIVE) == damaged, "the live database is untouched"

    res = run_cli(argv, env)
    assert res.returncode == 0, res.stderr.decode()
    report = json.loads(res.stdout)
    assert any(n.startswith(f"dropped {leftover}") for n in report["notes"]), report["notes"]
    safety = report["safety_copy"]
    assert _names(pg_server, LIVE[:3]) == {LIVE, safety}, "the safety copy is known by its real name"
    assert len(safety.encode()) <= 63 and "_before_" in safety
    assert _count(pg_server, safety) == damaged and _count(pg_server, LIVE) == 3000


def test_new_database_restore_killed_then_run_again(long_case, pg_server, tmp_path):
    env, bid = long_case
    argv = ["restore", "postgres", bid, "--target-dsn", _dsn(pg_server, NEW)]
    _killed(env, tmp_path / "trace", *argv)
    assert _names(pg_server, NEW[:3]) == {work_name(NEW, bid)}
    res = run_cli(argv, env)
    assert res.returncode == 0, res.stderr.decode()
    assert _names(pg_server, NEW[:3]) == {NEW}
    assert _count(pg_server, NEW) == 3000


def test_leftover_named_by_an_older_seedvault_is_recognised(long_case, pg_server):
    """Older versions cut the name by characters and PostgreSQL cut it again: that leftover is still ours."""
    env, bid = long_case
    old_name = _pg_cut(NEW + f"_sv_{bid.split('-')[0].lower()}")
    assert old_name == NEW + "_sv"
    marker = MARKER_PREFIX + json.dumps({"state": "restoring", "backup": bid, "into": NEW}, sort_keys=True)
    with pg_server.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(old_name)))
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(old_name), sql.Literal(marker)))
    res = run_cli(["restore", "postgres", bid, "--target-dsn", _dsn(pg_server, NEW)], env)
    assert res.returncode == 0, res.stderr.decode()
    assert f"note: dropped {old_name}, an unverified restore".encode() in res.stderr
    assert _names(pg_server, NEW[:3]) == {NEW}


def test_target_name_longer_than_63_bytes_is_refused(long_case, pg_server):
    env, bid = long_case
    res = run_cli(["restore", "postgres", bid, "--target-dsn", _dsn(pg_server, "é" * 32)], env)
    assert res.returncode == 2 and res.stderr.count(b"\n") == 1, res.stderr
    assert b"64 bytes long" in res.stderr and b"at most 63 bytes" in res.stderr
