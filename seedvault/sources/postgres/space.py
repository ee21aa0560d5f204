"""Free space for a restore: the server's data directory, and the local directory ``--jobs`` spools to.

Why the data directory: a restore writes another copy of a database on the server (``--replace`` keeps the
live one until the swap). If that filesystem fills, PostgreSQL cannot write WAL and PANICs: the whole server
stops, every database on it, and the cleanup's ``DROP DATABASE`` (it forces a checkpoint) is the last straw.
So a restore measures before it creates anything and refuses when the copy would not fit.

How seedvault learns the server's free space, in this order:

1. On this host: the server's ``data_directory`` (visible to superusers and ``pg_read_all_settings``) exists
   here and its ``postmaster.pid`` names the same directory, port and start time as the server seedvault is
   connected to, so it is that server's: ``os.statvfs`` (space available to non-root users, which is what
   the server's user gets).
2. From the server itself: a role that may run programs on the server (superuser or
   ``pg_execute_server_program``) runs ``df -Pk .`` there with ``COPY ... FROM PROGRAM`` (a backend's working
   directory is the data directory), into a temporary table dropped at commit. Nothing else is run.
3. Otherwise it is unknown, and the caller says so (a restore then refuses unless told to skip the check).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

START_TIME_SLACK = 120  # seconds between postmaster.pid's start time and pg_postmaster_start_time()
_DF_LINE = re.compile(r"^(.*?)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)%\s+(.*)$")


@dataclass
class FreeSpace:
    free: int | None  # bytes the server can still write there; None: unknown
    where: str  # the data directory, when the server showed it
    method: str = ""  # "statvfs on this host" or "df on the server"
    reason: str = ""  # why it is unknown

    def as_dict(self) -> dict[str, object]:
        return {"free": self.free, "where": self.where, "method": self.method, "reason": self.reason}


def local_free(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged user can still write in ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def server_free_space(conn: psycopg.Connection) -> FreeSpace:
    """Free space of the server's data directory (``conn``: autocommit, any database of that server)."""
    reasons = []
    try:
        datadir = conn.execute("SELECT current_setting('data_directory')").fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        datadir = None
        reasons.append("this role may not see data_directory")
    if datadir:
        local = _on_this_host(conn, datadir)
        if isinstance(local, int):
            return FreeSpace(local, datadir, "statvfs on this host")
        reasons.append(local)
    row = conn.execute(
        "SELECT rolsuper OR pg_has_role(current_user, 'pg_execute_server_program', 'USAGE')"
        " FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if row and row[0]:
        free = _df_on_server(conn)
        if isinstance(free, int):
            return FreeSpace(free, datadir or "the server's data directory", "df on the server")
        reasons.append(free)
    else:
        reasons.append("it may not run df on the server (superuser or pg_execute_server_program)")
    return FreeSpace(None, datadir or "the server's data directory", reason="; ".join(reasons))


def _on_this_host(conn: psycopg.Connection, datadir: str) -> int | str:
    """statvfs of the data directory if it is this server's and on this host, else why not."""
    pid_file = Path(datadir) / "postmaster.pid"
    try:
        lines = pid_file.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"{datadir} is not on this host"
    except OSError as exc:
        return f"cannot read {pid_file} ({exc.strerror})"
    port, started = conn.execute(
        "SELECT current_setting('port'), extract(epoch FROM pg_postmaster_start_time())::bigint"
    ).fetchone()
    try:
        same = (
            len(lines) >= 4
            and lines[1] == datadir
            and lines[3].strip() == str(port)
            and abs(int(lines[2]) - int(started)) <= START_TIME_SLACK
        )
    except ValueError:
        same = False
    if not same:
        return f"{datadir} on this host belongs to another server"
    return local_free(datadir)


def _df_on_server(conn: psycopg.Connection) -> int | str:
    try:
        with conn.transaction():
            conn.execute("CREATE TEMP TABLE seedvault_df (line text) ON COMMIT DROP")
            conn.execute("COPY seedvault_df FROM PROGRAM 'df -Pk .'")
            lines = [r[0] for r in conn.execute("SELECT line FROM seedvault_df")]
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"df on the server failed: {first}"
    m = _DF_LINE.match(lines[-1]) if lines else None
    if m is None:
        return "df on the server printed no usable line"
    return int(m.group(4)) * 1024
