"""``seedvault wal-daemon``: a long-running archiver that keeps the repository warm and works ahead.

Why: one process per segment pays for interpreter start, imports, the S3 client (~0.5 s measured here)
and the key lookup every time; a busy server writes several 16 MB segments a second. The daemon holds one
:class:`~seedvault.sources.postgres.wal.store.WalStore` (connections, unwrapped epoch key) and

* serves ``wal-push``: the client passes the WAL file's open descriptor; the daemon archives it and
  answers only once it is durable (the same contract as the direct path, which stays the fallback);
* works ahead like pgBackRest's archive-async: after each request it pushes, in parallel, the next
  segments PostgreSQL has marked ``.ready`` in ``pg_wal/archive_status``, so by the time the archiver
  asks for them they are already stored. It never touches ``archive_status`` itself: PostgreSQL marks a
  segment done only when *its* ``wal-push`` call returns 0;
* serves ``wal-fetch`` during recovery with read-ahead: it fetches and fully verifies the next segments
  of the timeline into ``pg_wal/.seedvault-prefetch`` while PostgreSQL replays the current one.

Nothing depends on it: a killed daemon costs one fallback to the direct path (the segment is then found
already stored, identical, or is pushed again), and PostgreSQL retries any non-zero exit anyway.

Only processes of the daemon's own user (or root) may talk to it: the socket is mode 0600 and every
connection's peer credentials are checked.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from seedvault.errors import ConfigError, ObjectNotFound, SeedvaultError
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.client import MAX_LINE, decode_request, encode_reply
from seedvault.sources.postgres.wal.store import PushResult, WalStore, partial_note

log = logging.getLogger(__name__)

PREFETCH_DIR = ".seedvault-prefetch"
KEEP_JOBS = 512


@dataclass
class _Job:
    ident: tuple[int, int, int, int]
    future: Future[PushResult]
    origin: str


@dataclass
class DaemonStats:
    requests: int = 0
    served_ahead: int = 0
    pushed: int = 0
    fetched: int = 0
    prefetch_hits: int = 0
    errors: int = 0
    started: float = field(default_factory=time.time)


def _ident(fd: int) -> tuple[int, int, int, int]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class WalDaemon:
    """Serve one cluster's wal-push/wal-fetch requests on a unix socket until :meth:`stop`."""

    def __init__(
        self,
        store: WalStore,
        socket_path: str | os.PathLike[str],
        *,
        pgdata: str | os.PathLike[str] | None = None,
        workers: int = 4,
        lookahead: int | None = None,
        fetch_ahead: int | None = None,
        zstd_level: int | None = None,
        allowed_uids: set[int] | None = None,
        emit: Any = None,
        idle_exit: float = 0.0,
        verbose: bool = True,
    ) -> None:
        self.store = store
        self.socket_path = Path(socket_path)
        self.pgdata = Path(pgdata) if pgdata else None
        self.workers = max(1, workers)
        self.lookahead = self.workers if lookahead is None else max(0, lookahead)
        self.fetch_ahead = self.workers if fetch_ahead is None else max(0, fetch_ahead)
        self.zstd_level = zstd_level
        self.allowed_uids = allowed_uids if allowed_uids is not None else {os.getuid(), 0}
        self.emit = emit or (lambda line: log.info("%s", line))
        self.idle_exit = idle_exit  # seconds without requests or work before stopping; 0 = never
        self.verbose = verbose  # one line per push; failures are always reported
        self._last_activity = time.monotonic()
        self.stats = DaemonStats()
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="wal-daemon")
        self._jobs: dict[str, _Job] = {}
        self._served: dict[str, tuple[int, int, int, int]] = {}  # answered recently: never pushed ahead again
        self._prefetch: dict[str, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._socket_ino: int | None = None
        self._conns: set[threading.Thread] = set()

    # --- life cycle ------------------------------------------------------------------------------
    def bind(self) -> None:
        """Create the socket (refusing if another daemon serves it; replacing a stale one)."""
        path = self.socket_path
        if path.exists() or path.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.settimeout(2)
                probe.connect(str(path))
            except OSError:
                path.unlink()  # stale: its daemon is gone
            else:
                raise ConfigError(f"another wal-daemon is already serving {path}")
            finally:
                probe.close()
        if not path.parent.is_dir():
            raise ConfigError(f"socket directory {path.parent} does not exist")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot create socket {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        sock.listen(64)
        sock.settimeout(0.5)
        self._listener = sock
        self._socket_ino = path.stat().st_ino
        self.store.current_epoch()  # the key object exists before the first request: no race on it
        _release_start_lock()

    def serve_forever(self) -> None:
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        try:
            while not self._stop.is_set():
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    if self._idle_expired():
                        self.emit(f"no requests for {self.idle_exit:.0f} s: stopping")
                        break
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    raise
                t = threading.Thread(target=self._serve_conn, args=(conn,), daemon=True)
                with self._lock:
                    self._conns = {c for c in self._conns if c.is_alive()}
                    self._conns.add(t)
                t.start()
        finally:
            self._shutdown()

    def _idle_expired(self) -> bool:
        if not self.idle_exit:
            return False
        with self._lock:
            busy = any(not j.future.done() for j in self._jobs.values()) or any(
                not f.done() for f in self._prefetch.values()
            )
            busy = busy or any(t.is_alive() for t in self._conns)
        if busy:
            self._last_activity = time.monotonic()
            return False
        return time.monotonic() - self._last_activity > self.idle_exit

    def stop(self, *_: Any) -> None:
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(OSError):
            if self.socket_path.stat().st_ino == self._socket_ino:
                self.socket_path.unlink()
        for t in list(self._conns):
            t.join(timeout=120)  # a request in flight finishes: its client is waiting for the verdict
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.pgdata is not None:
            shutil.rmtree(self.pgdata / "pg_wal" / PREFETCH_DIR, ignore_errors=True)

    # --- one connection --------------------------------------------------------------------------
    def _serve_conn(self, conn: socket.socket) -> None:
        fds: list[int] = []
        legacy = False  # a version-1 (JSON) client gets a version-1 answer
        try:
            conn.settimeout(30)
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            line, fds = self._receive(conn)
            legacy = line.startswith(b"{")
            request = _parse_request(line)
            if uid not in self.allowed_uids:
                reply: dict[str, Any] = {"ok": False, "fallback": True, "error": f"uid {uid} may not use this daemon"}
            else:
                reply = self._handle(request, fds)
        except Exception as exc:  # a broken client must never take the daemon down
            self.stats.errors += 1
            reply = {"ok": False, "fallback": True, "error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
        with contextlib.suppress(OSError):
            conn.settimeout(30)
            conn.sendall((json.dumps(reply) + "\n").encode() if legacy else encode_reply(reply))
        conn.close()

    def _receive(self, conn: socket.socket) -> tuple[bytes, list[int]]:
        buf = b""
        fds: list[int] = []
        fd_size = array.array("i").itemsize
        while not buf.endswith(b"\n"):
            data, ancdata, _flags, _addr = conn.recvmsg(4096, socket.CMSG_SPACE(4 * fd_size))
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds += array.array("i", payload[: len(payload) - len(payload) % fd_size]).tolist()
            if not data:
                raise ValueError("client closed the connection mid-request")
            buf += data
            if len(buf) > MAX_LINE:
                raise ValueError("request too long")
        return buf, fds

    def _handle(self, request: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        self.stats.requests += 1
        self._last_activity = time.monotonic()
        if str(request.get("system_id")) != self.store.system_id:
            return {"ok": False, "fallback": True, "error": f"daemon serves system {self.store.system_id}"}
        op = request.get("op")
        name = str(request.get("name") or "")
        try:
            wn.classify(name)
        except SeedvaultError as exc:
            return {"ok": False, "exit": exc.exit_code, "error": exc.one_line()}
        if op == "push" and len(fds) == 1:
            return self._push(name, fds[0], request)
        if op == "fetch" and request.get("dest"):
            return self._fetch(name, Path(str(request["dest"])))
        return {"ok": False, "fallback": True, "error": f"unsupported operation {op!r}"}

    # --- push ------------------------------------------------------------------------------------
    def _push(self, name: str, fd: int, request: dict[str, Any]) -> dict[str, Any]:
        ident = _ident(fd)
        with self._lock:
            job = self._jobs.get(name)
        result: PushResult | None = None
        if job is not None and job.ident == ident:
            with contextlib.suppress(Exception):  # a failed look-ahead push: this request tries itself
                result = job.future.result()
                self.stats.served_ahead += 1
        if result is None:
            pg_major = int(request["pg_major"]) if request.get("pg_major") else None
            try:
                with os.fdopen(os.dup(fd), "rb") as fh:
                    result = self._push_file(name, fh, pg_major)
            except SeedvaultError as exc:
                self.stats.errors += 1
                self.emit(f"push {name} failed: {exc.one_line()}")
                return {"ok": False, "exit": exc.exit_code, "error": exc.one_line()}
            self._log_push(result, "request")
        with self._lock:
            self._jobs.pop(name, None)
            self._served[name] = ident  # PostgreSQL renames .ready to .done only after our answer
            while len(self._served) > KEEP_JOBS:
                self._served.pop(next(iter(self._served)))
        self._work_ahead(name)
        return {"ok": True, "result": result.result, "key": result.key}

    def _push_file(self, name: str, fh: BinaryIO, pg_major: int | None) -> PushResult:
        res = self.store.push(
            Path(name), name=name, fileobj=fh, source="wal-daemon", pg_major=pg_major, settings_level=self.zstd_level
        )
        self.stats.pushed += 1
        return res

    def _log_push(self, res: PushResult, origin: str) -> None:
        if not self.verbose:
            return
        mib = 1048576
        self.emit(
            f"pushed {res.name} ({res.result}, {res.raw_size / mib:.1f} MiB -> {res.stored_size / mib:.1f} MiB, "
            f"{res.seconds:.2f} s, {origin})"
        )

    def _ready_names(self) -> list[str]:
        if self.pgdata is None:
            return []
        status = self.pgdata / "pg_wal" / "archive_status"
        try:
            ready = [e.name[: -len(".ready")] for e in os.scandir(status) if e.name.endswith(".ready")]
        except OSError:
            return []
        # PostgreSQL archives timeline history files first, then the oldest segment.
        return sorted(ready, key=lambda n: (not n.endswith(".history"), n))

    def _work_ahead(self, just_done: str) -> None:
        if self.lookahead == 0 or self._stop.is_set():
            return
        with self._lock:
            running = sum(1 for j in self._jobs.values() if not j.future.done())
            room = self.lookahead - running
            if room <= 0:
                return
            for name in self._ready_names():
                if room <= 0:
                    break
                if name == just_done or name in self._jobs or name in self._served:
                    continue
                try:
                    fd = os.open(self.pgdata / "pg_wal" / name, os.O_RDONLY)  # type: ignore[operator]
                except OSError:
                    continue
                ident = _ident(fd)
                fut = self._pool.submit(self._ahead_job, name, fd)
                self._jobs[name] = _Job(ident, fut, "lookahead")
                room -= 1
            if len(self._jobs) > KEEP_JOBS:  # never asked for (e.g. an archive_status reset): forget
                for stale in [n for n, j in self._jobs.items() if j.future.done()][: len(self._jobs) - KEEP_JOBS]:
                    self._jobs.pop(stale, None)

    def _ahead_job(self, name: str, fd: int) -> PushResult:
        try:
            with os.fdopen(fd, "rb") as fh:
                res = self._push_file(name, fh, None)
        except Exception as exc:
            self.emit(f"look-ahead push of {name} failed ({exc}); it is retried when PostgreSQL asks")
            raise
        self._log_push(res, "look-ahead")
        return res

    # --- fetch -----------------------------------------------------------------------------------
    def _fetch(self, name: str, dest: Path) -> dict[str, Any]:
        with self._lock:
            fut = self._prefetch.pop(name, None)
        header: dict[str, Any] | None = None
        if fut is not None:
            with contextlib.suppress(Exception):
                header = fut.result()
                spool = self._spool_dir() / name
                _place(spool, dest)
                self.stats.prefetch_hits += 1
        if header is None:
            try:
                header = self.store.fetch(name, dest)
            except ObjectNotFound:
                return {"ok": False, "missing": True}
            except SeedvaultError as exc:
                self.stats.errors += 1
                self.emit(f"fetch {name} failed: {exc.one_line()}")
                return {"ok": False, "exit": exc.exit_code, "error": exc.one_line()}
        self.stats.fetched += 1
        if header.get("served_partial"):
            note = partial_note(name, header)
            self.emit(note)
            return {"ok": True, "result": "fetched", "note": note}
        self._read_ahead(name, header)
        return {"ok": True, "result": "fetched"}

    def _spool_dir(self) -> Path:
        base = (self.pgdata / "pg_wal") if self.pgdata else self.socket_path.parent
        spool = base / PREFETCH_DIR
        spool.mkdir(mode=0o700, exist_ok=True)
        return spool

    def _read_ahead(self, name: str, header: dict[str, Any]) -> None:
        if self.fetch_ahead == 0 or self._stop.is_set():
            return
        wal = wn.classify(name)
        seg_size = header.get("wal_segment_size")
        if wal.kind != "segment" or not isinstance(seg_size, int):
            return
        segno = wal.segno(seg_size)
        with self._lock:
            for ahead in range(1, self.fetch_ahead + 1):
                nxt = wn.segment_name(wal.timeline, segno + ahead, seg_size)
                if nxt not in self._prefetch:
                    self._prefetch[nxt] = self._pool.submit(self._prefetch_job, nxt)
            for stale in [n for n in self._prefetch if n[:8] == name[:8] and n < name]:
                self._prefetch.pop(stale).cancel()

    def _prefetch_job(self, name: str) -> dict[str, Any]:
        # A miss is not remembered: on a standby the segment may be archived a moment later.
        return self.store.fetch(name, self._spool_dir() / name)


def _parse_request(line: bytes) -> dict[str, Any]:
    """A request of protocol version 2 (:mod:`seedvault.sources.postgres.wal.client`), or version 1 (JSON, older)."""
    if line.startswith(b"{"):
        request = json.loads(line)
        if not isinstance(request, dict) or request.get("v") != 1:
            raise ValueError("unsupported request (protocol 1 or 2 expected)")
        return request
    request = decode_request(line)
    if request is None:
        raise ValueError("unsupported request (protocol 1 or 2 expected)")
    return request


def serving_line(socket_path: str | os.PathLike[str], system_id: str | int, workers: int) -> str:
    """The daemon's first log line; it names the pid, which is how a started daemon is found and stopped."""
    return f"seedvault wal-daemon: serving {socket_path} for system {system_id} ({workers} workers, pid {os.getpid()})"


def daemon_pids(log_text: str) -> list[int]:
    """The pids of every daemon a log says was serving (see :func:`serving_line`), oldest first."""
    return [int(pid) for pid in re.findall(r"wal-daemon: serving .* pid (\d+)\)", log_text)]


def _release_start_lock() -> None:
    """Close the start lock an automatic start handed down (seedvault.sources.postgres.wal.client.start_daemon)."""
    from seedvault.sources.postgres.wal.client import LOCK_FD_ENV

    fd = os.environ.pop(LOCK_FD_ENV, None)
    if fd and fd.isdigit():
        with contextlib.suppress(OSError):
            os.close(int(fd))


def _place(src: Path, dest: Path) -> None:
    """Move a verified spooled file to where PostgreSQL asked for it, atomically and durably."""
    tmp = dest.with_name(f".{dest.name}.seedvault-tmp")
    try:
        os.replace(src, tmp) if src.stat().st_dev == dest.parent.stat().st_dev else shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
        with contextlib.suppress(OSError):
            src.unlink()
