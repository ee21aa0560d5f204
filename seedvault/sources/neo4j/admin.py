"""neo4j-admin where Neo4j runs: the exact documented command lines, a command prefix, staging files.

Why exact command lines: neo4j-admin changed its syntax completely between 4.4 and 5.x, and a guessed
flag fails at 3 a.m. Each builder below returns precisely the form the Neo4j Operations Manual documents
for that dialect; ``tests/unit/test_neo4j_admin.py`` pins them with a fake neo4j-admin.

Why a prefix: neo4j-admin must run on the host (or in the container or pod) that owns the store files.
The configured prefix (none, ``docker exec CONTAINER``, ``kubectl exec -n NS POD --``, ``ssh HOST``) is
put in front of every command; staging directories live on *that* side and their files travel through
the same prefix (``cat``, ``tar``), so nothing needs a shared filesystem. For ``ssh`` the remote command
is one shell-quoted string (ssh hands it to a shell); the others pass argv through unchanged.

No secret is ever needed on these command lines: dump/load/backup/restore work on store files or use the
cluster's own TLS/auth configuration.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from seedvault import process
from seedvault.errors import ConfigError, SeedvaultError, SourceError, TargetError, ToolMissing
from seedvault.process import ChildReader, ChildWriter, error_line
from seedvault.sources.neo4j.version import DIALECT_44, Neo4jVersion, parse_version

BACKUP_TYPES = ("FULL", "DIFF", "AUTO")


@dataclass
class AdminConfig:
    """How to reach neo4j-admin and the store (all plain settings; no secrets)."""

    prefix: list[str] = field(default_factory=list)
    neo4j_home: str | None = None  # NEO4J_HOME on the Neo4j side: bin/neo4j-admin, conf/
    neo4j_conf: str | None = None  # NEO4J_CONF, when conf lives elsewhere
    staging_dir: str = "/tmp"  # parent of per-run staging directories, on the Neo4j side
    stop_command: list[str] = field(default_factory=list)  # run locally, as given (Community dumps)
    start_command: list[str] = field(default_factory=list)
    timeout: float = 6 * 3600.0

    @classmethod
    def from_strings(
        cls,
        prefix: str | None = None,
        *,
        neo4j_home: str | None = None,
        neo4j_conf: str | None = None,
        staging_dir: str | None = None,
        stop_command: str | None = None,
        start_command: str | None = None,
    ) -> AdminConfig:
        try:
            return cls(
                prefix=shlex.split(prefix or ""),
                neo4j_home=neo4j_home or None,
                neo4j_conf=neo4j_conf or None,
                staging_dir=staging_dir or "/tmp",
                stop_command=shlex.split(stop_command or ""),
                start_command=shlex.split(start_command or ""),
            )
        except ValueError as exc:
            raise ConfigError(f"invalid Neo4j command setting: {exc}") from None

    def describe(self) -> str:
        return shlex.join(self.prefix) if self.prefix else "local"


# --- the documented command lines (without prefix), per dialect ------------------------------------
def dump_args(version: Neo4jVersion, database: str, *, to_dir: str | None) -> list[str]:
    """4.4: ``dump --database=X --to=DIR/X.dump``; 5.x: ``database dump X --to-path=DIR --verbose`` (without it
    5.x prints "Dump failed for databases" and hides why) or ``--to-stdout`` (see :func:`dump_failure_cause`)."""
    if version.dialect == DIALECT_44:
        if to_dir is None:
            raise SourceError("neo4j-admin 4.4 cannot dump to stdout; a staging directory is needed")
        return ["dump", f"--database={database}", f"--to={to_dir}/{database}.dump"]
    if to_dir is None:  # --verbose writes its preamble to stdout: it would corrupt the dump stream
        return ["database", "dump", database, "--to-stdout"]
    return ["database", "dump", database, f"--to-path={to_dir}", "--verbose"]  # 5.x names the cause only so


def load_args(version: Neo4jVersion, database: str, *, from_dir: str | None) -> list[str]:
    """4.4: ``load --from=DIR/X.dump --database=X --force``; 5.x: ``database load X --from-path=DIR
    --overwrite-destination=true`` or ``--from-stdin``."""
    if version.dialect == DIALECT_44:
        if from_dir is None:
            raise TargetError("neo4j-admin 4.4 cannot load from stdin; a staging directory is needed")
        return ["load", f"--from={from_dir}/{database}.dump", f"--database={database}", "--force"]
    source = f"--from-path={from_dir}" if from_dir is not None else "--from-stdin"
    return ["database", "load", database, source, "--overwrite-destination=true", "--verbose"]


def dump_failure_cause(admin: Admin, version: Neo4jVersion, database: str) -> str | None:
    """Why a ``--to-stdout`` dump failed, asked of ``database info`` (a dump to stdout cannot be --verbose).

    The common causes ("the database ... is in use", "does not exist", an unreadable store) make ``info`` fail
    with a message that says so; None when ``info`` succeeds or cannot be asked.
    """
    args = info_args(version, database)
    if args is None:
        return None
    try:
        admin.run_admin(args)
    except SeedvaultError as exc:
        return exc.message.split("): ", 1)[-1]
    return None


_TXN_RE = re.compile(r"^Last committed transaction id:\s*(\d+)\s*$", re.M)


def store_txn(admin: Admin, version: Neo4jVersion, database: str) -> int | None:
    """The last committed transaction id of a *stopped* database's store (5.x ``database info``), or None.

    Why: Community tells no transaction id over Bolt, and its counts can only be read while it serves (and
    accepts writes); the store's own id, read before a dump and after a load, proves the loaded store is the
    dumped one, whatever landed between the counts and the stop.
    """
    args = info_args(version, database)
    if args is None:
        return None
    try:
        out = admin.run_admin(args)
    except SeedvaultError:
        return None
    m = _TXN_RE.search(out)
    return int(m.group(1)) if m else None


def info_args(version: Neo4jVersion, database: str) -> list[str] | None:
    """5.x: ``database info X`` (says "Database does not exist" for a name without a store); 4.4 has none."""
    if version.dialect == DIALECT_44:
        return None
    return ["database", "info", database]


def backup_args(version: Neo4jVersion, database: str, to_dir: str, *, kind: str, source: str | None) -> list[str]:
    """4.4: ``backup --backup-dir=DIR --database=X [--from=H:P]``; 5.x: ``database backup X --to-path=DIR
    --type=FULL|DIFF|AUTO [--from=H:P]``."""
    kind = kind.upper()
    if kind not in BACKUP_TYPES:
        raise ConfigError(f"backup type must be one of {', '.join(BACKUP_TYPES)}")
    if version.dialect == DIALECT_44:
        args = ["backup", f"--backup-dir={to_dir}", f"--database={database}"]
    else:
        args = ["database", "backup", database, f"--to-path={to_dir}", f"--type={kind}"]
    if source:
        args.append(f"--from={source}")
    return args


def restore_args(version: Neo4jVersion, database: str, from_path: str, *, until: str | None = None) -> list[str]:
    """4.4: ``restore --from=DIR/X --database=X --force``; 5.x: ``database restore X --from-path=DIR/FILE
    --overwrite-destination=true [--restore-until=...]``."""
    if version.dialect == DIALECT_44:
        if until:
            raise ConfigError("Neo4j 4.4 cannot restore to a point in time (--restore-until needs 5.x)")
        return ["restore", f"--from={from_path}", f"--database={database}", "--force"]
    args = ["database", "restore", database, f"--from-path={from_path}", "--overwrite-destination=true"]
    if until:
        args.append(f"--restore-until={until}")
    return args


# --- running them -----------------------------------------------------------------------------------
class Admin:
    """Runs neo4j-admin and file commands through the configured prefix."""

    def __init__(self, config: AdminConfig) -> None:
        self.config = config

    def _admin_argv(self, args: Sequence[str]) -> list[str]:
        home = self.config.neo4j_home
        admin = f"{home.rstrip('/')}/bin/neo4j-admin" if home else "neo4j-admin"
        env = []
        if home:
            env.append(f"NEO4J_HOME={home}")
        if self.config.neo4j_conf:
            env.append(f"NEO4J_CONF={self.config.neo4j_conf}")
        return (["env", *env] if env else []) + [admin, *args]

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` as run on the Neo4j side, behind the prefix."""
        prefix = _interactive(self.config.prefix)
        if prefix and os.path.basename(prefix[0]) == "ssh":
            return [*prefix, shlex.join(command)]
        return [*prefix, *command]

    def admin(self, args: Sequence[str]) -> list[str]:
        return self.argv(self._admin_argv(args))

    def run(
        self, command: Sequence[str], *, what: str, error: type[Exception] = SourceError, timeout: float | None = None
    ):
        argv = self.argv(command)
        try:
            proc = process.run(
                argv, capture_output=True, timeout=timeout or self.config.timeout, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError:
            raise ToolMissing(f"cannot run {argv[0]!r} for {what}", hint="check the Neo4j command prefix") from None
        except subprocess.TimeoutExpired:
            raise error(f"{what} did not finish within {timeout or self.config.timeout:.0f} s") from None
        if proc.returncode != 0:
            text = (proc.stderr or b"").decode("utf-8", "replace") + (proc.stdout or b"").decode("utf-8", "replace")
            raise error(f"{what} failed (exit {proc.returncode}): {error_line(text, what)}")
        return proc

    def run_admin(self, args: Sequence[str], *, error: type[Exception] = SourceError) -> str:
        proc = self.run(self._admin_argv(args), what=f"neo4j-admin {' '.join(args[:2])}", error=error)
        return (proc.stdout or b"").decode("utf-8", "replace")

    def version(self) -> Neo4jVersion:
        out = self.run_admin(["--version"])
        return parse_version(out)

    # streams
    def reader(self, command: Sequence[str], *, error: type[Exception] = SourceError) -> ChildReader:
        try:
            return ChildReader(self.argv(command), error=error)
        except FileNotFoundError:
            raise ToolMissing(f"cannot run {self.argv(command)[0]!r}", hint="check the Neo4j command prefix") from None

    def writer(self, command: Sequence[str], *, error: type[Exception] = TargetError) -> ChildWriter:
        try:
            return ChildWriter(self.argv(command), error=error)
        except FileNotFoundError:
            raise ToolMissing(f"cannot run {self.argv(command)[0]!r}", hint="check the Neo4j command prefix") from None

    def admin_reader(self, args: Sequence[str]) -> ChildReader:
        return _named(self.reader(self._admin_argv(args)), "neo4j-admin")

    def admin_writer(self, args: Sequence[str]) -> ChildWriter:
        return _named(self.writer(self._admin_argv(args)), "neo4j-admin")

    # staging files on the Neo4j side
    @contextlib.contextmanager
    def staging(self, purpose: str):
        """A private directory on the Neo4j side, removed afterwards whatever happens."""
        path = f"{self.config.staging_dir.rstrip('/')}/seedvault-{purpose}-{uuid.uuid4().hex[:12]}"
        self.run(["mkdir", "-m", "700", "-p", path], what=f"creating staging directory {path}")
        try:
            yield path
        finally:
            with contextlib.suppress(Exception):
                self.run(["rm", "-rf", "--", path], what=f"removing staging directory {path}", timeout=600)

    def list_dir(self, path: str) -> list[str]:
        out = self.run(["ls", "-1", "--", path], what=f"listing {path}").stdout.decode("utf-8", "replace")
        return [ln for ln in out.splitlines() if ln]

    def read_file(self, path: str) -> ChildReader:
        return _named(self.reader(["cat", "--", path]), f"reading {path}")

    def write_file(self, path: str) -> ChildWriter:
        return _named(self.writer(["sh", "-c", 'umask 077 && cat > "$1"', "seedvault-write", path]), f"writing {path}")

    def tar_out(self, directory: str, members: Iterable[str] = (".",)) -> ChildReader:
        return _named(self.reader(["tar", "-C", directory, "-cf", "-", "--", *members]), f"tar of {directory}")

    def tar_in(self, directory: str) -> ChildWriter:
        return _named(self.writer(["tar", "-C", directory, "-xf", "-"]), f"untar into {directory}")


_INTERACTIVE = {"docker", "podman", "kubectl", "oc"}


def _interactive(prefix: list[str]) -> list[str]:
    """``docker exec``/``kubectl exec`` pass no stdin without ``-i``: loads and restores would read nothing.

    So ``-i`` is added right after ``exec`` when the configured prefix lacks it (never a TTY: ``-t`` would
    mangle binary streams).
    """
    if not prefix or os.path.basename(prefix[0]) not in _INTERACTIVE or "exec" not in prefix:
        return list(prefix)
    if any(a in ("-i", "--interactive", "-it", "-ti", "--stdin") for a in prefix):
        return list(prefix)
    at = prefix.index("exec") + 1
    return [*prefix[:at], "-i", *prefix[at:]]


def _named(child: Any, tool: str) -> Any:
    """Errors name the tool that failed, not the prefix in front of it (``docker failed`` says little)."""
    child.tool = tool
    return child


def run_local(
    command: Sequence[str], *, what: str, timeout: float = 900.0, extra_env: Mapping[str, str] | None = None
) -> float:
    """Run an operator-configured command (stop/start, a drill's scratch setup) locally; returns its seconds."""
    t0 = time.perf_counter()
    try:
        proc = process.run(list(command), extra_env=extra_env, capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)  # fmt: skip
    except FileNotFoundError:
        raise ToolMissing(f"{what}: cannot run {command[0]!r}") from None
    except subprocess.TimeoutExpired:
        raise SourceError(f"{what} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        text = (proc.stderr or b"").decode("utf-8", "replace") + (proc.stdout or b"").decode("utf-8", "replace")
        raise SourceError(f"{what} failed (exit {proc.returncode}): {error_line(text, what)}")
    return time.perf_counter() - t0


def feed(writer: ChildWriter, chunks: Iterable[bytes]) -> str:
    """Stream ``chunks`` into a child's stdin and wait for it; kills it if the source fails."""
    try:
        for chunk in chunks:
            if not writer.write(chunk):
                break
    except BaseException:
        writer.kill()
        raise
    return writer.finish()


def describe(argv: Sequence[Any]) -> str:
    return shlex.join(str(a) for a in argv)
