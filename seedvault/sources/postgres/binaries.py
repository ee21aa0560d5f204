"""Find PostgreSQL client and server binaries that fit a given server.

Search order, for client tools (pg_dump, pg_restore, pg_dumpall, psql) and server tools (initdb, postgres,
pg_ctl) alike:

1. ``PG_BIN`` -- the operator named a bindir, so it wins; if it does not fit, that is an error, never a
   silent fallthrough to something the operator did not choose.
2. ``/usr/lib/postgresql/N/bin`` -- Debian/Ubuntu's versioned layout, the server's own major first (its
   tools are the best match), then newer installed majors, closest first.
3. ``PATH`` -- whatever the machine offers under plain names (often a version-picking wrapper).
4. The ``pgserver`` wheel's bundled binaries -- last, because they are a test/demo convenience of one fixed
   major, not something an operator installed on purpose.

A client candidate fits when every tool exists and its major is >= the server's: pg_dump/pg_restore of a
newer major can read from (and restore into) an older server, an older one refuses a newer server. Server
binaries must match a data directory's major exactly. Majors are read from ``<tool> --version`` (cached per
file). The pgserver wheel lives under the installing user's site-packages (often ``/root``, mode 700), where
the unprivileged user PostgreSQL must run as cannot reach it; its server binaries are therefore copied
once into a world-readable cache under ``/var/tmp`` (see :func:`pgserver_world_readable_copy`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from seedvault import process
from seedvault.errors import ConfigError, SourceError, ToolMissing

log = logging.getLogger(__name__)

SUPPORTED_SERVER_MAJORS: tuple[int, ...] = (13, 14, 15, 16, 17)
CLIENT_TOOLS: tuple[str, ...] = ("pg_dump", "pg_restore", "pg_dumpall", "psql")
SERVER_TOOLS: tuple[str, ...] = ("initdb", "postgres", "pg_ctl")
PG_BIN_ENV = "PG_BIN"
SYSTEM_PG_ROOT = Path("/usr/lib/postgresql")
PGSERVER_CACHE_ROOT = Path("/var/tmp")

ORIGIN_PG_BIN = "PG_BIN"
ORIGIN_SYSTEM = "system"
ORIGIN_PATH = "PATH"
ORIGIN_PGSERVER = "pgserver wheel"

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)([A-Za-z]+\d*)?|^\s*(\d+(?:\.\d+)*)([A-Za-z]+\d*)?\s*$")
_COPY_MARKER = "SEEDVAULT-COPY-COMPLETE"


@dataclass(frozen=True)
class PgBinaries:
    """One directory of PostgreSQL binaries of one major, and where it was found."""

    bindir: Path
    major: int
    origin: str

    def tool(self, name: str) -> Path:
        path = self.bindir / name
        if not _is_executable(path):
            raise ToolMissing(
                f"{name} not found in {self.bindir} (PostgreSQL {self.major}, {self.origin})",
                hint="install the PostgreSQL package that provides it or set PG_BIN",
            )
        return path

    def version(self, name: str) -> str:
        """The full version string of a tool, e.g. ``15.18``."""
        return tool_version(self.tool(name))[0]

    def has_extension(self, name: str) -> bool:
        """Whether extension ``name`` is installed for these server binaries (control file and library).

        Why: a throwaway cluster must preload an extension such as timescaledb whenever it is installed, or
        ``CREATE EXTENSION`` fails on it ("must be preloaded"). The directories are the server's own
        (``pg_config --sharedir/--pkglibdir`` where pg_config is there, else the Debian and relocatable
        layouts), so nothing needs to be running.
        """
        share, lib = _extension_dirs(self.bindir, self.major)
        return (share / "extension" / f"{name}.control").is_file() and (lib / f"{name}.so").is_file()


@lru_cache(maxsize=32)
def _extension_dirs(bindir: Path, major: int) -> tuple[Path, Path]:
    """(sharedir, pkglibdir) of a server's binaries."""
    pg_config = bindir / "pg_config"
    if _is_executable(pg_config):
        try:
            proc = process.run(
                [str(pg_config), "--sharedir", "--pkglibdir"], capture_output=True, text=True, timeout=30, cwd="/"
            )
            lines = proc.stdout.split()
            if proc.returncode == 0 and len(lines) == 2:
                return Path(lines[0]), Path(lines[1])
        except (OSError, subprocess.TimeoutExpired):
            pass
    if bindir == SYSTEM_PG_ROOT / str(major) / "bin":  # Debian/Ubuntu: /usr/share/postgresql/N
        return Path("/usr/share/postgresql") / str(major), bindir.parent / "lib"
    return bindir.parent / "share", bindir.parent / "lib"


