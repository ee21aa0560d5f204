"""``restore postgres-pitr``: base backup + archived WAL -> a server recovered to a point, promoted.

Order, each step only after the one before succeeded:

1. **Plan** (nothing touched yet): target timeline and its authenticated history, the newest base backup
   that ends before the target, and every WAL segment from the backup's start checked present in the
   catalog (a gap stops here, naming the segment).
2. **Lay out** into an absent or empty ``--data-dir``: the base tar streamed from storage (authenticated
   chunk by chunk, digest checked at the end) straight into the directory; ``pg_verifybackup
   --no-parse-wal`` on the result before any server starts.
3. **Configure**: the seedvault settings block (loopback, ``--port``), ``restore_command`` (the backup's
   own ``archive_command`` with ``wal-push %p`` turned into ``wal-fetch %f %p``, or ``--restore-command``),
   the target, ``recovery_target_action = promote``, an explicit ``recovery_target_timeline`` and
   ``recovery.signal``. Settings PostgreSQL checks against the primary (``max_connections`` ...) are left
   as the backup has them, never lowered.
4. **Recover**: start the server as ``--run-as``, wait for promotion, report the recovered LSN, timeline and
   last replayed transaction time; push the new timeline's ``.history`` ourselves, so a second restore can
   never reuse the timeline even if the new server does not archive.

On failure the server is stopped and the data directory (which was empty) is removed unless
``keep_failed``; the reason is the server's own log line (e.g. ``wal-fetch: FATAL`` naming a segment).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from seedvault import audit, leases, process
from seedvault.errors import (
    ConfigError,
    DatabaseUnreachable,
    RecoveryFailed,
    RestoreVerificationFailed,
    SourceError,
    TargetError,
    UsageError,
)
from seedvault.repository import Repository
from seedvault.sources.postgres.binaries import find_server_binaries
from seedvault.sources.postgres.cluster import LocalCluster, default_run_as
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.plan import Plan, Target, make_plan
from seedvault.sources.postgres.wal.store import WalStore

log = logging.getLogger(__name__)

# Settings of the seedvault block that belong to the host the backup came from, not to the restored copy.
_HOST_SETTINGS = {"port", "listen_addresses", "unix_socket_directories", "unix_socket_permissions"}


@dataclass
class PitrReport:
    plan: dict[str, Any]
    data_dir: str
    port: int
    timeline: int = 0
    lsn: str = ""
    recovered_to: str | None = None
    stop_reason: str | None = None
    read_ahead: str | None = None  # the read-ahead daemon's summary: requests, segments served ahead
    seconds: dict[str, float] = field(default_factory=dict)
    running: bool = True

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def restore_command_for(archive_command: str | None, override: str | None) -> str:
    if override:
        if "%f" not in override or "%p" not in override:
            raise UsageError("--restore-command must contain %f and %p")
        return override
    part = wal_push_part(archive_command)
    if part is not None:
        return re.sub(r"\bwal-push\b(.*)%p", r"wal-fetch\1%f %p", part, count=1)
    raise ConfigError(
        "cannot derive restore_command: the backup's archive_command does not run 'seedvault wal-push %p'",
        hint='pass --restore-command "/path/to/seedvault --config FILE wal-fetch %f %p"',
    )


def wal_push_part(archive_command: str | None) -> str | None:
    """The command of ``archive_command`` that runs ``wal-push ... %p``, or None.

    Only that command: an archive_command such as "pgbackrest ... archive-push %p && seedvault wal-push %p"
    (a migration) must not turn into a restore_command, or a read-ahead daemon, that runs pgbackrest.
    """
    for part in re.split(r"\s*(?:&&|\|\||;)\s*", archive_command or ""):
        if re.search(r"\bwal-push\b.*%p", part):
            return part
    return None


def _target_settings(target: Target, timeline: int) -> dict[str, str]:
    conf = {"recovery_target_action": "promote", "recovery_target_timeline": str(timeline)}
    if target.kind == "time":
        conf["recovery_target_time"] = str(target.value)
    elif target.kind == "lsn":
        conf["recovery_target_lsn"] = str(target.value)
    elif target.kind == "name":
        conf["recovery_target_name"] = str(target.value)
    elif target.kind == "immediate":
        conf["recovery_target"] = "immediate"
    if target.kind in ("time", "lsn", "name"):
        conf["recovery_target_inclusive"] = "on" if target.inclusive else "off"
    return conf


def _empty_target_dir(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise TargetError(f"{path} exists and is not empty; PITR restores only into an absent or empty directory")


def extract_base(repo: Repository, plan: Plan, data_dir: Path) -> int:
    """Stream base.tar from storage into data_dir; returns the number of members."""

    class _Reader:
        # Why an offset into the current chunk: tarfile reads 512-byte headers and 16 KiB blocks, and
        # re-slicing a 1 MiB chunk's remainder on every read copied it over and over (quadratic: 6 CPU
        # minutes per GiB measured by bench/wal.py).
        def __init__(self) -> None:
            self._it = repo.read_object(plan.backup_id, "base.tar", body=plan.backup)
            self._chunk = b""
            self._pos = 0

        def read(self, n: int = -1) -> bytes:
            parts = []
            want = n
            while want != 0:
                if self._pos >= len(self._chunk):
                    try:
                        self._chunk, self._pos = next(self._it), 0
                    except StopIteration:
                        break
                    continue
                end = len(self._chunk) if want < 0 else min(len(self._chunk), self._pos + want)
                parts.append(self._chunk[self._pos : end])
                if want > 0:
                    want -= end - self._pos
                self._pos = end
            return parts[0] if len(parts) == 1 else b"".join(parts)

        def drain(self) -> None:
            for _ in self._it:  # runs the digest/size check at the end of the object
                pass

    reader = _Reader()
    count = 0
    with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
        for member in tar:
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                raise RestoreVerificationFailed(f"base backup member {member.name!r} escapes the data directory")
            if member.islnk() or (member.issym() and (member.linkname.startswith("/") or ".." in member.linkname)):
                raise RestoreVerificationFailed(f"base backup member {member.name!r} links outside the data directory")
            try:
                tar.extract(member, data_dir, set_attrs=False, filter="tar")
            except TypeError:  # Python < 3.11.4 has no extraction filters; the checks above stand in
                tar.extract(member, data_dir, set_attrs=False)
            count += 1
    reader.drain()
    (data_dir / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)
    return count


def _verifybackup(cluster: LocalCluster, data_dir: Path) -> None:
    tool = cluster.binaries.tool("pg_verifybackup")
    proc = process.run(
        [str(tool), "--no-parse-wal", "--quiet", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=3600,
        inherit_env=False,
        **cluster._as_run_as(),
    )
    if proc.returncode != 0:
        line = next((ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()), f"exit {proc.returncode}")
        raise RestoreVerificationFailed(f"pg_verifybackup rejected the laid-out base backup: {line.strip()}")


_STOP_RE = re.compile(r"(recovery stopping [^\n]*|last completed transaction was at log time [^\n]*)")
_FATAL_RE = re.compile(r"(FATAL|PANIC):\s+(.*)")


def _log_since(cluster: LocalCluster, offset: int) -> str:
    try:
        with open(cluster.log_file, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _failure_reason(log: str) -> str:
    fetch = [ln for ln in log.splitlines() if "seedvault wal-fetch: FATAL" in ln]
    if fetch:
        return fetch[-1].split("seedvault wal-fetch: FATAL: ", 1)[-1].strip()
    fatal = _FATAL_RE.findall(log)
    if fatal:
        return fatal[-1][1].strip()
    return "the server stopped during recovery"


def restore_pitr(
    repo: Repository,
    target: Target,
    data_dir: str | os.PathLike[str],
    *,
    port: int | None = None,
    run_as: str | None = None,
    backup_id: str | None = None,
    system_id: str | None = None,
    timeline: int | None = None,
    restore_command: str | None = None,
    archive_mode: str = "preserve",
    stop_after: bool = False,
    keep_failed: bool = False,
    timeout: float = 3600.0,
    read_ahead: int = 4,
    password: str | None = None,
) -> PitrReport:
    """Point-in-time recovery into a new data directory (audited: ``pitr``, with the base backup and the target).

    ``password``: the source's superuser password, which the copy keeps (a Prefect worker has it in the target
    block, not in a PGPASSFILE); held in memory and handed to libpq, never written or logged.
    """
    process.register_secret(password)
    with audit.audited(repo, "pitr", [backup_id] if backup_id else []) as ev:
        ev.details.update(target=f"{target.kind} {target.value or ''}".strip(), data_dir=str(data_dir))
        report = _restore_pitr(repo, target, data_dir, port=port, run_as=run_as, backup_id=backup_id,
                               system_id=system_id, timeline=timeline, restore_command=restore_command,
                               archive_mode=archive_mode, stop_after=stop_after, keep_failed=keep_failed,
                               timeout=timeout, read_ahead=read_ahead, password=password)  # fmt: skip
        ev.backup_ids = [str(report.plan.get("backup_id") or backup_id or "")]
        ev.details.update(system_id=report.plan.get("system_id"), lsn=report.lsn, timeline=report.timeline,
                          recovered_to=report.recovered_to)  # fmt: skip
        return report


def _restore_pitr(
    repo: Repository,
    target: Target,
    data_dir: str | os.PathLike[str],
    *,
    port: int | None,
    run_as: str | None,
    backup_id: str | None,
    system_id: str | None,
    timeline: int | None,
    restore_command: str | None,
    archive_mode: str,
    stop_after: bool,
    keep_failed: bool,
    timeout: float,
    read_ahead: int,
    password: str | None = None,
) -> PitrReport:
    if archive_mode not in ("preserve", "off"):
        raise UsageError("--archive-mode must be preserve or off")
    t0 = time.perf_counter()
    data = Path(data_dir).absolute()
    _empty_target_dir(data)
    plan = make_plan(repo, target, backup_id=backup_id, system_id=system_id, timeline=timeline)
    # Held until the copy is recovered: prune keeps this base backup and the WAL it needs. Planned again once
    # the lease is stored, so nothing a prune deleted just before it can be missing from the plan.
    with leases.shared(repo, "restore postgres-pitr", [plan.backup_id]):
        plan = make_plan(repo, target, backup_id=plan.backup_id, system_id=plan.system_id, timeline=timeline)
        return _recover(
            repo, plan, target, data, t0, port=port, run_as=run_as, restore_command=restore_command,
            archive_mode=archive_mode, stop_after=stop_after, keep_failed=keep_failed, timeout=timeout,
            read_ahead=read_ahead, password=password,
        )  # fmt: skip


def _recover(
    repo: Repository,
    plan: Plan,
    target: Target,
    data: Path,
    t0: float,
    *,
    port: int | None,
    run_as: str | None,
    restore_command: str | None,
    archive_mode: str,
    stop_after: bool,
    keep_failed: bool,
    timeout: float,
    read_ahead: int,
    password: str | None = None,
) -> PitrReport:
    src = plan.backup["source"]
    binaries = find_server_binaries(int(src["pg_major"]))
    existed = data.exists()
    cluster = LocalCluster(data, port=port, binaries=binaries, run_as=run_as or default_run_as())
    cluster.password = password
    report = PitrReport(plan.as_dict(), str(data), cluster.port)
    reader: _ReadAhead | None = None
    try:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        report.seconds["plan"] = round(time.perf_counter() - t0, 3)
        members = extract_base(repo, plan, data)
        cluster.chown_tree(data)
        os.chmod(data, 0o700)
        report.seconds["extract"] = round(time.perf_counter() - t0, 3)
        _verifybackup(cluster, data)
        report.seconds["verify"] = round(time.perf_counter() - t0, 3)
        old = cluster._read_conf_block()
        settings = {k: v for k, v in old.items() if k not in _HOST_SETTINGS}
        effective = effective_settings(data)  # postgresql.conf, then postgresql.auto.conf (ALTER SYSTEM)
        for name in list(settings):  # on the source, ALTER SYSTEM beat our block: keep what it ran with
            if name in effective:
                settings[name] = effective[name]
        archive = effective.get("archive_command")
        if getattr(repo, "is_replica", False) and wal_push_part(archive):
            # Read from the replica (--replica, or the fallback): so must restore_command and the read-ahead daemon.
            archive = f"SEEDVAULT_USE_REPLICA=on {wal_push_part(archive)}"
        settings["restore_command"] = restore_command_for(archive, restore_command)
        if "archive_command" in effective and "archive_command" not in settings:
            settings["archive_command"] = effective["archive_command"]
        if archive_mode == "off":
            settings["archive_mode"] = "off"
        settings.update(_target_settings(target, plan.timeline))
        if restore_command is None and read_ahead > 0:
            reader = _ReadAhead.start(
                cluster,
                archive if archive and "SEEDVAULT_USE_REPLICA" in archive else settings.get("archive_command") or "",
                read_ahead,
            )
            if reader is not None:
                settings["restore_command"] = reader.restore_command(settings["restore_command"])
        cluster.configure(extra_conf=settings)
        # ALTER SYSTEM settings would win over our block: the copy must listen where we say, recover as
        # we say and (with --archive-mode off) not archive, so those lines of the copy's auto.conf go.
        neutralize_auto_conf(data, set(settings) | _HOST_SETTINGS)
        signal = data / "recovery.signal"
        signal.touch()
        cluster.chown_tree(data)
        offset = cluster.log_file.stat().st_size if cluster.log_file.exists() else 0
        try:
            cluster.start(timeout=timeout)
        except SourceError as exc:
            raise RecoveryFailed(
                f"recovery failed: {_failure_reason(_log_since(cluster, offset)) or exc.one_line()}",
                hint=f"server log: {cluster.log_file}",
            ) from None
        _wait_promoted(cluster, offset, timeout)
        report.seconds["recover"] = round(time.perf_counter() - t0, 3)
        with cluster.connect(autocommit=True) as conn:
            row = conn.execute("SELECT pg_current_wal_lsn()::text, (SELECT timeline_id FROM pg_control_checkpoint())")
            lsn, _ = row.fetchone()  # type: ignore[misc]
            tli = _current_timeline(conn)
        report.lsn, report.timeline = lsn, tli
        log = _log_since(cluster, offset)
        stops = _STOP_RE.findall(log)
        # PostgreSQL logs "recovery stopping before/after ..." when a target was hit, then "last completed
        # transaction ..." on promotion: the former says why recovery ended, so it wins.
        targeted = [s for s in stops if s.startswith("recovery stopping")]
        report.stop_reason = (targeted or stops or [None])[-1]
        m = re.search(r"(?:time|log time) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[.\d]*\+?[\d:]*)", report.stop_reason or "")
        report.recovered_to = m.group(1) if m else None
        if archive_mode != "off":  # a copy that does not archive is no branch of the archive
            _push_history(repo, plan, data, tli)
        report.plan["members"] = members
        if reader is not None:
            report.read_ahead = reader.stop()
            reader = None
        if stop_after:
            cluster.stop()
            report.running = False
    except BaseException:
        if reader is not None:
            reader.stop()
        with contextlib.suppress(Exception):
            if cluster.is_running():
                cluster.stop("immediate", timeout=30)
        if not keep_failed:
            shutil.rmtree(data, ignore_errors=True)
            if not existed:
                with contextlib.suppress(OSError):
                    data.rmdir()
        raise
    report.seconds["total"] = round(time.perf_counter() - t0, 3)
    return report


_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def daemon_program(archive_command: str | None) -> tuple[list[str], dict[str, str]] | None:
    """The program (argv before ``wal-push``) and variable settings of archive_command's wal-push, or None.

    The shell runs archive_command, so "SEEDVAULT_CONFIG=/etc/sv.toml seedvault wal-push %p" sets a variable
    for the command: the read-ahead daemon gets the same in its environment (not as its program name).
    """
    try:
        tokens = shlex.split(wal_push_part(archive_command) or "")
        head = tokens[: tokens.index("wal-push")]
    except ValueError:
        return None
    settings: dict[str, str] = {}
    while head and _ASSIGNMENT.match(head[0]):
        name, value = head.pop(0).split("=", 1)
        settings[name] = value
    return (head, settings) if head else None


class _ReadAhead:
    """A ``seedvault wal-daemon`` serving this recovery's ``wal-fetch`` calls with parallel read-ahead.

    Why: PostgreSQL calls restore_command once per segment and waits for each; a fresh process per call
    pays for imports, the S3 client and the key lookup, and nothing downloads while a segment replays.
    The daemon runs the very program and settings of the backup's archive_command, as the server's user,
    with the server's minimal environment; if it cannot start, wal-fetch simply works directly.
    """

    def __init__(self, proc: Any, sock: Path, log_path: Path, tmpdir: Path) -> None:
        self.proc, self.sock, self.log_path, self.tmpdir = proc, sock, log_path, tmpdir

    @classmethod
    def start(cls, cluster: LocalCluster, archive_command: str, workers: int) -> _ReadAhead | None:
        found = daemon_program(archive_command)
        if found is None:
            return None
        head, settings = found
        tmpdir = Path(tempfile.mkdtemp(prefix="seedvault-recovery-"))
        sock = tmpdir / "wal.sock"
        log_path = cluster.data_dir.parent / f"{cluster.data_dir.name}.wal-daemon.log"
        os.chown(tmpdir, cluster.uid, cluster.gid)
        argv = [*head, "wal-daemon", "--pgdata", str(cluster.data_dir), "--socket", str(sock)]
        argv += ["--workers", str(workers), "--lookahead", "0", "--fetch-ahead", str(workers * 2)]
        with open(log_path, "ab") as out:
            try:
                proc = process.spawn(
                    argv, extra_env=settings, inherit_env=False, stdout=out, stderr=out, **cluster._as_run_as()
                )
            except OSError as exc:
                log.warning("read-ahead daemon did not start (%s); wal-fetch works directly", exc)
                shutil.rmtree(tmpdir, ignore_errors=True)
                return None
        deadline = time.monotonic() + 20
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.warning("read-ahead daemon did not start (see %s); wal-fetch works directly", log_path)
                with contextlib.suppress(Exception):
                    proc.kill()
                    proc.wait(timeout=10)
                shutil.rmtree(tmpdir, ignore_errors=True)
                return None
            time.sleep(0.05)
        return cls(proc, sock, log_path, tmpdir)

    def restore_command(self, command: str) -> str:
        return re.sub(r"\bwal-fetch\b", f"wal-fetch --socket {shlex.quote(str(self.sock))}", command, count=1)

    def stop(self) -> str | None:
        """Stop the daemon; its closing line (requests, segments read ahead) for the report."""
        with contextlib.suppress(Exception):
            if self.proc.poll() is None:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except Exception:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        try:
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if "stopped;" in ln]
        except OSError:
            return None
        return lines[-1].split("stopped; ", 1)[-1] if lines else None


def _current_timeline(conn: Any) -> int:
    row = conn.execute("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)").fetchone()
    return int(row[0], 16)


def _wait_promoted(cluster: LocalCluster, offset: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not cluster.is_running():
            raise RecoveryFailed(
                f"recovery failed: {_failure_reason(_log_since(cluster, offset))}",
                hint=f"server log: {cluster.log_file}",
            )
        state = _recovery_state(cluster)
        if state == "promoted":
            return
        if state == "paused":  # pg_get_wal_replay_pause_state (PG 14+)
            raise RecoveryFailed(
                "recovery paused instead of promoting (a setting is lower than on the source?)",
                hint=f"server log: {cluster.log_file}",
            )
        time.sleep(0.3)
    raise RecoveryFailed(f"recovery did not finish within {timeout:.0f} s", hint=f"server log: {cluster.log_file}")


def _recovery_state(cluster: LocalCluster) -> str | None:
    """promoted | paused | recovering, or None while the server does not answer yet."""
    try:
        with cluster.connect(autocommit=True, connect_timeout=2) as conn:
            if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:  # type: ignore[index]
                return "promoted"
            if cluster.major >= 14:
                paused = conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0]  # type: ignore[index]
                if paused == "paused":
                    return "paused"
            return "recovering"
    except DatabaseUnreachable as exc:
        refusal = _refusal(exc.__cause__)
        if refusal:
            raise RecoveryFailed(
                f"the recovered server at 127.0.0.1:{cluster.port} refuses seedvault's connection as"
                f" {cluster.superuser}: {refusal}; its recovery cannot be followed",
                hint="give that user's password in PGPASSFILE (an entry for 127.0.0.1:*) or PGPASSWORD,"
                f" then remove {cluster.data_dir} and restore again",
            ) from None
        return None
    except psycopg.Error:
        return None


# Server answers that mean "not yet": starting up, in recovery and not yet accepting connections, too many.
_NOT_YET = {"57P03", "53300"}


def _refusal(exc: BaseException | None) -> str | None:
    """Why a server that answers refuses the connection for good (auth, no such role), else None.

    A poll that took a refusal for "not answering yet" would wait out its whole timeout (an hour) and then
    report "recovery did not finish".
    """
    if not isinstance(exc, psycopg.OperationalError):
        return None
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate and sqlstate not in _NOT_YET:
        return text
    if "no password supplied" in text or "authentication failed" in text or "does not exist" in text:
        return text
    return None


_CONF_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=?\s*(.*?)\s*$")


def _conf_value(raw: str) -> str:
    raw = raw.strip()
    if raw.startswith("'"):
        out, i = [], 1
        while i < len(raw):
            c = raw[i]
            if c == "'" and i + 1 < len(raw) and raw[i + 1] == "'":
                out.append("'")
                i += 2
                continue
            if c == "\\" and i + 1 < len(raw):
                out.append(raw[i + 1])
                i += 2
                continue
            if c == "'":
                break
            out.append(c)
            i += 1
        return "".join(out)
    return raw.split("#", 1)[0].strip()


def _parse_conf(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _CONF_LINE.match(line)
        if m and m.group(1) not in ("include", "include_if_exists", "include_dir"):
            out[m.group(1).lower()] = _conf_value(m.group(2))
    return out


def effective_settings(data: Path) -> dict[str, str]:
    """Settings as the server would read them from the data directory: postgresql.conf, then auto.conf.

    Why: archive_command may have been set with ALTER SYSTEM (postgresql.auto.conf) or in the server's own
    postgresql.conf, not only in a seedvault settings block. Include directives are not followed (their
    targets are outside the base backup).
    """
    out: dict[str, str] = {}
    for name in ("postgresql.conf", "postgresql.auto.conf"):
        with contextlib.suppress(OSError):
            out.update(_parse_conf((data / name).read_text()))
    return out


def neutralize_auto_conf(data: Path, names: set[str]) -> list[str]:
    """Comment out ``names`` in the laid-out copy's postgresql.auto.conf; returns what was disabled."""
    path = data / "postgresql.auto.conf"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    wanted = {n.lower() for n in names}
    disabled: list[str] = []
    out = []
    for line in lines:
        m = _CONF_LINE.match(line) if line.strip() and not line.lstrip().startswith("#") else None
        if m and m.group(1).lower() in wanted:
            disabled.append(m.group(1).lower())
            out.append(f"# disabled by seedvault restore (set in postgresql.conf instead): {line}")
        else:
            out.append(line)
    if disabled:
        path.write_text("\n".join(out) + "\n")
    return disabled


