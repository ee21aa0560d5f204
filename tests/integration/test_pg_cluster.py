"""LocalCluster against real PostgreSQL: init, start, password auth over TCP, stop, kill, restart, no leaks."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
from pathlib import Path

import psycopg
import pytest

from seedvault import process
from seedvault.errors import ConfigError, DatabaseUnreachable, SourceError
from seedvault.sources.postgres import binaries
from seedvault.sources.postgres.binaries import PgBinaries
from seedvault.sources.postgres.cluster import LocalCluster
from tests.fixtures.postgres import PgServer

pytestmark = pytest.mark.timeout(300)


def _server_pids(cluster: LocalCluster) -> list[int]:
    """The postmaster and its children."""
    pid = cluster.pid()
    assert pid is not None
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                kids.append(int(entry))
    return [pid, *kids]


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def _new_cluster(base: Path, name: str, password: str | None = None, **kw) -> tuple[LocalCluster, Path | None]:
    """A cluster of its own (not the session one) with a pgpass file when a password is given."""
    home = base / name
    cluster = LocalCluster(home / "data", **kw)
    pgpass = None
    if password is not None:
        pwfile = base / f"{name}.pw"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        try:
            cluster.initdb(password_file=pwfile, sync=False, extra_conf={"fsync": "off"})
        finally:
            pwfile.unlink()
        pgpass = base / f"{name}.pgpass"
        pgpass.write_text(f"127.0.0.1:{cluster.port}:*:postgres:{password}\n")
        pgpass.chmod(0o600)
    else:
        cluster.initdb(sync=False)
    return cluster, pgpass


# --- the session server ------------------------------------------------------------------------------
def test_session_server_connects_through_pgpass(pg_server: PgServer) -> None:
    with pg_server.connect() as conn:
        user, version_num = conn.execute("SELECT current_user, current_setting('server_version_num')").fetchone()
    assert user == "postgres"
    assert int(version_num) // 10000 == pg_server.major
    assert (pg_server.host, pg_server.user) == ("127.0.0.1", "postgres")
    assert "password" not in pg_server.conninfo("postgres")
    assert stat.S_IMODE(pg_server.pgpass_file.stat().st_mode) == 0o600
    assert pg_server.pgpass_file.read_text() == f"127.0.0.1:{pg_server.port}:*:postgres:{pg_server.password}\n"
    assert pg_server.env()["PGPASSFILE"] == str(pg_server.pgpass_file)


def test_session_server_settings(pg_server: PgServer) -> None:
    with pg_server.connect() as conn:

        def show(name: str) -> str:
            return conn.execute(f"SHOW {name}").fetchone()[0]

        assert show("listen_addresses") == "127.0.0.1"
        assert int(show("port")) == pg_server.port
        assert show("data_checksums") == "on"
        assert show("server_encoding") == "UTF8"
        assert show("password_encryption") == "scram-sha-256"
        assert show("unix_socket_directories") == str(pg_server.cluster.socket_dir)
        assert show("unix_socket_permissions") == "0700"
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'").fetchone()[0]
    assert stored.startswith("SCRAM-SHA-256$")
    # The server runs as the unprivileged run_as user, never as root.
    run_as_uid = pwd.getpwnam(pg_server.cluster.run_as).pw_uid
    assert run_as_uid != 0
    assert {_uid_of(p) for p in _server_pids(pg_server.cluster)} == {run_as_uid}


def test_pg_db_is_fresh_and_usable(pg_server: PgServer, pg_db: str) -> None:
    with pg_server.connect(pg_db) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == pg_db
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")


def test_tcp_without_the_password_is_refused(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        psycopg.connect(pg_server.conninfo(), passfile=os.devnull, connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_server.conninfo(), password="not-the-password", connect_timeout=5)
    with pytest.raises(DatabaseUnreachable) as err:
        pg_server.cluster.connect(passfile=os.devnull)
    assert "\n" not in err.value.one_line()
    # And the real password works without any pgpass file.
    pg_server.cluster.connect(password=pg_server.password, passfile=os.devnull).close()


def test_password_never_leaks(pg_server: PgServer, pg_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    password = pg_server.password.encode()
    cluster = pg_server.cluster
    # Exercise the server a bit first: a good login, a failed one, some SQL.
    with pg_server.connect(pg_db) as conn:
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_server.conninfo(), password=pg_server.password + "x", connect_timeout=5)

    assert password not in cluster.log_file.read_bytes()
    assert cluster.log_file.stat().st_size > 0
    for name in ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf"):
        assert password not in (cluster.data_dir / name).read_bytes(), name
    for dirpath, _dirs, files in os.walk(cluster.data_dir):  # the plaintext is nowhere (only a SCRAM verifier)
        for name in files:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_socket():
                assert password not in path.read_bytes(), path
    assert not list(cluster.data_dir.parent.glob(".initdb-pw-*")), "initdb's temporary password copy was left"

    server = _server_pids(cluster)
    assert len(server) >= 3  # postmaster, checkpointer, ... (so we really looked at the server's processes)
    for pid in server:
        assert password not in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert password not in Path(f"/proc/{pid}/environ").read_bytes()
    for entry in os.listdir("/proc"):  # nor in any other process's argv on the machine
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            assert password not in cmdline, f"password in argv of pid {entry}"
    assert pg_server.password not in pg_server.conninfo(pg_db)
    assert all(pg_server.password not in v for k, v in pg_server.env().items())
    # The secret is registered: spawning anything with it in argv is refused.
    with pytest.raises(ConfigError):
        process.run(["echo", pg_server.password])


# --- clusters of their own ---------------------------------------------------------------------------------
def test_lifecycle_stop_kill_restart(pg_base_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    password = "sv-life-" + os.urandom(12).hex()
    process.register_secret(password)
    audit = tmp_path / "spawn.jsonl"
    monkeypatch.setenv(process.AUDIT_ENV, str(audit))
    cluster, pgpass = _new_cluster(pg_base_dir, "life", password)
    try:
        assert not cluster.is_running() and cluster.pid() is None
        cluster.start()
        assert cluster.is_running()
        cluster.wait_ready(timeout=10)
        with cluster.connect(passfile=str(pgpass), autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (1)")

        cluster.stop()
        assert not cluster.is_running() and cluster.pid() is None
        with pytest.raises(DatabaseUnreachable):
            cluster.connect(passfile=str(pgpass), connect_timeout=2)
        cluster.stop()  # stopping a stopped cluster is a no-op

        again = LocalCluster(cluster.data_dir)  # a new object on an existing cluster keeps its port
        assert again.port == cluster.port and not again.is_running()
        cluster.start()
        assert again.is_running() and again.pid() == cluster.pid()
        with cluster.connect(passfile=str(pgpass), autocommit=True) as conn:
            conn.execute("INSERT INTO kept VALUES (2)")  # committed: must survive the crash
        postmaster = cluster.pid()
        cluster.kill()
        assert not cluster.is_running() and cluster.pid() is None
        assert Path(f"/proc/{postmaster}").exists() is False or "Z" in Path(f"/proc/{postmaster}/stat").read_text()

        cluster.start()
        cluster.wait_ready(timeout=30)
        with cluster.connect(passfile=str(pgpass)) as conn:
            assert conn.execute("SELECT array_agg(x ORDER BY x) FROM kept").fetchone()[0] == [1, 2]
        log_text = cluster.log_file.read_text()
        assert "not properly shut down" in log_text or "interrupted" in log_text  # crash recovery ran
        assert password not in log_text
    finally:
        cluster.destroy()
    assert not cluster.data_dir.exists() and not cluster.log_file.exists()
    ran = [json.loads(line) for line in audit.read_text().splitlines()]
    assert any(Path(r["argv"][0]).name == "initdb" for r in ran)
    assert any(a.startswith("--pwfile=") for r in ran for a in r["argv"])
    assert all(password not in " ".join(r["argv"]) for r in ran)


def test_restored_data_directory_is_configured_then_started(pg_base_dir: Path) -> None:
    original, _ = _new_cluster(pg_base_dir, "orig")
    restored_dir = pg_base_dir / "restored-copy" / "data"
    try:
        original.start()
        with original.connect(autocommit=True, host=str(original.socket_dir)) as conn:  # local socket: trust
            conn.execute("CREATE TABLE marker AS SELECT 42 AS answer")
        original.stop()
        # What a restore lays out: root-owned files, a postgresql.conf without seedvault's settings.
        restored_dir.parent.mkdir(mode=0o755)
        shutil.copytree(original.data_dir, restored_dir)
        conf = restored_dir / "postgresql.conf"
        conf.write_text(conf.read_text().split("# --- seedvault settings: begin")[0] + "port = 5432\n")
        restored = LocalCluster(restored_dir)
        assert restored.port != 5432
        with pytest.raises(ConfigError, match="no seedvault settings"):
            restored.start()
        restored.chown_tree(restored_dir)
        restored.configure(extra_conf={"fsync": "off"})
        restored.start()
        try:
            with restored.connect(host=str(restored.socket_dir)) as conn:
                assert conn.execute("SELECT answer FROM marker").fetchone()[0] == 42
                assert conn.execute("SHOW port").fetchone()[0] == str(restored.port)
        finally:
            restored.destroy()
    finally:
        original.destroy()


def test_context_manager_is_explicit(pg_base_dir: Path) -> None:
    with LocalCluster(pg_base_dir / "ctx" / "data") as cluster:
        assert not cluster.data_dir.exists()  # entering does nothing
        cluster.initdb(sync=False)
        cluster.start()
        assert cluster.is_running()
    try:
        assert not cluster.is_running()  # leaving stops the server...
        assert (cluster.data_dir / "PG_VERSION").exists()  # ...and keeps the data
    finally:
        cluster.destroy()


def test_local_socket_is_private_to_run_as(pg_base_dir: Path) -> None:
    cluster, _ = _new_cluster(pg_base_dir, "sock")
    try:
        cluster.start()
        st = cluster.socket_dir.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == cluster.uid
        assert stat.S_IMODE(cluster.data_dir.stat().st_mode) == 0o700
        hba = (cluster.data_dir / "pg_hba.conf").read_text()
        assert "127.0.0.1/32            scram-sha-256" in hba and "0.0.0.0" not in hba and "::1" not in hba
    finally:
        cluster.destroy()


def test_start_failure_is_one_clear_line(pg_server: PgServer, pg_base_dir: Path) -> None:
    cluster, _ = _new_cluster(pg_base_dir, "clash", port=pg_server.port)  # explicit port: no retry
    try:
        with pytest.raises(SourceError) as err:
            cluster.start(timeout=20)
        text = err.value.one_line()
        assert "did not start" in text and "TCP/IP" in text and str(cluster.log_file) in text
        assert "\n" not in text
        assert not cluster.is_running()
    finally:
        cluster.destroy()


def test_auto_port_taken_meanwhile_moves_on(pg_base_dir: Path) -> None:
    cluster = LocalCluster(pg_base_dir / "moving" / "data")
    first = cluster.port
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.bind(("127.0.0.1", first))
            squatter.listen()
            cluster.initdb(sync=False)
            cluster.start()
            assert cluster.port != first and cluster.is_running()
            assert f"port = {cluster.port}" in (cluster.data_dir / "postgresql.conf").read_text()
            cluster.wait_ready(timeout=10)  # answers on 127.0.0.1 at the new port
    finally:
        cluster.destroy()


def test_unreachable_parent_is_refused_by_name(pg_base_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root runs PostgreSQL as another user")
    closed = pg_base_dir / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o700)
    cluster = LocalCluster(closed / "deeper" / "data")
    with pytest.raises(ConfigError) as err:
        cluster.initdb(sync=False)
    assert str(closed) in err.value.message and cluster.run_as in err.value.message
    assert not (closed / "deeper").exists()


@pytest.mark.skipif(binaries.pgserver_bindir() is None, reason="pgserver wheel not installed")
def test_binaries_out_of_run_as_reach_are_refused_by_name(pg_base_dir: Path) -> None:
    wheel = binaries.pgserver_bindir()
    blocked = next((p for p in [*reversed(wheel.parents), wheel] if not os.stat(p).st_mode & stat.S_IXOTH), None)
    if os.geteuid() != 0 or blocked is None:
        pytest.skip("the pgserver wheel is reachable by everyone here")
    cluster = LocalCluster(pg_base_dir / "unreachable-bin" / "data", binaries=PgBinaries(wheel, 16, "test"))
    with pytest.raises(ConfigError) as err:
        cluster.initdb(sync=False)
    assert str(blocked) in err.value.message and "binaries" in err.value.message


def test_initdb_refuses_a_non_empty_directory(pg_base_dir: Path) -> None:
    data = pg_base_dir / "busy" / "data"
    data.mkdir(parents=True)
    (data / "something").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        LocalCluster(data).initdb(sync=False)


def test_chown_tree_gives_a_tree_to_run_as(pg_base_dir: Path) -> None:
    cluster = LocalCluster(pg_base_dir / "restored" / "data")
    tree = pg_base_dir / "restored" / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "link").symlink_to("/etc/passwd")
    cluster.chown_tree(tree)
    for path in [tree, tree / "a", tree / "a" / "b", tree / "a" / "b" / "f", tree / "link"]:
        assert os.lstat(path).st_uid == cluster.uid, path
    assert os.stat("/etc/passwd").st_uid == 0  # symlinks are not followed


def test_server_does_not_inherit_our_secrets(pg_base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The postgres-owned server must not be able to read AWS credentials or passwords from its environ."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sv-env-secret-should-not-reach-server")
    monkeypatch.setenv("PGPASSWORD", "sv-env-pgpassword-should-not-reach-server")
    cluster = LocalCluster(pg_base_dir / "envcheck" / "data")
    cluster.initdb(sync=False)
    cluster.start()
    try:
        pid = cluster.pid()
        assert pid
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"sv-env-secret" not in environ and b"sv-env-pgpassword" not in environ
        assert b"PATH=" in environ
    finally:
        cluster.destroy()
