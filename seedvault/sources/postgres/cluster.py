"""A PostgreSQL server that seedvault starts itself, in a data directory it owns.

Why: the demo, the tests and point-in-time restores (which replay WAL into a *new* data directory before
anything is switched over) all need a real server that seedvault can initialise, start, crash and stop
without touching the machine's own clusters or needing Docker.

Rules this module enforces, because PostgreSQL does:

* The server binaries (initdb, postgres, pg_ctl) refuse to run as root. When seedvault runs as root they
  run as an unprivileged OS user (``run_as``): ``postgres`` if it exists, else a system user
  ``seedvault-pg`` created on first use. When seedvault is not root they run as seedvault's own user.
* That user must be able to traverse every parent of the data directory and to read the binaries.
  Directories seedvault creates are made traversable (0755; the data and socket directories themselves
  0700 and owned by ``run_as``); an existing parent that ``run_as`` cannot traverse is refused with a
  :class:`ConfigError` naming it. Binaries under ``/root`` are out of reach: see ``binaries.py`` for the
  world-readable copy of the pgserver wheel.
* The server listens on 127.0.0.1 only, with password authentication (scram-sha-256 by default) on TCP.
  The Unix socket lives in a 0700 directory owned by ``run_as``, so the ``local ... trust`` line trusts
  only that user (and root).
* Passwords never reach an argument vector or a log: initdb reads the superuser's password from a temporary
  copy readable only by ``run_as`` (deleted right after), and :meth:`LocalCluster.conninfo` carries none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from seedvault import process
from seedvault.errors import ConfigError, DatabaseUnreachable, SourceError, ToolMissing
from seedvault.sources.postgres.binaries import PgBinaries, find_server_binaries

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SERVICE_USER = "seedvault-pg"
AUTH_METHODS = ("scram-sha-256", "md5", "password", "trust", "reject")
STOP_MODES = ("smart", "fast", "immediate")
# Extensions a new cluster preloads whenever they are installed for its binaries: their CREATE EXTENSION
# fails without it, and a sample or test database on such a machine creates them.
PRELOADED_WHEN_INSTALLED: tuple[str, ...] = ("timescaledb",)
_CONF_BEGIN = "# --- seedvault settings: begin (rewritten by seedvault, edits are lost) ---"
_CONF_END = "# --- seedvault settings: end ---"
_GUC_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_.]*\Z")
_MAX_SOCKET_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_PORT_IN_USE = ("Address already in use", "could not create any TCP/IP sockets", "could not create lock file")


# --- users ---------------------------------------------------------------------------------------------
def default_run_as() -> str:
    """Who runs the server: the current user unless root; else ``postgres``; else ``seedvault-pg`` (created)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    for name in ("postgres", SERVICE_USER):
        with contextlib.suppress(KeyError):
            if pwd.getpwnam(name).pw_uid != 0:
                return name
    return ensure_service_user()


