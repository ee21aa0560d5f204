"""The fast path of ``wal-push``/``wal-fetch``: hand the request to a running ``seedvault wal-daemon``.

Why: PostgreSQL runs ``archive_command`` once per 16 MB segment, one at a time. A fresh Python process
that imports the engine and builds an S3 client spends ~0.2-0.7 s before the first byte moves, which
a busy server outruns. This module imports only the standard library (~30 ms), passes the open WAL file
descriptor to the daemon over a unix socket (SCM_RIGHTS: the daemon archives exactly the file
PostgreSQL named, with no path games) and waits until the daemon says the file is durable.

With ``wal_daemon = "auto"`` a push that finds no daemon starts one in the background (a new session,
output appended to ``<socket>.log``; it exits after ``wal_daemon_idle`` seconds without requests) and
archives its own file directly; the next pushes find the daemon, which has meanwhile worked ahead
through the ``.ready`` backlog. This is pgBackRest's archive-async pattern: the operator sets one line,
nothing has to be supervised. A start is attempted at most once a minute (a daemon that cannot start,
say on a broken config, must not double the cost of every push) and never twice at once (a lock the
starting daemon holds until its socket is bound).

The daemon is an accelerator, never a dependency: no socket configured, nothing listening, a daemon
killed mid-request, or a daemon that cannot serve this cluster -> :func:`try_push` returns ``None`` and
the caller archives directly (the segment then ends up stored once: the direct push finds a daemon's
completed copy as an identical duplicate). A verdict of the daemon (e.g. "different content") is final.

Wire protocol, one request per connection, one line each way (version 2; tab-separated text, so that
this module needs neither ``json`` nor ``re``, ~15 ms of every call's imports)::

    client -> daemon: SVWAL2 TAB push  TAB <system id> TAB <name> TAB <pg major or empty> LF, with the WAL
                      file's descriptor attached (SCM_RIGHTS), or
                      SVWAL2 TAB fetch TAB <system id> TAB <name> TAB <absolute destination path> LF
    daemon -> client: OK TAB <stored|duplicate|fetched> TAB <note or empty> LF
                      ERR TAB <exit code> TAB <one line> LF        a verdict: final
                      FALLBACK TAB <one line> LF                   not for me: go direct
                      MISSING LF                                   fetch: not archived

Fields never contain a tab or a line feed (names are checked, paths with either go direct, messages have
them replaced). The daemon also still answers version 1 (one JSON object per line, ``{"v": 1, ...}``), so
a daemon started by an older client keeps serving through an upgrade until it stops.
"""

from __future__ import annotations

import array
import fcntl
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence

PROTOCOL = 2
MAGIC = "SVWAL2"
SOCKET_ENV = "SEEDVAULT_WAL_SOCKET"
DAEMON_ENV = "SEEDVAULT_WAL_DAEMON"
IDLE_ENV = "SEEDVAULT_WAL_DAEMON_IDLE"
CONFIG_ENV = "SEEDVAULT_CONFIG"
START_INTERVAL = 60.0  # at most one automatic daemon start per socket per minute
LOCK_FD_ENV = "SEEDVAULT_WAL_DAEMON_LOCK_FD"  # the start lock a starting daemon releases once bound
REPLY_TIMEOUT = 900.0  # a daemon that hangs longer than this is treated as dead: the push goes direct
MAX_LINE = 1 << 16

# Global options the fast path understands (value-taking); anything else -> the full CLI decides.
GLOBAL_VALUE_OPTS = {"--config", "--repository", "-r", "--s3-endpoint", "--key-file", "--passphrase-file"}
PUSH_OPTS = {"--pgdata", "--system-id", "--pg-major", "--socket"}
FETCH_OPTS = {"--pgdata", "--system-id", "--socket"}


def encode_request(op: str, system_id: str, name: str, arg: str) -> bytes:
    fields = (MAGIC, op, system_id, name, arg)
    if any("\t" in f or "\n" in f for f in fields):
        raise Fallback("a field holds a tab or line feed")
    return ("\t".join(fields) + "\n").encode()


def decode_request(line: bytes) -> dict | None:
    """A version-2 request as the dict the daemon works with, or None when it is not one."""
    parts = line.rstrip(b"\n").decode("utf-8", "strict").split("\t")
    if len(parts) != 5 or parts[0] != MAGIC:
        return None
    _, op, system_id, name, arg = parts
    request = {"v": PROTOCOL, "op": op, "system_id": system_id, "name": name}
    if op == "push" and arg:
        request["pg_major"] = arg
    elif op == "fetch":
        request["dest"] = arg
    return request