# --- version detection ---------------------------------------------------------------------------------
def parse_version(text: str) -> tuple[str, int]:
    """Parse ``pg_dump (PostgreSQL) 15.18 (Debian ...)`` or a bare ``16.4`` into (version, major).

    Majors before 10 have two parts (9.6 -> 9); beta/devel suffixes are kept in the version string.
    """
    for line in text.strip().splitlines() or [""]:
        m = _VERSION_RE.search(line)
        if m:
            number = m.group(1) or m.group(3)
            suffix = m.group(2) or m.group(4) or ""
            return number + suffix, int(number.split(".")[0])
    raise ValueError(f"not a PostgreSQL version string: {text.strip()[:80]!r}")


def tool_version(path: Path) -> tuple[str, int]:
    """(version, major) of ``<path> --version``; cached per file (path, size, mtime)."""
    st = os.stat(path)
    return _tool_version_cached(str(path), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=256)
def _tool_version_cached(path: str, _size: int, _mtime_ns: int) -> tuple[str, int]:
    try:
        proc = process.run([path, "--version"], capture_output=True, text=True, timeout=30, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolMissing(f"cannot run {path} --version: {exc}") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ToolMissing(f"{path} --version failed with exit code {proc.returncode}: {last}")
    try:
        return parse_version(proc.stdout)
    except ValueError as exc:
        raise ToolMissing(f"{path} --version printed no PostgreSQL version: {proc.stdout.strip()[:80]!r}") from exc


def _is_executable(path: Path) -> bool:
    """An executable file; False for anything we may not even look at (a PATH entry of another user, 0700)."""
    try:
        return path.is_file() and os.access(path, os.X_OK)
    except OSError:
        return False


# --- candidates ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Candidate:
    bindir: Path
    origin: str
    missing: tuple[str, ...]
    major: int | None
    problem: str | None  # why the major could not be read

    def where(self) -> str:
        return self.origin if self.origin == ORIGIN_PGSERVER else str(self.bindir)

    def describe(self) -> str:
        if not self.bindir.is_dir():
            return f"no directory {self.where()}"
        if self.missing:
            return f"{self.where()} without {', '.join(self.missing)}"
        if self.major is None:
            return f"unusable {self.where()} ({self.problem})"
        return f"{self.major} ({self.where()})"


def _inspect(bindir: Path, origin: str, tools: Sequence[str], probe: str) -> _Candidate:
    missing = tuple(t for t in tools if not _is_executable(bindir / t))
    if missing:
        return _Candidate(bindir, origin, missing, None, None)
    try:
        major = tool_version(bindir / probe)[1]
    except ToolMissing as exc:
        return _Candidate(bindir, origin, (), None, exc.message)
    return _Candidate(bindir, origin, (), major, None)


def system_majors() -> list[int]:
    """Majors installed under /usr/lib/postgresql/N/bin, ascending."""
    try:
        names = os.listdir(SYSTEM_PG_ROOT)
    except OSError:
        return []
    return sorted(int(n) for n in names if n.isdigit() and (SYSTEM_PG_ROOT / n / "bin").is_dir())


def pgserver_bindir() -> Path | None:
    """The pgserver wheel's bundled bindir (found without importing pgserver), or None."""
    try:
        spec = importlib.util.find_spec("pgserver")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if bindir.is_dir() else None


def _path_dirs(probe: str) -> list[Path]:
    found: list[Path] = []
    real: set[str] = set()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or not os.path.isabs(entry) or os.path.realpath(entry) in real:
            continue  # relative entries are never trusted; /bin and /usr/bin are often one directory
        if _is_executable(Path(entry) / probe):
            found.append(Path(entry))
            real.add(os.path.realpath(entry))
    return found


def _pg_bin() -> Path | None:
    value = os.environ.get(PG_BIN_ENV, "").strip()
    return Path(value) if value else None


def _candidates(majors: Sequence[int], tools: Sequence[str], probe: str) -> list[_Candidate]:
    """Every candidate after PG_BIN, in search order: system majors (in the given order), PATH, pgserver."""
    found = [_inspect(SYSTEM_PG_ROOT / str(n) / "bin", ORIGIN_SYSTEM, tools, probe) for n in majors]
    found += [_inspect(d, ORIGIN_PATH, tools, probe) for d in _path_dirs(probe)]
    wheel = pgserver_bindir()
    if wheel is not None:
        found.append(_inspect(wheel, ORIGIN_PGSERVER, tools, probe))
    return found


def _check_supported(major: int) -> None:
    if major not in SUPPORTED_SERVER_MAJORS:
        lo, hi = SUPPORTED_SERVER_MAJORS[0], SUPPORTED_SERVER_MAJORS[-1]
        raise SourceError(f"postgresql {major} servers are not supported (seedvault supports {lo}-{hi})")


def _found_list(candidates: Sequence[_Candidate]) -> str:
    return ", ".join(c.describe() for c in candidates) or "nothing"


# --- public finders ------------------------------------------------------------------------------------
def find_client_binaries(server_major: int, tools: Sequence[str] = CLIENT_TOOLS) -> PgBinaries:
    """Client tools that can talk to a server of ``server_major``: all present, major >= the server's."""
    _check_supported(server_major)
    tools = tuple(tools)
    probe = tools[0]
    pg_bin = _pg_bin()
    if pg_bin is not None:
        cand = _inspect(pg_bin, ORIGIN_PG_BIN, tools, probe)
        if cand.missing or cand.major is None or cand.major < server_major:
            raise ToolMissing(
                f"PG_BIN={pg_bin} does not fit a PostgreSQL {server_major} server: found {cand.describe()}",
                hint=f"point PG_BIN at the bindir of PostgreSQL {server_major} or newer, or unset it",
            )
        return PgBinaries(pg_bin, cand.major, ORIGIN_PG_BIN)

    installed = system_majors()
    order = [n for n in installed if n == server_major] + [n for n in installed if n > server_major]
    candidates = _candidates(order, tools, probe)
    for cand in candidates:
        if not cand.missing and cand.major is not None and cand.major >= server_major:
            log.debug("postgres client binaries for server %s: %s (%s)", server_major, cand.bindir, cand.origin)
            return PgBinaries(cand.bindir, cand.major, cand.origin)
    # Nothing fits: name what exists, including older system majors that were never candidates.
    older = [_inspect(SYSTEM_PG_ROOT / str(n) / "bin", ORIGIN_SYSTEM, tools, probe) for n in installed]
    older = [c for c in older if c.bindir not in {d.bindir for d in candidates}]
    raise ToolMissing(
        f"no {probe} for a PostgreSQL {server_major} server: found {_found_list(older + candidates)}",
        hint=f"install postgresql-client-{server_major} or set PG_BIN",
    )


def find_server_binaries(major: int | None = None) -> PgBinaries:
    """initdb/postgres/pg_ctl of exactly ``major`` (a data directory needs its own), else the newest found.

    For the pgserver wheel the returned bindir is its world-readable copy, runnable by any user.
    """
    if major is not None:
        _check_supported(major)
    probe = "postgres"
    pg_bin = _pg_bin()
    if pg_bin is not None:
        cand = _inspect(pg_bin, ORIGIN_PG_BIN, SERVER_TOOLS, probe)
        if cand.missing or cand.major is None or (major is not None and cand.major != major):
            need = f"PostgreSQL {major}" if major is not None else "PostgreSQL"
            raise ToolMissing(
                f"PG_BIN={pg_bin} does not hold {need} server binaries: found {cand.describe()}",
                hint="point PG_BIN at the bindir holding initdb, postgres and pg_ctl of that major, or unset it",
            )
        return PgBinaries(pg_bin, cand.major, ORIGIN_PG_BIN)

    installed = system_majors()
    order = [major] if major is not None and major in installed else []
    if major is None:
        order = sorted(installed, reverse=True)
    candidates = _candidates(order, SERVER_TOOLS, probe)
    usable = [c for c in candidates if not c.missing and c.major is not None and (major is None or c.major == major)]
    if not usable:
        others = [_inspect(SYSTEM_PG_ROOT / str(n) / "bin", ORIGIN_SYSTEM, SERVER_TOOLS, probe) for n in installed]
        others = [c for c in others if c.bindir not in {d.bindir for d in candidates}]
        what = f"PostgreSQL {major} server binaries" if major is not None else "PostgreSQL server binaries"
        raise ToolMissing(
            f"no {what} (initdb, postgres, pg_ctl): found {_found_list(others + candidates)}",
            hint=f"install postgresql-{major or SUPPORTED_SERVER_MAJORS[-1]} or set PG_BIN",
        )
    best = max(usable, key=lambda c: c.major or 0)  # max() keeps the first of equals: search order breaks ties
    if best.origin == ORIGIN_PGSERVER:
        copy = pgserver_world_readable_copy(best.bindir)
        return PgBinaries(copy, best.major or 0, ORIGIN_PGSERVER)
    return PgBinaries(best.bindir, best.major or 0, best.origin)


def preferred_server_binaries() -> PgBinaries:
    """Server binaries for a throwaway cluster (demo, tests): PG_BIN; else the newest system PostgreSQL;
    else the pgserver wheel.

    Unlike :func:`find_server_binaries` without a major (the newest of all), an installed system PostgreSQL
    wins over a newer bundled one: it is the one the operator chose, and the one their servers run.
    """
    if _pg_bin() is not None:
        return find_server_binaries()
    for major in sorted(system_majors(), reverse=True):
        try:
            binaries = find_server_binaries(major)
        except ToolMissing:
            continue
        if binaries.origin != ORIGIN_PGSERVER:
            return binaries
    return find_server_binaries()


# --- the pgserver copy ---------------------------------------------------------------------------------
def _pgserver_version() -> str:
    try:
        return importlib.metadata.version("pgserver")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def pgserver_world_readable_copy(wheel_bindir: Path | None = None) -> Path:
    """The bindir of a world-readable copy of the pgserver wheel's PostgreSQL, made once and reused.

    Layout: ``/var/tmp/seedvault-pgserver-<version>/pgserver/pginstall/{bin,lib,share}`` plus
    ``.../pgserver.libs``: the wheel's tools find their bundled libpq through the RUNPATH
    ``$ORIGIN/../../../pgserver.libs``, so the copy keeps the wheel's relative layout. The copy is built in
    a private temporary directory and renamed into place (atomic; a concurrent builder loses the race
    harmlessly). An existing copy is used only if it is owned by us and not writable by anyone else
    (``/var/tmp`` is world-writable: anyone could plant a directory under that name).
    """
    wheel_bindir = wheel_bindir or pgserver_bindir()
    if wheel_bindir is None:
        raise ToolMissing("the pgserver wheel is not installed", hint="pip install pgserver or install PostgreSQL")
    install = wheel_bindir.parent  # .../pgserver/pginstall
    libs = install.parent.parent / "pgserver.libs"
    root = PGSERVER_CACHE_ROOT / f"seedvault-pgserver-{_pgserver_version()}"
    bindir = root / "pgserver" / "pginstall" / "bin"
    if _usable_copy(root):
        return bindir
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=PGSERVER_CACHE_ROOT))
    try:
        dest = tmp / "pgserver" / "pginstall"
        dest.mkdir(parents=True)
        for sub in ("bin", "lib", "share"):
            shutil.copytree(install / sub, dest / sub, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, tmp / "pgserver.libs", symlinks=True)
        (tmp / _COPY_MARKER).write_text(f"copied from {install}\n")
        _make_world_readable(tmp)
        try:
            os.rename(tmp, root)
        except OSError:
            if not _usable_copy(root):  # somebody else's directory, or a broken leftover of ours
                _replace_broken_copy(root, tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("copied the pgserver PostgreSQL binaries to %s", root)
    return bindir


def _usable_copy(root: Path) -> bool:
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(
            f"refusing to use {root}: it is not a directory owned by uid {os.geteuid()} and writable only by it",
            hint=f"remove {root}; seedvault will copy the pgserver binaries again",
        )
    return (root / _COPY_MARKER).is_file()


def _replace_broken_copy(root: Path, fresh: Path) -> None:
    """Our own directory without the completion marker (an interrupted older layout): swap the fresh one in."""
    stale = root.with_name(f".{root.name}.stale-{os.getpid()}")
    os.rename(root, stale)
    try:
        os.rename(fresh, root)
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def _make_world_readable(top: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            os.chmod(path, 0o755 if mode & 0o111 else 0o644)
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755)