def ensure_service_user(name: str = SERVICE_USER) -> str:
    """Create a locked system user (no home, no shell) for PostgreSQL; needs root."""
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)
        return name
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    if not os.path.exists(useradd):
        raise ConfigError(f"cannot create the system user {name}: useradd not found", hint=f"create user {name}")
    argv = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
    argv += ["--shell", "/usr/sbin/nologin", name]
    proc = process.run(argv, capture_output=True, text=True)
    with contextlib.suppress(KeyError):
        pwd.getpwnam(name)  # exists now, whether we or a concurrent run created it
        return name
    raise ConfigError(f"cannot create the system user {name}: {_last_line(proc.stderr) or proc.returncode}")


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _last_line(text: str | None) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _quote_conf(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def _proc_state(pid: int) -> str | None:
    """The process state letter from /proc (None if gone): 'Z' means a zombie, as good as dead."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[1].split()[0]


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


class LocalCluster:
    """One PostgreSQL data directory and the server on it; every step explicit (initdb, start, stop)."""

    host = HOST

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        binaries: PgBinaries | None = None,
        run_as: str | None = None,
        socket_dir: Path | None = None,
        superuser: str = "postgres",
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        configured = self._read_conf_block().get("port")  # an existing cluster keeps its port
        self._port_auto = port is None and configured is None
        self.port = port if port is not None else int(configured) if configured else free_loopback_port()
        self._binaries = binaries
        self.run_as = run_as or default_run_as()
        try:
            pw = pwd.getpwnam(self.run_as)
        except KeyError:
            raise ConfigError(f"cannot run PostgreSQL as {self.run_as}: no such user") from None
        if pw.pw_uid == 0:
            raise ConfigError("postgresql refuses to run as root", hint="pass run_as= an unprivileged user")
        if os.geteuid() not in (0, pw.pw_uid):
            raise ConfigError(
                f"cannot run PostgreSQL as {self.run_as}: seedvault runs as uid {os.geteuid()} and is not root"
            )
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.socket_dir = Path(socket_dir).absolute() if socket_dir else self.data_dir.parent / "sock"
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.superuser = superuser
        self.password: str | None = None  # the superuser's, for connect() (a recovered copy keeps the source's)
        self._started_once = False

    def __repr__(self) -> str:
        return f"LocalCluster({str(self.data_dir)!r}, port={self.port}, run_as={self.run_as!r})"

    # --- context manager: no implicit initdb/start; leaving the block stops the server, keeps the data ---
    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None):
        if self.is_running():
            self.stop()

    # --- binaries and running as run_as ----------------------------------------------------------------
    @property
    def binaries(self) -> PgBinaries:
        if self._binaries is None:
            existing = self.data_major()
            self._binaries = find_server_binaries(existing)
        return self._binaries

    @property
    def major(self) -> int:
        return self.binaries.major

    def data_major(self) -> int | None:
        """The major version recorded in the data directory (PG_VERSION), if initialised."""
        try:
            return int((self.data_dir / "PG_VERSION").read_text().strip())
        except (OSError, ValueError):
            return None

    def _as_run_as(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"cwd": "/"}
        if os.geteuid() != self.uid:
            kwargs.update(user=self.uid, group=self.gid, extra_groups=os.getgrouplist(self.run_as, self.gid))
        return kwargs

    def _run(self, argv: list[Any], *, timeout: float) -> subprocess.CompletedProcess:
        log.debug("running as %s: %s", self.run_as, " ".join(map(str, argv)))
        try:
            # The server must not inherit our environment (AWS credentials, PGPASSWORD): minimal env only.
            return process.run(
                argv, capture_output=True, text=True, timeout=timeout, inherit_env=False, **self._as_run_as()
            )
        except subprocess.TimeoutExpired as exc:
            raise SourceError(f"{Path(str(argv[0])).name} timed out after {timeout:.0f}s on {self.data_dir}") from exc
        except OSError as exc:
            raise ToolMissing(f"cannot run {argv[0]} as {self.run_as}: {exc.strerror or exc}") from exc

    def _traversable(self, path: Path) -> bool:
        if self.uid == 0:
            return True
        st = os.stat(path)
        if st.st_uid == self.uid:
            return bool(st.st_mode & 0o100)
        if st.st_gid in os.getgrouplist(self.run_as, self.gid):
            return bool(st.st_mode & 0o010)
        return bool(st.st_mode & 0o001)

    def _prepare_parents(self, path: Path) -> None:
        """Create missing parents (0755) and refuse an existing one that run_as cannot traverse."""
        missing = []
        p = path.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        for ancestor in [*reversed(list(p.parents)), p]:
            if not self._traversable(ancestor):
                raise ConfigError(
                    f"{ancestor} is not traversable by {self.run_as}, who must reach {path}",
                    hint=f"put the cluster under a world-traversable directory (e.g. /var/tmp) or chmod o+x {ancestor}",
                )
        for d in reversed(missing):
            with contextlib.suppress(FileExistsError):
                d.mkdir()
                os.chmod(d, 0o755)

    def _check_binaries_reachable(self) -> None:
        """run_as must reach the server binaries (not so for a pgserver wheel under /root, or PG_BIN there)."""
        bindir = self.binaries.bindir.absolute()
        for ancestor in [*reversed(list(bindir.parents)), bindir]:
            if ancestor.exists() and not self._traversable(ancestor):
                raise ConfigError(
                    f"{ancestor} is not traversable by {self.run_as}, who must run the binaries in {bindir}",
                    hint="use binaries in a world-readable place (find_server_binaries() copies pgserver's)",
                )

    def _private_dir(self, path: Path) -> None:
        """A 0700 directory owned by run_as (created if missing)."""
        self._prepare_parents(path)
        path.mkdir(exist_ok=True)
        os.chown(path, self.uid, self.gid)
        os.chmod(path, 0o700)

    def chown_tree(self, path: Path) -> None:
        """Give a directory tree to run_as (e.g. a restored data directory laid out by root)."""
        path = Path(path)
        if os.geteuid() == self.uid:
            return
        os.chown(path, self.uid, self.gid, follow_symlinks=False)
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                os.chown(os.path.join(dirpath, name), self.uid, self.gid, follow_symlinks=False)

    # --- initdb --------------------------------------------------------------------------------------------
    def initdb(
        self,
        superuser: str = "postgres",
        password_file: Path | None = None,
        auth: str = "scram-sha-256",
        locale: str = "C",
        extra_conf: dict[str, str] | None = None,
        *,
        sync: bool = True,
        password: str | None = None,
    ) -> None:
        """Create the cluster: checksums on, UTF8, then :meth:`configure` (loopback TCP with ``auth``).

        Extensions of :data:`PRELOADED_WHEN_INSTALLED` installed for the binaries are preloaded unless
        ``extra_conf`` sets ``shared_preload_libraries`` itself (values are quoted here: pass them bare).

        The superuser's password comes from ``password_file`` (its first line) or, for a caller that made it up
        in memory (demo, tests), ``password``; either way initdb reads it from a temporary file only run_as can
        read, never from argv. ``sync=False`` skips initdb's fsync (tests, throwaway clusters).
        """
        if password_file is not None and password is not None:
            raise ConfigError("initdb: give the superuser password as a file or a value, not both")
        self._check_conf_args(auth, extra_conf)
        extra_conf = dict(extra_conf or {})
        if "shared_preload_libraries" not in extra_conf:
            preload = [name for name in PRELOADED_WHEN_INSTALLED if self.binaries.has_extension(name)]
            if preload:
                extra_conf["shared_preload_libraries"] = ",".join(preload)
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ConfigError(f"cannot initialise {self.data_dir}: the directory is not empty")
        self._check_socket_path()
        self._check_binaries_reachable()
        self.superuser = superuser
        self._private_dir(self.data_dir)
        self._private_dir(self.socket_dir)

        argv: list[Any] = [self.binaries.tool("initdb"), "-D", self.data_dir, "-U", superuser]
        argv += [f"--auth-host={auth}", "--auth-local=trust", "-E", "UTF8", f"--locale={locale}", "--data-checksums"]
        if not sync:
            argv.append("--no-sync")
        pwcopy: Path | None = None
        try:
            if password_file is not None:
                pwcopy = self._private_password_copy(Path(password_file))
            elif password is not None:
                pwcopy = self._private_password_file(password)
            if pwcopy is not None:
                argv.append(f"--pwfile={pwcopy}")
            proc = self._run(argv, timeout=300)
        finally:
            if pwcopy is not None:
                pwcopy.unlink(missing_ok=True)
        if proc.returncode != 0:
            detail = _last_line(proc.stderr) or _last_line(proc.stdout) or f"exit code {proc.returncode}"
            raise SourceError(f"initdb failed for {self.data_dir}: {detail}")

        self.configure(auth=auth, extra_conf=extra_conf)

    def configure(self, auth: str = "scram-sha-256", extra_conf: dict[str, str] | None = None) -> None:
        """Write seedvault's settings block (end of postgresql.conf) and pg_hba.conf; initdb calls it.

        Call it yourself on a data directory laid out by a restore, after :meth:`chown_tree`: the settings
        block (port, listen_addresses='127.0.0.1', unix_socket_directories, extra_conf) comes last in
        postgresql.conf and so wins over the original file; ``postgresql.auto.conf`` (ALTER SYSTEM) still
        wins over both and is left alone.
        """
        self._check_conf_args(auth, extra_conf)
        settings: dict[str, str] = {"listen_addresses": HOST, "unix_socket_directories": str(self.socket_dir)}
        settings["unix_socket_permissions"] = "0700"
        if auth == "scram-sha-256":
            settings["password_encryption"] = "scram-sha-256"
        settings.update(extra_conf or {})
        self._write_conf(settings)
        self._write_hba(auth)
        ident = self.data_dir / "pg_ident.conf"
        if not ident.exists():
            ident.write_text("# Created by seedvault: no user name maps.\n")
        self._touch_log()

    @staticmethod
    def _check_conf_args(auth: str, extra_conf: dict[str, str] | None) -> None:
        if auth not in AUTH_METHODS:
            raise ConfigError(f"unknown authentication method {auth!r} (one of {', '.join(AUTH_METHODS)})")
        for name in extra_conf or {}:
            if not _GUC_NAME.fullmatch(name) or name == "port":
                raise ConfigError(f"invalid PostgreSQL setting name {name!r} in extra_conf")

    def _private_password_copy(self, source: Path) -> Path:
        try:
            lines = source.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the password file {source}: {exc.strerror}") from exc
        password = lines[0] if lines else ""
        if not password:
            raise ConfigError(f"the password file {source} is empty")
        return self._private_password_file(password)

    def _private_password_file(self, password: str) -> Path:
        if not password or "\n" in password:
            raise ConfigError("the superuser password must be one non-empty line")
        fd, name = tempfile.mkstemp(prefix=".initdb-pw-", dir=self.data_dir.parent)
        try:
            os.fchmod(fd, 0o400 if os.geteuid() == self.uid else 0o600)
            os.write(fd, (password + "\n").encode())
            if os.geteuid() != self.uid:
                os.fchown(fd, self.uid, self.gid)
                os.fchmod(fd, 0o400)
        finally:
            os.close(fd)
        return Path(name)

    def _check_socket_path(self) -> None:
        sock = self.socket_dir / f".s.PGSQL.{self.port}"
        if len(str(sock).encode()) > _MAX_SOCKET_PATH:
            raise ConfigError(
                f"socket path {sock} is longer than {_MAX_SOCKET_PATH} bytes",
                hint="pass a shorter socket_dir or put the cluster in a shorter directory",
            )

    def _write_conf(self, settings: dict[str, str]) -> None:
        conf = self.data_dir / "postgresql.conf"
        try:
            text = conf.read_text()
        except FileNotFoundError:  # e.g. a base backup of a Debian cluster: its conf lives in /etc
            text = "# Created by seedvault: the data directory came without a postgresql.conf.\n"
        if _CONF_BEGIN in text:
            text = text[: text.index(_CONF_BEGIN)].rstrip("\n") + "\n"
        lines = [_CONF_BEGIN, f"port = {self.port}"]
        lines += [f"{k} = {_quote_conf(v)}" for k, v in settings.items() if k != "port"]
        conf.write_text(text + "\n" + "\n".join(lines) + "\n" + _CONF_END + "\n")

    def _read_conf_block(self) -> dict[str, str]:
        """The seedvault block of postgresql.conf as written ({} if there is none)."""
        try:
            text = (self.data_dir / "postgresql.conf").read_text()
        except OSError:
            return {}
        if _CONF_BEGIN not in text or _CONF_END not in text:
            return {}
        block = text[text.index(_CONF_BEGIN) + len(_CONF_BEGIN) : text.index(_CONF_END)]
        out: dict[str, str] = {}
        for line in block.splitlines():
            if "=" not in line:
                continue
            key, value = (s.strip() for s in line.split("=", 1))
            if value.startswith("'") and value.endswith("'"):
                value = value[1:-1].replace("''", "'").replace("\\\\", "\\")
            out[key] = value
        return out

    def _write_hba(self, auth: str) -> None:
        text = (
            "# Written by seedvault. Local socket: trusted, because its directory is private to"
            f" {self.run_as} (0700).\n"
            "# TCP: loopback only, with a password.\n"
            "# TYPE  DATABASE        USER            ADDRESS                 METHOD\n"
            "local   all             all                                     trust\n"
            f"host    all             all             127.0.0.1/32            {auth}\n"
            f"host    replication     all             127.0.0.1/32            {auth}\n"
        )
        (self.data_dir / "pg_hba.conf").write_text(text)

    def _touch_log(self) -> None:
        self.log_file.touch(exist_ok=True)
        if os.geteuid() != self.uid:
            os.chown(self.log_file, self.uid, self.gid)
        os.chmod(self.log_file, 0o600)

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        """``pg_ctl start -w`` as run_as; logs to ``<data_dir>/../<name>.log``. No-op if already running."""
        if self.data_major() is None:
            raise SourceError(f"no PostgreSQL data directory at {self.data_dir}", hint="run initdb first")
        if self.data_major() != self.binaries.major:
            raise ConfigError(
                f"{self.data_dir} holds PostgreSQL {self.data_major()} data but the binaries are {self.binaries.major}"
            )
        if self.is_running():
            return
        settings = self._read_conf_block()
        if not settings:
            raise ConfigError(
                f"{self.data_dir} has no seedvault settings in postgresql.conf",
                hint="call configure() first (initdb does): it binds the server to 127.0.0.1 with passwords",
            )
        self._check_socket_path()
        self._check_binaries_reachable()
        if settings.get("port") != str(self.port) or settings.get("unix_socket_directories") != str(self.socket_dir):
            settings["unix_socket_directories"] = str(self.socket_dir)
            self._write_conf(settings)  # e.g. an explicit port= for an existing cluster
        if not self.socket_dir.is_dir():
            self._private_dir(self.socket_dir)
        if not self.log_file.exists():
            self._touch_log()
        attempts = 3 if self._port_auto and not self._started_once else 1
        for attempt in range(attempts):
            offset = self.log_file.stat().st_size
            argv: list[Any] = [self.binaries.tool("pg_ctl"), "start", "-w", "-s", "-t", int(max(timeout, 1))]
            argv += ["-D", self.data_dir, "-l", self.log_file]
            proc = self._run(argv, timeout=timeout + 30)
            if proc.returncode == 0:
                self._started_once = True
                return
            reason = self._log_reason(offset) or _last_line(proc.stderr) or f"pg_ctl exit code {proc.returncode}"
            if attempt + 1 < attempts and any(s in reason for s in _PORT_IN_USE):
                log.info("port %s taken, retrying PostgreSQL on another port", self.port)
                self.port = free_loopback_port()
                self._write_conf(settings)
                continue
            if self.is_running():  # pg_ctl gave up waiting, the server is still coming up
                raise DatabaseUnreachable(
                    f"postgresql in {self.data_dir} did not become ready in {timeout:.0f}s: {reason}",
                    hint=f"see {self.log_file}",
                )
            raise SourceError(f"postgresql in {self.data_dir} did not start: {reason}", hint=f"see {self.log_file}")

    def _log_reason(self, offset: int = 0) -> str:
        """The most telling line the server logged since ``offset``: the last FATAL/PANIC, else the last line."""
        try:
            with open(self.log_file, "rb") as fh:
                fh.seek(offset)
                tail = fh.read()[-64 * 1024 :].decode(errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in tail.splitlines() if line.strip()]
        for line in reversed(lines):
            if "FATAL:" in line or "PANIC:" in line:
                return " ".join(line.split())
        return " ".join(lines[-1].split()) if lines else ""

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """``pg_ctl stop -m <mode> -w``; no-op if not running."""
        if mode not in STOP_MODES:
            raise ConfigError(f"unknown stop mode {mode!r} (one of {', '.join(STOP_MODES)})")
        if not self.is_running():
            return
        argv: list[Any] = [self.binaries.tool("pg_ctl"), "stop", "-w", "-s", "-m", mode, "-t", int(max(timeout, 1))]
        argv += ["-D", self.data_dir]
        proc = self._run(argv, timeout=timeout + 30)
        if proc.returncode != 0 and self.is_running():
            detail = _last_line(proc.stderr) or self._log_reason() or f"exit code {proc.returncode}"
            raise SourceError(f"cannot stop PostgreSQL in {self.data_dir}: {detail}")

    def kill(self, timeout: float = 10) -> None:
        """SIGKILL the postmaster and its children at once (a simulated crash / power loss); wait until gone.

        The next :meth:`start` runs crash recovery. The children go too because a new postmaster refuses to
        start while old backends still hold the shared memory segment.
        """
        pid = self.pid()
        if pid is None:
            return
        kids = _children(pid)
        for victim in [pid, *kids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while any(_proc_state(p) not in (None, "Z") for p in [pid, *kids]):
            if time.monotonic() > deadline:
                raise SourceError(f"postgresql (pid {pid}) in {self.data_dir} survived SIGKILL for {timeout:.0f}s")
            time.sleep(0.02)
        if _proc_state(pid) == "Z":
            # Nobody reaps the orphan (PID 1 of some containers and VMs is no real init): the next postmaster
            # would take the zombie's pid in postmaster.pid and the socket lock for a live server and refuse
            # to start. After a real crash (or reboot) that pid is gone, so removing both changes nothing else.
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            for lock in self.socket_dir.glob(".s.PGSQL.*.lock"):
                with contextlib.suppress(OSError, ValueError):
                    if int(lock.read_text().split("\n", 1)[0].strip()) == pid:
                        lock.unlink()

    def pid(self) -> int | None:
        """The postmaster's pid, or None when no server runs on this data directory."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
            pid = int(first)
        except (OSError, ValueError):
            return None
        if _proc_state(pid) in (None, "Z"):
            return None
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return None
        return pid if comm in ("postgres", "postmaster") else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the server accepts connections on 127.0.0.1:port; DatabaseUnreachable on timeout."""
        deadline = time.monotonic() + timeout
        isready = self.binaries.bindir / "pg_isready"
        while True:
            if self.is_running():
                if isready.exists():
                    argv = [isready, "-q", "-h", HOST, "-p", self.port, "-d", "postgres", "-t", "2"]
                    if process.run(argv, capture_output=True, timeout=30, cwd="/").returncode == 0:
                        return
                elif self._tcp_answers():
                    return
            if time.monotonic() > deadline:
                raise DatabaseUnreachable(
                    f"postgresql at {HOST}:{self.port} is not ready after {timeout:.0f}s: {self._log_reason()}",
                    hint=f"see {self.log_file}",
                )
            time.sleep(0.1)

    def _tcp_answers(self) -> bool:
        try:
            psycopg.connect(self.conninfo(), connect_timeout=2, passfile=os.devnull).close()
            return True
        except psycopg.OperationalError as exc:
            text = str(exc)
            return "authentication" in text or "password" in text

    def destroy(self) -> None:
        """Stop the server if it runs (killing it if it will not stop) and remove the data directory and log."""
        if self.is_running():
            try:
                self.stop("fast", timeout=30)
            except SourceError:
                self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.socket_dir.rmdir()  # only if empty: other clusters may share it

    # --- connections ---------------------------------------------------------------------------------------
    def conninfo(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A libpq conninfo for TCP 127.0.0.1:port; never carries a password."""
        return make_conninfo("", host=HOST, port=self.port, dbname=dbname, user=user or self.superuser)

    def connect(
        self,
        dbname: str = "postgres",
        user: str | None = None,
        password: str | None = None,
        *,
        autocommit: bool = False,
        connect_timeout: int = 10,
        **kwargs: Any,
    ) -> psycopg.Connection:
        """A psycopg connection over TCP; the password (if any) goes to libpq in-process, never to argv."""
        extra = dict(kwargs)
        password = password if password is not None else self.password
        if password is not None:
            extra["password"] = password
        try:
            return psycopg.connect(
                self.conninfo(dbname, user), autocommit=autocommit, connect_timeout=connect_timeout, **extra
            )
        except psycopg.OperationalError as exc:
            detail = _last_line(str(exc).replace(password, "***") if password else str(exc))
            raise DatabaseUnreachable(
                f"cannot connect to PostgreSQL at {HOST}:{self.port} as {user or self.superuser}"
                f" (database {dbname}): {detail}"
            ) from exc
