"""The fast path of ``wal-push``/``wal-fetch``: hand the request to a running ``seedvault wal-daemon``.

Why: PostgreSQL runs ``archive_command`` once per 16 MB segment, one at a time. A fresh Python process
that imports the engine and builds an S3 client spends ~0.2-0.7 s before the first byte moves, which
a busy server outruns. This module imports only the standard library (~30 ms), passes the open WAL file
descriptor to the daemon over a unix socket (SCM_RIGHTS: the daemon archives exactly the file
PostgreSQL named, with no path games) and waits until the daemon says the file is durable.

The daemon is an accelerator, never a dependency: no socket configured, nothing listening, a daemon
killed mid-request, or a daemon that cannot serve this cluster -> :func:`try_push` returns ``None`` and
the caller archives directly (the segment then ends up stored once: the direct push finds a daemon's
completed copy as an identical duplicate). A verdict of the daemon (e.g. "different content") is final.

Wire protocol (version 1), one request per connection:
    client -> daemon: one JSON line ``{"v": 1, "op": "push", "name": ..., "system_id": ...}``, with the
                      WAL file's descriptor attached (push), or ``{"v": 1, "op": "fetch", "name": ...,
                      "dest": <absolute path>, "system_id": ...}`` (fetch);
    daemon -> client: one JSON line ``{"ok": true, "result": "stored"|"duplicate"|"fetched"}`` or
                      ``{"ok": false, "exit": N, "error": "<one line>"}`` (a verdict) or
                      ``{"ok": false, "fallback": true, "error": ...}`` (not for me: go direct), or
                      ``{"ok": false, "missing": true}`` (fetch: not archived).
"""

from __future__ import annotations

import array
import json
import os
import socket
import struct
import sys
import tomllib
from collections.abc import Sequence

PROTOCOL = 1
SOCKET_ENV = "SEEDVAULT_WAL_SOCKET"
CONFIG_ENV = "SEEDVAULT_CONFIG"
REPLY_TIMEOUT = 900.0  # a daemon that hangs longer than this is treated as dead: the push goes direct
MAX_LINE = 1 << 16

# Global options the fast path understands (value-taking); anything else -> the full CLI decides.
GLOBAL_VALUE_OPTS = {"--config", "--repository", "-r", "--s3-endpoint", "--key-file", "--passphrase-file"}
PUSH_OPTS = {"--pgdata", "--system-id", "--pg-major", "--socket"}
FETCH_OPTS = {"--pgdata", "--system-id", "--socket"}


class Fallback(Exception):
    """The daemon path is not available for this request; archive directly."""


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


def socket_path(options: dict[str, str], env: dict[str, str] | os._Environ[str] = os.environ) -> str | None:
    """The daemon socket: ``--socket``, else SEEDVAULT_WAL_SOCKET, else ``wal_socket`` in the config file."""
    if options.get("--socket"):
        return options["--socket"]
    if env.get(SOCKET_ENV):
        return env[SOCKET_ENV]
    config = options.get("--config") or env.get(CONFIG_ENV)
    if not config:
        return None
    try:
        with open(config, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return None  # the full CLI reports a broken config properly
    section = data.get("seedvault", data)
    value = section.get("wal_socket") if isinstance(section, dict) else None
    return str(value) if value else None


def read_system_id(pgdata: str | None) -> int:
    with open(os.path.join(pgdata or ".", "global", "pg_control"), "rb") as fh:
        return struct.unpack("<Q", fh.read(8))[0]


def _request(path: str, message: dict, fd: int | None) -> dict:
    if not os.path.exists(path):
        raise Fallback("no archiver daemon socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        try:
            sock.connect(path)
        except OSError as exc:
            raise Fallback(f"archiver daemon not reachable ({exc.strerror or exc})") from None
        data = (json.dumps(message) + "\n").encode()
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
    try:
        reply = json.loads(buf)
    except ValueError:
        raise Fallback("archiver daemon sent an unreadable reply") from None
    if not isinstance(reply, dict):
        raise Fallback("archiver daemon sent an unreadable reply")
    if reply.get("fallback"):
        raise Fallback(str(reply.get("error") or "archiver daemon declined"))
    return reply


def _note(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def try_push(argv: Sequence[str]) -> int | None:
    """Exit code of a daemon-served ``wal-push``, or None to archive directly."""
    parsed = parse_args(argv, "wal-push", PUSH_OPTS)
    if parsed is None or len(parsed[1]) != 1:
        return None
    options, (path,) = parsed
    sock = socket_path(options)
    if not sock:
        return None
    return push_via(sock, path, options.get("--pgdata"), options.get("--system-id"), options.get("--pg-major"))


def push_via(sock: str, path: str, pgdata: str | None, system_id: str | None, pg_major: str | None) -> int | None:
    """Hand one WAL file to the daemon at ``sock``: its exit code, or None to archive directly."""
    full = path if os.path.isabs(path) or not pgdata else os.path.join(pgdata, path)
    try:
        sid = int(system_id) if system_id else read_system_id(pgdata)
        fd = os.open(full, os.O_RDONLY)
    except (OSError, ValueError, struct.error):
        return None  # the direct path gives the proper error
    try:
        msg = {"v": PROTOCOL, "op": "push", "name": os.path.basename(full), "system_id": str(sid)}
        if pg_major:
            msg["pg_major"] = str(pg_major)
        reply = _request(sock, msg, fd)
    except Fallback as exc:
        _note(f"seedvault wal-push: {exc}; archiving directly")
        return None
    finally:
        os.close(fd)
    if reply.get("ok"):
        if reply.get("result") == "duplicate":
            _note(f"seedvault wal-push: {msg['name']} was already archived with identical content")
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
        reply = _request(sock, {"v": PROTOCOL, "op": "fetch", "name": name, "dest": full, "system_id": str(sid)}, None)
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