def _clean(text: object) -> str:
    return str(text).replace("\t", " ").replace("\n", " ").replace("\r", " ")[:2000]


def encode_reply(reply: dict) -> bytes:
    if reply.get("ok"):
        line = f"OK\t{_clean(reply.get('result', ''))}\t{_clean(reply.get('note') or '')}"
    elif reply.get("missing"):
        line = "MISSING"
    elif reply.get("fallback"):
        line = f"FALLBACK\t{_clean(reply.get('error') or 'declined')}"
    else:
        code = reply.get("exit")
        line = f"ERR\t{code if isinstance(code, int) else 1}\t{_clean(reply.get('error') or 'failed')}"
    return (line + "\n").encode()


def decode_reply(line: bytes) -> dict:
    """The daemon's answer as a dict; anything unexpected -> Fallback (archive directly)."""
    try:
        parts = line.rstrip(b"\n").decode("utf-8", "strict").split("\t")
    except UnicodeDecodeError:
        raise Fallback("archiver daemon sent an unreadable reply") from None
    kind = parts[0]
    if kind == "OK" and len(parts) == 3 and parts[1] in ("stored", "duplicate", "fetched"):
        return {"ok": True, "result": parts[1], "note": parts[2] or None}
    if kind == "MISSING" and len(parts) == 1:
        return {"ok": False, "missing": True}
    if kind == "ERR" and len(parts) == 3 and parts[1].isdigit():
        return {"ok": False, "exit": int(parts[1]), "error": parts[2]}
    if kind == "FALLBACK" and len(parts) == 2:
        raise Fallback(parts[1] or "archiver daemon declined")
    raise Fallback("archiver daemon sent an unreadable reply")


class Fallback(Exception):
    """The daemon path is not available for this request; archive directly."""

    def __init__(self, message: str, *, absent: bool = False) -> None:
        super().__init__(message)
        self.absent = absent  # no daemon at all (rather than one that failed or declined)


def parse_args(argv: Sequence[str], command: str, opts: set[str]) -> tuple[dict[str, str], list[str]] | None:
    """``(options, positionals)`` for ``[global opts] command [opts] args``, or None if unsure."""
    try:
        at = list(argv).index(command)
    except ValueError:
        return None
    options: dict[str, str] = {}
    i = 0
    head = list(argv[:at])
    while i < len(head):
        if head[i] in GLOBAL_VALUE_OPTS and i + 1 < len(head):
            options[head[i]] = head[i + 1]
            i += 2
        else:
            return None
    rest = list(argv[at + 1 :])
    positionals: list[str] = []
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg in opts and i + 1 < len(rest):
            options[arg] = rest[i + 1]
            i += 2
        elif arg.startswith("-"):
            return None  # --help and friends: the full CLI
        else:
            positionals.append(arg)
            i += 1
    return options, positionals


DAEMON_KEYS = ("wal_socket", "wal_daemon", "wal_daemon_idle")


def _config_section(options: dict[str, str], env: dict[str, str] | os._Environ[str]) -> dict:
    config = options.get("--config") or env.get(CONFIG_ENV)
    if not config:
        return {}
    try:
        with open(config, "rb") as fh:
            raw = fh.read()
    except OSError:
        return {}  # the full CLI reports a broken config properly
    found = scan_flat_toml(raw, DAEMON_KEYS)
    if found is not None:
        return found
    import tomllib  # ~15 ms: only for a file the flat scan cannot read with certainty

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    section = data.get("seedvault", data)
    return section if isinstance(section, dict) else {}