def _push_history(repo: Repository, plan: Plan, data: Path, tli: int) -> None:
    if tli <= 1:
        return
    hist = data / "pg_wal" / f"{tli:08X}.history"
    if hist.exists():
        WalStore(repo, plan.system_id).push(hist, source="restore")


def parse_target(
    *, to_time: str | None, to_lsn: str | None, to_name: str | None, latest: bool, immediate: bool, exclusive: bool
) -> Target:
    given = [x for x in (to_time, to_lsn, to_name) if x] + [x for x in (latest, immediate) if x]
    if len(given) != 1:
        raise UsageError("give exactly one of --to-time, --to-lsn, --to-name, --latest, --immediate")
    if to_time:
        from seedvault.sources.postgres.wal.plan import _parse_time

        try:
            t = _parse_time(to_time)
        except ValueError:
            raise UsageError(f"--to-time {to_time!r} is not an ISO time (e.g. 2026-12-01T02:00:00Z)") from None
        return Target("time", t.isoformat(sep=" "), not exclusive, time=t)
    if to_lsn:
        lsn = wn.parse_lsn(to_lsn)
        return Target("lsn", wn.format_lsn(lsn), not exclusive, lsn=lsn)
    if to_name:
        return Target("name", to_name, not exclusive)
    return Target("latest" if latest else "immediate")
