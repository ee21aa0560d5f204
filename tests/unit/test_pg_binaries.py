"""PostgreSQL binary discovery: search order, PG_BIN, version parsing, error text, the pgserver copy."""

from __future__ import annotations

import os
import pwd
import stat
import time
from pathlib import Path

import pytest

from seedvault import process
from seedvault.errors import ConfigError, SourceError, ToolMissing
from seedvault.sources.postgres import binaries
from seedvault.sources.postgres.binaries import (
    CLIENT_TOOLS,
    SERVER_TOOLS,
    SUPPORTED_SERVER_MAJORS,
    PgBinaries,
    find_client_binaries,
    find_server_binaries,
    parse_version,
)

REAL_PGSERVER = binaries.pgserver_bindir()


def fake_bindir(directory: Path, version: str, tools=CLIENT_TOOLS + SERVER_TOOLS, *, debian: bool = False) -> Path:
    """A bindir of shell scripts that answer ``--version`` like the real tools."""
    directory.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        suffix = f" (Debian {version}-1.pgdg120+1)" if debian else ""
        script = directory / tool
        script.write_text(f'#!/bin/sh\necho "{tool} (PostgreSQL) {version}{suffix}"\n')
        script.chmod(0o755)
    return directory


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No PG_BIN, an empty /usr/lib/postgresql, an empty PATH, no pgserver wheel: tests add what they need."""
    monkeypatch.delenv("PG_BIN", raising=False)
    system = tmp_path / "usr-lib-postgresql"
    system.mkdir()
    monkeypatch.setattr(binaries, "SYSTEM_PG_ROOT", system)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(binaries, "pgserver_bindir", lambda: None)
    return tmp_path


def system_bindir(root: Path, major: int, version: str | None = None, **kw) -> Path:
    return fake_bindir(root / "usr-lib-postgresql" / str(major) / "bin", version or f"{major}.3", **kw)


# --- version parsing -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "version", "major"),
    [
        ("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n", "15.18", 15),
        ("16.4", "16.4", 16),
        ("psql (PostgreSQL) 17.0\n", "17.0", 17),
        ("postgres (PostgreSQL) 18beta1\n", "18beta1", 18),
        ("pg_dump (PostgreSQL) 9.6.24\n", "9.6.24", 9),
        ("pg_dump (PostgreSQL) 13.16 (Ubuntu 13.16-1.pgdg22.04+1)", "13.16", 13),
    ],
)
def test_parse_version(text: str, version: str, major: int) -> None:
    assert parse_version(text) == (version, major)


def test_parse_version_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_version("mysqldump  Ver 8.0.36")


def test_fake_tool_version_is_read_and_cached(isolated: Path) -> None:
    bindir = fake_bindir(isolated / "fake", "15.18", debian=True)
    b = PgBinaries(bindir, 15, "test")
    assert b.version("pg_dump") == "15.18"
    # A changed file is probed again (cache key includes size and mtime).
    time.sleep(0.01)
    fake_bindir(bindir, "16.4", tools=("pg_dump",))
    assert b.version("pg_dump") == "16.4"


def test_tool_missing_names_tool_and_bindir(isolated: Path) -> None:
    bindir = fake_bindir(isolated / "fake", "15.2", tools=("pg_dump",))
    with pytest.raises(ToolMissing) as err:
        PgBinaries(bindir, 15, "test").tool("pg_restore")
    assert "pg_restore" in err.value.message and str(bindir) in err.value.message


def test_unparseable_version_is_tool_missing(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = isolated / "weird"
    bindir.mkdir()
    for tool in CLIENT_TOOLS:
        (bindir / tool).write_text("#!/bin/sh\necho hello\n")
        (bindir / tool).chmod(0o755)
    monkeypatch.setenv("PG_BIN", str(bindir))
    with pytest.raises(ToolMissing, match="printed no PostgreSQL version"):
        find_client_binaries(15)


# --- client search order ---------------------------------------------------------------------------------
def test_pg_bin_wins_over_a_closer_system_major(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system_bindir(isolated, 15)
    pg_bin = fake_bindir(isolated / "custom", "17.1")
    monkeypatch.setenv("PG_BIN", str(pg_bin))
    found = find_client_binaries(15)
    assert found == PgBinaries(pg_bin, 17, "PG_BIN")


def test_pg_bin_too_old_is_an_error_not_a_fallthrough(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system_bindir(isolated, 17)  # would fit, but the operator asked for PG_BIN
    pg_bin = fake_bindir(isolated / "custom", "15.4")
    monkeypatch.setenv("PG_BIN", str(pg_bin))
    with pytest.raises(ToolMissing) as err:
        find_client_binaries(16)
    text = err.value.one_line()
    assert f"PG_BIN={pg_bin}" in text and "15" in text and "16" in text
    assert "\n" not in text


def test_pg_bin_missing_a_tool_is_an_error(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg_bin = fake_bindir(isolated / "custom", "16.1", tools=("pg_dump", "pg_restore", "pg_dumpall"))
    monkeypatch.setenv("PG_BIN", str(pg_bin))
    with pytest.raises(ToolMissing, match="without psql"):
        find_client_binaries(16)


def test_system_own_major_first_then_newer(isolated: Path) -> None:
    for major in (14, 15, 16, 17):
        system_bindir(isolated, major)
    assert find_client_binaries(15).major == 15
    assert find_client_binaries(15).origin == "system"
    assert find_client_binaries(16).bindir == isolated / "usr-lib-postgresql" / "16" / "bin"
    (isolated / "usr-lib-postgresql" / "16" / "bin" / "psql").unlink()  # incomplete: next newer one
    assert find_client_binaries(16).major == 17


def test_older_client_never_fits(isolated: Path) -> None:
    system_bindir(isolated, 16)
    with pytest.raises(ToolMissing):
        find_client_binaries(17)


def test_path_after_system_and_pgserver_last(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system_bindir(isolated, 16)
    on_path = fake_bindir(isolated / "path-bin", "17.2")
    wheel = fake_bindir(isolated / "wheel" / "bin", "17.5")
    monkeypatch.setenv("PATH", f"relative/bin{os.pathsep}{on_path}")
    monkeypatch.setattr(binaries, "pgserver_bindir", lambda: wheel)
    assert find_client_binaries(16).origin == "system"
    assert find_client_binaries(17) == PgBinaries(on_path, 17, "PATH")
    monkeypatch.setenv("PATH", str(isolated / "empty-path"))
    assert find_client_binaries(17) == PgBinaries(wheel, 17, "pgserver wheel")


def test_nothing_fits_names_what_was_found_where(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys15 = system_bindir(isolated, 15, "15.18", debian=True)
    wheel = fake_bindir(isolated / "wheel" / "bin", "16.4")
    monkeypatch.setattr(binaries, "pgserver_bindir", lambda: wheel)
    with pytest.raises(ToolMissing) as err:
        find_client_binaries(17)
    assert err.value.message == f"no pg_dump for a PostgreSQL 17 server: found 15 ({sys15}), 16 (pgserver wheel)"
    assert "postgresql-client-17" in err.value.hint and "PG_BIN" in err.value.hint
    assert "\n" not in err.value.one_line()


def test_nothing_at_all(isolated: Path) -> None:
    with pytest.raises(ToolMissing, match="found nothing"):
        find_client_binaries(16)


@pytest.mark.parametrize("major", [12, 18])
def test_unsupported_server_major(isolated: Path, major: int) -> None:
    assert major not in SUPPORTED_SERVER_MAJORS
    with pytest.raises(SourceError, match="not supported"):
        find_client_binaries(major)


# --- server binaries -------------------------------------------------------------------------------------
def test_server_exact_major(isolated: Path) -> None:
    system_bindir(isolated, 15)
    system_bindir(isolated, 16)
    assert find_server_binaries(15).major == 15
    with pytest.raises(ToolMissing) as err:
        find_server_binaries(17)
    assert "PostgreSQL 17 server binaries" in err.value.message and "15 (" in err.value.message


def test_server_newest_when_no_major(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system_bindir(isolated, 14)
    system_bindir(isolated, 15)
    on_path = fake_bindir(isolated / "path-bin", "15.9")
    monkeypatch.setenv("PATH", str(on_path))
    found = find_server_binaries()
    assert (found.major, found.origin) == (15, "system")  # ties go to the earlier place in the search order


def test_server_pg_bin_wrong_major(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg_bin = fake_bindir(isolated / "custom", "16.1")
    monkeypatch.setenv("PG_BIN", str(pg_bin))
    assert find_server_binaries(16).origin == "PG_BIN"
    assert find_server_binaries().origin == "PG_BIN"
    with pytest.raises(ToolMissing, match=r"PG_BIN=.* does not hold PostgreSQL 15 server binaries"):
        find_server_binaries(15)


# --- the real pgserver wheel -----------------------------------------------------------------------------
needs_pgserver = pytest.mark.skipif(REAL_PGSERVER is None, reason="pgserver wheel not installed")


@needs_pgserver
def test_pgserver_wheel_is_discovered(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binaries, "pgserver_bindir", lambda: REAL_PGSERVER)
    found = find_client_binaries(15)
    assert found.origin == "pgserver wheel" and found.bindir == REAL_PGSERVER
    assert found.bindir.parts[-3:] == ("pgserver", "pginstall", "bin")
    assert found.major >= 16 and found.version("pg_dump").startswith(str(found.major))


@needs_pgserver
def test_pgserver_server_binaries_are_a_world_readable_copy(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binaries, "pgserver_bindir", lambda: REAL_PGSERVER)
    found = find_server_binaries()
    assert found.origin == "pgserver wheel"
    assert str(found.bindir).startswith("/var/tmp/seedvault-pgserver-")
    for parent in [found.bindir, *found.bindir.parents]:
        assert os.stat(parent).st_mode & stat.S_IXOTH, parent
    for tool in SERVER_TOOLS:
        assert os.stat(found.tool(tool)).st_mode & stat.S_IXOTH
    # The copy is runnable, bundled libpq included, by an unprivileged user.
    kwargs = {"user": "postgres"} if os.geteuid() == 0 and _user_exists("postgres") else {}
    for tool in ("postgres", "initdb", "pg_dump"):
        out = process.run([found.bindir / tool, "--version"], capture_output=True, text=True, cwd="/", **kwargs)
        assert out.returncode == 0, out.stderr
        assert parse_version(out.stdout)[1] == found.major


@needs_pgserver
def test_pgserver_copy_is_made_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binaries, "PGSERVER_CACHE_ROOT", tmp_path)
    first = binaries.pgserver_world_readable_copy(REAL_PGSERVER)
    root = first.parents[2]
    assert (root / "SEEDVAULT-COPY-COMPLETE").is_file() and (root / "pgserver.libs").is_dir()
    mtime = root.stat().st_mtime_ns
    assert binaries.pgserver_world_readable_copy(REAL_PGSERVER) == first
    assert root.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no temporary leftovers
    out = process.run([first / "pg_restore", "--version"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@needs_pgserver
def test_pgserver_copy_refuses_a_planted_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(binaries, "PGSERVER_CACHE_ROOT", tmp_path)
    planted = tmp_path / f"seedvault-pgserver-{binaries._pgserver_version()}"
    planted.mkdir()
    planted.chmod(0o777)
    with pytest.raises(ConfigError, match="refusing to use"):
        binaries.pgserver_world_readable_copy(REAL_PGSERVER)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_an_unreadable_path_directory_is_skipped_not_a_crash(tmp_path: Path) -> None:
    """A PATH entry the running user may not look into (another user's 0700 directory) is passed over.

    Runs the search in a forked child that has dropped root (root may look anywhere), with the modules it
    needs already imported.
    """
    from seedvault.sources.postgres.cluster import ensure_service_user

    user = pwd.getpwnam(ensure_service_user())
    private = tmp_path / "private"
    (private / "bin").mkdir(parents=True)
    private.chmod(0o700)  # root's; the service user may not even stat what is inside
    tmp_path.chmod(0o755)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 3
        try:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.environ["PATH"] = f"{private / 'bin'}:/usr/bin:/bin"
            binaries._path_dirs("pg_dump")
            code = 0
        except PermissionError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, "looking for PostgreSQL binaries crashed on an unreadable PATH entry"


@pytest.mark.parametrize(
    ("archive_command", "expected"),
    [
        (
            "/usr/bin/seedvault --config /etc/sv.toml wal-push %p",
            (["/usr/bin/seedvault", "--config", "/etc/sv.toml"], {}),
        ),
        (
            "SEEDVAULT_CONFIG=/etc/sv.toml AWS_SHARED_CREDENTIALS_FILE=/etc/aws /opt/sv/bin/seedvault wal-push %p",
            (
                ["/opt/sv/bin/seedvault"],
                {"SEEDVAULT_CONFIG": "/etc/sv.toml", "AWS_SHARED_CREDENTIALS_FILE": "/etc/aws"},
            ),
        ),
        ("pgbackrest --stanza=m archive-push %p && X=1 seedvault wal-push %p", (["seedvault"], {"X": "1"})),
        ("SEEDVAULT_CONFIG=/etc/sv.toml wal-push %p", None),
        ("cp %p /archive/%f", None),
    ],
)
def test_read_ahead_daemon_program_takes_variable_settings_as_environment(archive_command, expected) -> None:
    from seedvault.ops.postgres_pitr import daemon_program

    assert daemon_program(archive_command) == expected
