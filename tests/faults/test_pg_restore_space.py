"""Restores that would not fit: refused up front with the numbers, or stopped with one line (issue 13.6).

Real small filesystems: tmpfs mounts (the tests run as root) for a ``--spool-dir`` and for the data directory
of a second PostgreSQL server, so the free space seedvault measures is the filesystem's own. Without room for
a second copy, pg_restore would fill the server's disk and PostgreSQL would PANIC; a spool directory that
fills used to end as "internal error: OSError: [Errno 28]".
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedvault import process
from seedvault.sources.postgres.binaries import preferred_server_binaries
from seedvault.sources.postgres.cluster import HOST, LocalCluster
from tests.fixtures.postgres import TEST_SERVER_CONF, PgServer
from tests.helpers import run_cli

MIB = 1 << 20


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path} (these tests run as root): {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
        path.rmdir()


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _dsn(server, db: str) -> str:
    return f"postgresql://{server.user}@{server.host}:{server.port}/{db}"


def _names(server) -> set[str]:
    with server.connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def _backup(env, server, db: str) -> dict:
    res = run_cli(["backup", "postgres", "--dsn", _dsn(server, db), "--json", "--no-globals"], env, check=True)
    return json.loads(res.stdout)


def _one_line(res: subprocess.CompletedProcess) -> str:
    err = res.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("seedvault: error: "), err
    assert "internal error" not in err
    return err


# --- --jobs: the local spool directory -----------------------------------------------------------------------
@pytest.fixture
def big_backup(local_repo, pg_server, pg_db):
    """A backup whose archive (about 30 MiB) is larger than the 20 MiB spool tmpfs: (env, summary)."""
    with pg_server.connect(pg_db) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, payload text)")
        conn.execute("INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 400000) g")
    env = dict(local_repo.env, **pg_server.env())
    summary = _backup(env, pg_server, pg_db)
    assert summary["raw_size"] > 25 * MIB, summary
    return env, summary


@pytest.fixture
def small_spool(pg_base_dir) -> Iterator[Path]:
    with tmpfs(pg_base_dir / f"spool-{secrets.token_hex(4)}", "20m") as mnt:
        yield mnt


def test_spool_too_small_is_refused_before_anything_is_created(big_backup, small_spool, pg_server, pg_db):
    env, summary = big_backup
    target = f"{pg_db}_spooled"
    before = _names(pg_server)
    argv = ["restore", "postgres", summary["id"], "--target-dsn", _dsn(pg_server, target)]
    res = run_cli([*argv, "--jobs", "2", "--spool-dir", str(small_spool)], env)
    assert res.returncode == 51, res.stderr
    err = _one_line(res)
    assert "not enough free space to spool the archive" in err and str(small_spool) in err
    free = _free(small_spool) // MIB
    needed = int(summary["raw_size"] * 1.05 + 64 * MIB) // MIB
    assert f"needs about {needed} MiB" in err and f"{free} MiB are free" in err and "--skip-space-check" in err
    assert _names(pg_server) == before and list(small_spool.iterdir()) == []


def test_spool_filling_up_mid_restore_is_one_line_naming_the_directory(big_backup, small_spool, pg_server, pg_db):
    env, summary = big_backup
    target = f"{pg_db}_spooled"
    before = _names(pg_server)
    argv = ["restore", "postgres", summary["id"], "--target-dsn", _dsn(pg_server, target), "--jobs", "2"]
    res = run_cli([*argv, "--spool-dir", str(small_spool), "--skip-space-check"], env)
    assert res.returncode == 51, res.stderr
    err = _one_line(res)
    assert f"the spool directory {small_spool} filled up after" in err and "No space left on device" in err, err
    assert _names(pg_server) == before, "the temporary database is dropped again"
    assert list(small_spool.iterdir()) == [], "the partial spool is removed"


# --- the server's data directory ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_server(pg_base_dir) -> Iterator[PgServer]:
    """A second PostgreSQL server whose data directory is a 400 MiB tmpfs."""
    password = "sv-small-" + secrets.token_urlsafe(16)
    process.register_secret(password)
    with tmpfs(pg_base_dir / f"small-server-{secrets.token_hex(4)}", "400m") as mnt:
        cluster = LocalCluster(mnt / "data", binaries=preferred_server_binaries())
        pgpass = pg_base_dir / f"pgpass-{mnt.name}"
        try:
            conf = {**TEST_SERVER_CONF, "max_wal_size": "32MB", "min_wal_size": "32MB"}
            cluster.initdb("postgres", password=password, extra_conf=conf, sync=False)
            cluster.start(timeout=60)
            fd = os.open(pgpass, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{HOST}:{cluster.port}:*:postgres:{password}\n")
            yield PgServer(cluster, pgpass, password)
        finally:
            cluster.destroy()
            pgpass.unlink(missing_ok=True)


def _fill(server: PgServer, db: str, mib: int) -> None:
    """A table of about ``mib`` MiB that neither compresses in place nor writes WAL (unlogged, external)."""
    server.create_database(db)
    with server.connect(db) as conn:
        conn.execute("CREATE UNLOGGED TABLE big (id int PRIMARY KEY, payload text)")
        conn.execute("ALTER TABLE big ALTER payload SET STORAGE EXTERNAL")
        conn.execute("INSERT INTO big SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, %s) g", (mib * 1024,))


def test_replace_without_room_for_a_second_copy_is_refused(small_server, local_repo):
    env = dict(local_repo.env, **small_server.env())
    _fill(small_server, "live", 200)
    summary = _backup(env, small_server, "live")
    body = json.loads(run_cli(["show", summary["id"], "--json"], env, check=True).stdout)
    size = body["source"]["database_size"]
    free = _free(small_server.cluster.data_dir)
    needed = size + max(size // 5, min(32 * MIB, size), 64 * MIB)  # max_wal_size is 32MB there
    # The live copy took most of the disk: what is left is more than the margin alone, less than a second copy.
    assert max(size // 5, 64 * MIB) < free < needed, (size, free, needed)
    before = _names(small_server)

    res = run_cli(["restore", "postgres", summary["id"], "--target-dsn", _dsn(small_server, "live"), "--replace"], env)
    assert res.returncode == 51, res.stderr
    err = _one_line(res)
    assert "not enough free space for the restore" in err and str(small_server.cluster.data_dir) in err
    assert f"needs about {needed // MIB} MiB" in err and f"{size // MIB} MiB at backup" in err
    shown_free = int(err.split(" MiB are free")[0].rsplit(" ", 1)[1])
    assert abs(shown_free - free // MIB) <= 2 and "--skip-space-check" in err
    assert _names(small_server) == before, "nothing was created"
    with small_server.connect("live") as conn:
        assert conn.execute("SELECT count(*) FROM big").fetchone()[0] == 200 * 1024

    # A database that fits is restored, and the report says what was measured.
    small_server.create_database("little")
    with small_server.connect("little") as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 100)")
    little = _backup(env, small_server, "little")
    argv = ["restore", "postgres", little["id"], "--target-dsn", _dsn(small_server, "little_copy"), "--json"]
    report = json.loads(run_cli(argv, env, check=True).stdout)
    assert report["space"]["method"] == "statvfs on this host"
    assert report["space"]["where"] == str(small_server.cluster.data_dir)
    assert report["space"]["needed"] < report["space"]["free"] < needed


def test_free_space_asked_of_the_server_itself(small_server):
    """The way for a server on another host: df run by the server (COPY FROM PROGRAM), same answer."""
    from seedvault.sources.postgres import space

    with small_server.connect() as conn:
        by_df = space._df_on_server(conn)
        assert isinstance(by_df, int), by_df
        assert abs(by_df - _free(small_server.cluster.data_dir)) <= 4 * MIB
        measured = space.server_free_space(conn)
        assert measured.method == "statvfs on this host" and measured.free is not None


@pytest.fixture
def limited_role(pg_server, pg_db):
    """A role that may create databases but neither see data_directory nor run programs on the server."""
    role, password = "sv_restorer", "restorer-pw-" + secrets.token_hex(6)
    with pg_server.connect() as conn:
        conn.execute(f"DROP ROLE IF EXISTS {role}")
        conn.execute(f"CREATE ROLE {role} LOGIN CREATEDB PASSWORD '{password}'")
    with pg_server.connect(pg_db) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        conn.execute("INSERT INTO t SELECT generate_series(1, 10)")
    try:
        yield role, password
    finally:
        with pg_server.connect() as conn:
            for (name,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datdba = %s::regrole", (role,)
            ).fetchall():
                pg_server.drop_database(name)
            conn.execute(f"DROP ROLE {role}")


def test_free_space_that_cannot_be_measured_needs_the_override(local_repo, pg_server, pg_db, limited_role):
    role, password = limited_role
    env = dict(local_repo.env, **pg_server.env())
    summary = _backup(env, pg_server, pg_db)
    dsn = f"postgresql://{role}@{pg_server.host}:{pg_server.port}/{pg_db}_mine"
    argv = ["restore", "postgres", summary["id"], "--target-dsn", dsn, "--no-owner", "--json"]
    role_env = dict(env, PGPASSWORD=password)
    res = run_cli(argv, role_env)
    assert res.returncode == 51, res.stderr
    err = _one_line(res)
    assert "cannot tell how much space is free in the data directory" in err
    assert "may not see data_directory" in err and "may not run df on the server" in err
    assert "--skip-space-check" in err and f"{pg_db}_mine" not in _names(pg_server)

    res = run_cli([*argv, "--skip-space-check"], role_env)
    assert res.returncode == 0, res.stderr.decode()
    report = json.loads(res.stdout)
    assert report["rows_verified"] == 10 and report["space"] is None
    assert "free space on the server not checked (--skip-space-check)" in report["notes"]


def test_the_check_is_documented_in_help():
    res = run_cli(["restore", "postgres", "--help"], dict(os.environ, COLUMNS="200"), check=True)
    text = res.stdout.decode()
    assert "--skip-space-check" in text and "free space" in text