def scan_flat_toml(raw: bytes, keys: Sequence[str]) -> dict | None:
    """``keys`` from a flat TOML file of ``key = "string" | 'string' | integer`` lines and comments.

    Returns None (use a real TOML parser) for anything else: a table header, a multi-line value, an escape
    in a wanted string, a line that is not ``key = value``. So it never reads a value tomllib would read
    differently; it only spares the common settings file the parser's import.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    out: dict[str, object] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not all(c.isalnum() or c in "_-" for c in key) or not value:
            return None  # a table header, a dotted or quoted key, a continuation line
        if value[0] in "\"'":
            quote = value[0]
            if value.startswith(quote * 3):
                return None  # multi-line string
            end = value.find(quote, 1)
            if end < 0:
                return None
            inner, rest = value[1:end], value[end + 1 :].strip()
            if quote == '"' and "\\" in inner:
                return None  # escapes: leave them to tomllib
        else:
            inner, _, rest = value.partition("#")
            inner, rest = inner.strip(), ("#" + rest) if rest else ""
            if inner.startswith(("[", "{")) and (key in keys or not inner.endswith(("]", "}"))):
                return None  # a wanted key with an array or table, or a multi-line array
        if rest and not rest.startswith("#"):
            return None
        if key in keys:
            if key in out:
                return None  # duplicate key: invalid TOML, tomllib says so
            if value[0] in "\"'":
                out[key] = inner
            elif inner.isdigit():
                out[key] = int(inner)
            else:
                return None
    return out


def socket_path(options: dict[str, str], env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """The daemon socket: ``--socket``, else SEEDVAULT_WAL_SOCKET, else ``wal_socket`` in the config file."""
    return daemon_settings(options, env)[0]


def daemon_settings(
    options: dict[str, str], env: dict[str, str] | os._Environ[str] = os.environ
) -> tuple[str | None, bool, int]:
    """(socket, start one automatically?, idle seconds) with the precedence of seedvault.config."""
    section = _config_section(options, env)
    sock = options.get("--socket") or env.get(SOCKET_ENV) or section.get("wal_socket")
    mode = env.get(DAEMON_ENV) or section.get("wal_daemon") or "off"
    try:
        idle = int(env.get(IDLE_ENV) or section.get("wal_daemon_idle") or 600)
    except (TypeError, ValueError):
        idle = 600
    return (str(sock) if sock else None), str(mode) == "auto", max(idle, 1)


def _self_argv() -> list[str]:
    """How to run this same seedvault again (the console script, or the interpreter and module)."""
    me = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if me and os.access(me, os.X_OK) and not me.endswith(".py"):
        return [me]
    return [sys.executable, *(["-I"] if sys.flags.isolated else []), "-m", "seedvault.cli.entry"]


def start_daemon(
    sock: str, options: dict[str, str], pgdata: str | None, idle: int, *, argv: list[str] | None = None
) -> bool:
    """Start a wal-daemon on ``sock`` in the background unless one is starting or started recently.

    Never blocks and never fails the push: any problem leaves the direct path to do its job (the daemon's
    own errors go to ``<sock>.log``; one that stops us from starting it at all, such as a socket directory
    the server's user cannot write, is said on stderr, i.e. in the server log). True when one was started.
    """
    import subprocess  # only here: the common path (a daemon answers) stays lean

    lock_path = sock + ".lock"
    try:
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        _note(f"seedvault wal-push: cannot start the archiver daemon ({lock_path}: {exc.strerror}); archiving directly")
        return False
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # another push is starting one right now
        if time.time() - os.fstat(lock).st_mtime < START_INTERVAL and os.fstat(lock).st_size > 0:
            return False  # one was started (or tried) less than a minute ago
        os.ftruncate(lock, 0)
        os.write(lock, f"{os.getpid()} {time.time():.0f}\n".encode())  # also sets the mtime
        data_dir = os.path.abspath(pgdata or os.getcwd())
        globals_ = [x for opt, val in options.items() if opt in GLOBAL_VALUE_OPTS for x in (opt, val)]
        cmd = [*(argv or _self_argv()), *globals_, "wal-daemon", "--pgdata", data_dir, "--socket", sock,
               "--idle-exit", str(idle), "--quiet"]  # fmt: skip
        log = os.open(sock + ".log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            subprocess.Popen(  # noqa: S603 (our own command, no shell)
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=data_dir,
                start_new_session=True,  # PostgreSQL's archiver never waits for it, signals never reach it
                pass_fds=(lock,),
                env={**os.environ, LOCK_FD_ENV: str(lock)},
            )
        finally:
            os.close(log)
        return True
    except OSError as exc:
        _note(f"seedvault wal-push: cannot start the archiver daemon ({exc.strerror or exc}); archiving directly")
        return False
    finally:
        os.close(lock)  # the child holds its own copy of the lock until its socket is bound


def read_system_id(pgdata: str | None) -> int:
    with open(os.path.join(pgdata or ".", "global", "pg_control"), "rb") as fh:
        return struct.unpack("<Q", fh.read(8))[0]


def _request(path: str, message: bytes, fd: int | None) -> dict:
    if not os.path.exists(path):
        raise Fallback("no archiver daemon socket", absent=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        try:
            sock.connect(path)
        except OSError as exc:
            raise Fallback(f"archiver daemon not reachable ({exc.strerror or exc})", absent=True) from None
        data = message
        try:
            if fd is None:
                sock.sendall(data)
            else:
                sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            sock.settimeout(REPLY_TIMEOUT)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise Fallback("archiver daemon closed the connection before answering")
                buf += chunk
                if len(buf) > MAX_LINE:
                    raise Fallback("archiver daemon sent an oversized reply")
        except (TimeoutError, OSError) as exc:
            raise Fallback(f"archiver daemon failed ({exc})") from None
    finally:
        sock.close()
    return decode_reply(buf)


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def try_push(argv: Sequence[str]) -> int | None:
    """Exit code of a daemon-served ``wal-push``, or None to archive directly."""
    parsed = parse_args(argv, "wal-push", PUSH_OPTS)
    if parsed is None or len(parsed[1]) != 1:
        return None
    options, (path,) = parsed
    sock, auto, idle = daemon_settings(options)
    if not sock:
        return None
    pgdata = options.get("--pgdata")
    start = (lambda: start_daemon(sock, options, pgdata, idle)) if auto else None
    return push_via(sock, path, pgdata, options.get("--system-id"), options.get("--pg-major"), on_absent=start)


def push_via(
    sock: str,
    path: str,
    pgdata: str | None,
    system_id: str | None,
    pg_major: str | None,
    *,
    on_absent: Callable[[], object] | None = None,
) -> int | None:
    """Hand one WAL file to the daemon at ``sock``: its exit code, or None to archive directly.

    ``on_absent`` (``wal_daemon = "auto"``): called, instead of a note, when no daemon is there at all.
    """
    full = path if os.path.isabs(path) or not pgdata else os.path.join(pgdata, path)
    try:
        sid = int(system_id) if system_id else read_system_id(pgdata)
        fd = os.open(full, os.O_RDONLY)
    except (OSError, ValueError, struct.error):
        return None  # the direct path gives the proper error
    name = os.path.basename(full)
    try:
        reply = _request(sock, encode_request("push", str(sid), name, str(pg_major or "")), fd)
    except Fallback as exc:
        if exc.absent and on_absent is not None:
            on_absent()
        else:
            _note(f"seedvault wal-push: {exc}; archiving directly")
        return None
    finally:
        os.close(fd)
    if reply.get("ok"):
        if reply.get("result") == "duplicate":
            _note(f"seedvault wal-push: {name} was already archived with identical content")
        return 0
    _note(f"seedvault wal-push: error: {reply.get('error') or 'archiver daemon refused the file'}")
    code = reply.get("exit")
    return min(max(code, 1), 125) if isinstance(code, int) else 1


def try_fetch(argv: Sequence[str]) -> int | None:
    """Exit code of a daemon-served ``wal-fetch`` (0, 1 quiet missing, 126 fatal), or None to go direct."""
    parsed = parse_args(argv, "wal-fetch", FETCH_OPTS)
    if parsed is None or len(parsed[1]) != 2:
        return None
    options, (name, dest) = parsed
    sock = socket_path(options)
    if not sock:
        return None
    return fetch_via(sock, name, dest, options.get("--pgdata"), options.get("--system-id"))


def fetch_via(sock: str, name: str, dest: str, pgdata: str | None, system_id: str | None) -> int | None:
    """Ask the daemon at ``sock`` for one WAL file: 0, 1 (missing), 126 (fatal), or None to go direct."""
    full = dest if os.path.isabs(dest) else os.path.join(pgdata or os.getcwd(), dest)
    try:
        sid = int(system_id) if system_id else read_system_id(pgdata)
    except (OSError, ValueError, struct.error):
        return None
    try:
        reply = _request(sock, encode_request("fetch", str(sid), name, full), None)
    except Fallback:
        return None  # quietly: recovery logs every restore_command's stderr
    if reply.get("ok"):
        if reply.get("note"):
            _note(f"seedvault wal-fetch: {reply['note']}")
        return 0
    if reply.get("missing"):
        return 1
    _note(f"seedvault wal-fetch: FATAL: {name}: {reply.get('error') or 'archiver daemon failed'}")
    return 126


def fast_main(argv: Sequence[str]) -> int | None:
    """Entry point hook: serve wal-push/wal-fetch through the daemon, or None for the full CLI."""
    if "wal-push" in argv:
        return try_push(argv)
    if "wal-fetch" in argv:
        return try_fetch(argv)
    return None
