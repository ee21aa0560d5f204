"""``restore postgres``: storage -> decrypt -> decompress -> pg_restore, verified, never destroying live data.

* Every restore that creates a database (new database, ``--replace``, selective into a new name) works in a
  temporary database ``<db>_sv_<backup stamp>`` created from template0 with the backup's encoding and locale,
  marked as seedvault's by its comment (``seedvault restore {"state": "restoring", ...}``). Only after
  pg_restore and verification succeed is it renamed into place, so a database under the target name is
  always either untouched or fully verified. On any failure the temporary database is dropped again.
* New database (default): refused if the target name exists; the verified temporary one is renamed to it.
* ``--replace``: the swap is ONE transaction on the ``postgres`` database: terminate the live database's
  sessions, ``RENAME live TO <db>_before_<UTC time>``, ``RENAME restored TO live``, COMMIT. PostgreSQL
  allows ALTER DATABASE RENAME inside a transaction block (unlike CREATE/DROP DATABASE), so a crash or
  ``kill -9`` at any moment leaves either both renames or neither: the live name always holds the original
  or the verified new database, never nothing. Sessions connecting during the swap wait on the database lock
  and then see the committed state. ``datallowconn`` is never touched, so nothing is left refusing
  connections. The safety copy stays until ``--drop-previous`` (which first takes and verifies a seedvault
  backup of it) or an operator drops it.
* Interrupted runs: a session advisory lock per target name keeps two restores of one target apart (a killed
  run's lock dies with its connection). The marker is removed only by the transaction that renames the
  database into place, so a database still marked "restoring" was never swapped in and nothing uses it as
  the target: the next run drops such leftovers for its target (and an empty database under the exact
  temporary name, which a kill during CREATE DATABASE leaves before it could be marked) and says so in a
  note. Any other database under the temporary name is refused, never touched. So re-running the same
  restore is the whole recovery from a crash. Derived names (``_sv_``, ``_before_``) are cut to 63 *bytes*
  on a character boundary, exactly as PostgreSQL stores them, so long non-ASCII names are found again.
* Free space: before anything is created, the server's data directory must hold the backup's recorded size
  plus a margin, or the restore is refused (a full data directory PANICs the whole server); when it cannot
  be measured the restore refuses too. ``--skip-space-check`` overrides. See space.py.
* ``--jobs N``: pg_restore -j cannot read a pipe, so the archive is spooled to a local directory (free
  space checked first, a directory that fills anyway is one TargetError naming it, removed afterwards).
  Without it nothing touches local disk but the TOC listing.
* ``--schema`` / ``--table``: a partial restore with each table's indexes, constraints, triggers and
  sequences (see toc.py) into a new (or ``--into-existing`` scratch, restored in place) database.
* TimescaleDB: extension created at the backup's version, ``timescaledb_pre_restore()`` before and
  ``timescaledb_post_restore()`` after pg_restore; a target without that extension version is refused.
* Verification: every restored table's row count against the manifest, and its content checksum where
  the backup recorded one; a mismatch fails the restore naming the tables.

Crash-test points (``seedvault.faults``): pg-restore-db-created, pg-restore-streaming, pg-restore-loaded,
pg-restore-verified, pg-swap-live-moved, pg-swap-renamed, pg-restore-in-place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from seedvault import audit, faults, leases
from seedvault.errors import (
    LockHeld,
    RestoreVerificationFailed,
    SeedvaultError,
    TargetError,
    ToolMissing,
    UsageError,
)
from seedvault.process import ChildWriter
from seedvault.repository import Repository
from seedvault.sources.postgres import toc
from seedvault.sources.postgres.binaries import PgBinaries, find_client_binaries
from seedvault.sources.postgres.connection import PgTarget
from seedvault.sources.postgres.inspect import HYPERTABLES_SQL, check_table, timescale_jobs
from seedvault.sources.postgres.logical import LogicalOptions
from seedvault.sources.postgres.space import FreeSpace, local_free, server_free_space

KIND = "postgres-logical"
MARKER_PREFIX = "seedvault restore "
STREAMING_AFTER_PIECES = 2  # pg-restore-streaming fires once pg_restore has this many pieces and wants more
NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: longer names are cut to this many bytes, on a character boundary
MIB = 1 << 20
SPACE_MARGIN_MIN = 64 * MIB  # data directory: at least this much beyond the database's size (WAL, sorts)
SPOOL_MARGIN_MIN = 64 * MIB


@dataclass
class RestoreOptions:
    replace: bool = False
    drop_previous: bool = False
    jobs: int | None = None
    spool_dir: Path | None = None
    with_globals: bool = False
    schemas: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    into_existing: bool = False
    no_owner: bool = False
    checksums: bool = True  # compare checksums where the backup has them
    skip_space_check: bool = False  # restore even when free space is short or cannot be measured


@dataclass
class RestoreReport:
    backup_id: str
    database: str
    tables_verified: int = 0
    rows_verified: int = 0
    checksums_verified: int = 0
    estimated_skipped: list[str] = field(default_factory=list)  # estimated row counts: not compared
    # Tables nothing verified: an estimated row count (``backup postgres --estimate-above``) and no checksum.
    tables_unverified: list[str] = field(default_factory=list)
    safety_copy: str | None = None
    safety_backup: str | None = None
    space: dict[str, Any] | None = None  # the data directory check: needed, free, where, method
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _major(version: str) -> int:
    m = re.search(r"(\d+)(?:\.\d+)?", version)
    return int(m.group(1)) if m else 0


def _db_exists(admin: psycopg.Connection, name: str) -> bool:
    return admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def _short_stamp(backup_id: str) -> str:
    return backup_id.split("-")[0].lower()


def clip_name(name: str, limit: int = NAME_BYTES) -> str:
    """``name`` cut to at most ``limit`` bytes of UTF-8 on a character boundary, as PostgreSQL cuts names.

    Why bytes: NAMEDATALEN counts bytes, so a name of 63 characters that are not all ASCII is stored shorter
    than Python's ``name[:63]``; a temporary database named that way is then not found again under its name.
    """
    raw = name.encode("utf-8")
    return name if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore")


def _db_name(base: str, suffix: str) -> str:
    """``base`` shortened so that ``base + suffix`` fits a PostgreSQL name (the suffix is kept whole)."""
    return clip_name(base, NAME_BYTES - len(suffix.encode("utf-8"))) + suffix


def _py_encoding(pg_encoding: str) -> str:
    """The Python codec for a PostgreSQL encoding name (the dump's strings are in the database's encoding)."""
    try:
        from psycopg._encodings import pg2pyenc

        return pg2pyenc(pg_encoding.encode())
    except Exception:  # noqa: BLE001 - unknown or unavailable: UTF-8, the only encoding most databases use
        return "utf-8"


class _Restore:
    def __init__(
        self,
        repo: Repository,
        backup_id: str,
        target: PgTarget,
        opts: RestoreOptions,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.repo, self.backup_id, self.target, self.opts, self.progress = repo, backup_id, target, opts, progress
        self.data_key = repo.data_key(backup_id)
        self.body = repo.manifest(backup_id, self.data_key)
        if self.body["kind"] != KIND:
            raise UsageError(f"backup {backup_id} is a {self.body['kind']} backup, not a PostgreSQL logical backup")
        self.source = self.body["source"]
        self.report = RestoreReport(backup_id, target.dbname)
        self.binaries: PgBinaries | None = None
        self.timescale = self.source.get("timescaledb")

    def hypertables(self) -> set[tuple[str, str]]:
        """(schema, table) of every hypertable the backup recorded (older backups: from the TimescaleDB facts)."""
        found = {(h["schema"], h["table"]) for h in (self.timescale or {}).get("hypertables", [])}
        return found | {(t["schema"], t["name"]) for t in self.source.get("tables", []) if t.get("hypertable")}

    # --- checks ---------------------------------------------------------------------------------------------
    def preflight(self, admin: psycopg.Connection) -> None:
        opts = self.opts
        selective = bool(opts.schemas or opts.tables)
        if opts.replace and selective:
            raise UsageError("--replace restores a whole database; restore --schema/--table into a new database")
        if opts.drop_previous and not opts.replace:
            raise UsageError("--drop-previous only makes sense with --replace")
        if opts.jobs is not None and opts.jobs < 1:
            raise UsageError("--jobs must be at least 1")
        size = len(self.target.dbname.encode("utf-8"))
        if size > NAME_BYTES:
            raise UsageError(
                f"database name {self.target.dbname} is {size} bytes long; PostgreSQL names hold at most"
                f" {NAME_BYTES} bytes (and would silently cut it)"
            )
        if opts.spool_dir is not None and not opts.spool_dir.is_dir():
            raise UsageError(f"--spool-dir {opts.spool_dir} is not a directory")
        num = admin.execute("SELECT current_setting('server_version_num')::int").fetchone()[0]
        self.binaries = find_client_binaries(num // 10000, tools=("pg_restore", "psql", "pg_dump", "pg_dumpall"))
        made_with = _major(self.source.get("tools", {}).get("pg_dump", "0"))
        if self.binaries.major < made_with:
            raise ToolMissing(
                f"the backup was made by pg_dump {made_with}; pg_restore {self.binaries.major} cannot read it",
                hint="install a newer PostgreSQL client or set PG_BIN",
            )
        exists = _db_exists(admin, self.target.dbname)
        if exists and not opts.replace and not (selective and opts.into_existing):
            raise TargetError(
                f"database {self.target.dbname} already exists on {self.target.display()}",
                hint="restore into a new name, or use --replace (keeps a safety copy)",
            )
        if opts.replace and not exists:
            raise TargetError(f"--replace: database {self.target.dbname} does not exist to be replaced")
        if self.timescale:
            self._check_timescale_target(admin)

    def _check_timescale_target(self, admin: psycopg.Connection) -> None:
        """TimescaleDB restores only at the dump's extension version, into a server that preloads it: say so now.

        Why before anything is loaded: pg_restore of a TimescaleDB dump at another version fails half-way
        (or, worse, loads a catalog the installed code misreads); the fix is on the server, not in seedvault.
        """
        assert self.timescale is not None
        version = self.timescale["version"]
        available = [
            r[0]
            for r in admin.execute(
                "SELECT version FROM pg_available_extension_versions WHERE name = 'timescaledb' ORDER BY 1"
            ).fetchall()
        ]
        if version not in available:
            has = f"has {', '.join(available[-3:])}" if available else "has no timescaledb installed"
            raise TargetError(
                f"the backup needs the timescaledb extension version {version}; the target server {has}",
                hint=f"install TimescaleDB {version} for PostgreSQL on the target (its .so and scripts; the restored"
                f" database is created at exactly that version), or restore on a server that has it",
            )
        preload = admin.execute("SELECT current_setting('shared_preload_libraries')").fetchone()[0]
        if "timescaledb" not in [p.strip() for p in preload.split(",")]:
            raise TargetError(
                "the target server does not preload timescaledb (shared_preload_libraries), so it cannot load it",
                hint="add timescaledb to shared_preload_libraries on the target and restart it",
            )

    # --- streaming ------------------------------------------------------------------------------------------
    def _pieces(self, name: str):
        return self.repo.read_object(
            self.backup_id, name, body=self.body, data_key=self.data_key, progress=self.progress
        )

    def _feed(self, writer: ChildWriter, name: str, phase: str | None = None) -> str:
        pieces = self._pieces(name)
        try:
            for count, piece in enumerate(pieces, 1):
                if not writer.write(piece):
                    break  # the child has everything it needs (a partial restore)
                if phase and count == STREAMING_AFTER_PIECES:
                    faults.reached(phase)
        except BaseException:
            writer.kill()
            raise
        finally:
            pieces.close()
        return writer.finish()

    def list_toc(self) -> list[toc.TocEntry]:
        """The dump's TOC entries: ``pg_restore --list``, each line's fields read from the archive's own TOC.

        The listing goes to a file (``--file``): on stdout it could be mixed with warnings, and a child's
        output is kept only as a 64 KiB tail for error messages. The same pieces feed pg_restore and
        :func:`toc.read_archive` (see toc.py for why both), in one pass over the head of the dump.
        """
        assert self.binaries is not None
        encoding = _py_encoding(self.source.get("encoding", "UTF8"))
        with tempfile.TemporaryDirectory(prefix="seedvault-toc-") as tmp:
            out = Path(tmp) / "toc.list"
            writer = ChildWriter([self.binaries.tool("pg_restore"), "--list", f"--file={out}"], error=TargetError)
            pieces = self._pieces("dump")
            reading = [True]

            def fed():
                for piece in pieces:
                    if reading[0] and not writer.write(piece):
                        reading[0] = False  # pg_restore --list stops reading after the table of contents
                    yield piece

            stream = fed()
            archive: toc.ArchiveToc | None = None
            why = ""
            try:
                try:
                    archive = toc.read_archive(stream, encoding)
                except toc.ArchiveUnreadable as exc:
                    why = str(exc)
                while reading[0] and next(stream, None) is not None:
                    pass
            except BaseException:
                writer.kill()
                raise
            finally:
                stream.close()
                pieces.close()
            writer.finish()
            listing = out.read_bytes().decode(encoding, "surrogateescape")
        if archive is not None:
            why = toc.archive_mismatch(listing, archive) or ""
        if why and (self.opts.schemas or self.opts.tables):
            self.report.notes.append(f"TOC entries read from pg_restore --list's text ({why})")
        return toc.parse(listing, None if why else archive, self.source.get("tables", []))

    def restore_globals(self) -> None:
        assert self.binaries is not None
        admin = self.target.with_db("postgres")
        writer = ChildWriter(
            [
                self.binaries.tool("psql"),
                "--no-psqlrc",
                "--quiet",
                "--no-password",
                f"--dbname={admin.conninfo()}",
                "--set=ON_ERROR_STOP=0",
                "--file=-",
            ],
            error=TargetError,
            extra_env=admin.child_env(),
        )
        output = self._feed(writer, "globals")
        errors = [ln for ln in output.splitlines() if "ERROR:" in ln and "already exists" not in ln]
        if errors:
            raise TargetError(f"applying globals failed: {errors[0].strip()}")

    def run_pg_restore(self, dbname: str, entries: list[toc.TocEntry] | None) -> None:
        assert self.binaries is not None
        work = self.target.with_db(dbname)
        argv: list[Any] = [
            self.binaries.tool("pg_restore"),
            "--no-password",
            "--exit-on-error",
            f"--dbname={work.conninfo()}",
        ]
        if self.opts.no_owner:
            argv += ["--no-owner", "--no-privileges"]
        spool: Path | None = None
        try:
            if entries is not None or self.opts.jobs:
                spool = Path(tempfile.mkdtemp(prefix=f"seedvault-restore-{self.backup_id}-", dir=self.opts.spool_dir))
            if entries is not None:
                assert spool is not None
                list_file = spool / "restore.list"
                list_file.write_text(toc.render(entries), encoding="ascii")
                argv.append(f"--use-list={list_file}")
            if self.opts.jobs:
                assert spool is not None
                archive = self._spool(spool)
                for pass_argv in self._parallel_passes(argv, entries, spool):
                    writer = ChildWriter([*pass_argv, archive], error=TargetError, extra_env=work.child_env())
                    writer.finish()
            else:
                writer = ChildWriter(argv, error=TargetError, extra_env=work.child_env())
                self._feed(writer, "dump", phase="pg-restore-streaming")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._spool_full(exc) from None
            raise
        finally:
            if spool is not None:
                shutil.rmtree(spool, ignore_errors=True)

    def _spool_dir(self) -> Path:
        return self.opts.spool_dir or Path(tempfile.gettempdir())

    def _spool_full(self, exc: OSError, written: int | None = None) -> TargetError:
        """The one-line error for a spool directory that filled up (ENOSPC, EDQUOT) while seedvault wrote to it."""
        raw = self._dump_entry()["raw_size"]
        how_far = f" after {written // MIB} MiB of the {raw // MIB} MiB archive" if written is not None else ""
        return TargetError(
            f"the spool directory {self._spool_dir()} filled up{how_far} ({exc.strerror}); nothing was restored",
            hint="free space there, use --spool-dir on a larger disk, or restore without --jobs (streams, no spool)",
        )

    def _dump_entry(self) -> dict[str, Any]:
        return next(o for o in self.body["objects"] if o["name"] == "dump")

    def _parallel_passes(self, argv: list[Any], entries: list[toc.TocEntry] | None, spool: Path) -> list[list[Any]]:
        """The pg_restore runs of a ``--jobs`` restore (each gets the spooled archive appended).

        Why several for TimescaleDB: parallel workers load ``_timescaledb_catalog``/``_timescaledb_config``
        tables in any order, and their foreign keys (e.g. dimension -> hypertable) then fail. So: the schema
        (pre-data, serial anyway), then those tables' data serially in dump order, then the rest of the data
        and post-data with ``--jobs``, all between ``timescaledb_pre_restore()`` and ``_post_restore()``.
        """
        jobs = f"--jobs={self.opts.jobs}"
        if not self.timescale or entries is None:
            return [[*argv, jobs]]
        argv = [a for a in argv if not str(a).startswith("--use-list=")]
        catalog = [
            e for e in entries if e.desc == "TABLE DATA" and e.schema in ("_timescaledb_catalog", "_timescaledb_config")
        ]
        rest = [e for e in entries if e not in catalog]
        lists = {"all": entries, "catalog": catalog, "rest": rest}
        for name, chosen in lists.items():
            (spool / f"{name}.list").write_text(toc.render(chosen), encoding="ascii")
        passes = [[*argv, "--section=pre-data", f"--use-list={spool / 'all.list'}"]]
        if catalog:
            passes.append([*argv, "--section=data", f"--use-list={spool / 'catalog.list'}"])
        passes.append([*argv, "--section=data", "--section=post-data", jobs, f"--use-list={spool / 'rest.list'}"])
        return passes

    def check_spool_space(self) -> None:
        """``--jobs`` spools the whole archive: refuse before anything is created when it cannot fit."""
        if not self.opts.jobs or self.opts.skip_space_check:
            return
        directory = self._spool_dir()
        free = local_free(directory)
        needed = int(self._dump_entry()["raw_size"] * 1.05) + SPOOL_MARGIN_MIN
        if free < needed:
            raise TargetError(
                f"not enough free space to spool the archive for --jobs: it needs about {needed // MIB} MiB in"
                f" {directory} (the archive is {self._dump_entry()['raw_size'] // MIB} MiB), {free // MIB} MiB"
                " are free; nothing was restored",
                hint="use --spool-dir on a larger disk, restore without --jobs (streams, no spool), or pass"
                " --skip-space-check to try anyway",
            )

    def _spool(self, spool: Path) -> Path:
        archive = spool / "dump.pgcustom"
        written = 0
        pieces = self._pieces("dump")
        try:
            with open(archive, "wb") as fh:
                for count, piece in enumerate(pieces, 1):
                    fh.write(piece)
                    written += len(piece)
                    if count == STREAMING_AFTER_PIECES:
                        faults.reached("pg-restore-streaming")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._spool_full(exc, written) from None
            raise
        finally:
            pieces.close()
        return archive

    def check_server_space(self, admin: psycopg.Connection, tables: set[tuple[str, str]] | None) -> None:
        """Refuse a restore whose copy would not fit in the server's data directory (see space.py for why).

        Needed: the database's size at backup (``pg_database_size``; for ``--table``/``--schema`` the selected
        tables' recorded sizes), plus room for WAL, sorts and catalogs: the largest of 20 %, that size up to
        max_wal_size, and 64 MiB.
        """
        if self.opts.skip_space_check:
            self.report.notes.append("free space on the server not checked (--skip-space-check)")
            return
        size, what = self._copy_size(tables)
        max_wal = admin.execute("SELECT pg_size_bytes(current_setting('max_wal_size'))").fetchone()[0]
        # The WAL a restore writes is about the data it loads; checkpoints recycle it once it reaches max_wal_size.
        margin = max(size // 5, min(int(max_wal), size), SPACE_MARGIN_MIN)
        needed = size + margin
        space: FreeSpace = server_free_space(admin)
        self.report.space = {"needed": needed, **space.as_dict()}
        where = self.target.display()
        if space.free is None:
            raise TargetError(
                f"cannot tell how much space is free in the data directory of {where} ({space.reason}); the"
                f" restore needs about {needed // MIB} MiB there",
                hint="check with df on the server (a full data directory stops PostgreSQL), then run again with"
                " --skip-space-check",
            )
        if space.free < needed:
            raise TargetError(
                f"not enough free space for the restore on {where}: it needs about {needed // MIB} MiB in"
                f" {space.where} ({what} {size // MIB} MiB at backup, plus {margin // MIB} MiB for WAL and index"
                f" builds), {space.free // MIB} MiB are free; nothing was restored",
                hint="make room or restore onto another server; --skip-space-check restores anyway (if the disk"
                " fills, PostgreSQL stops)",
            )

    def _copy_size(self, tables: set[tuple[str, str]] | None) -> tuple[int, str]:
        """Bytes the restored copy will take, as recorded at backup, and what they are."""
        src = self.source
        if tables is not None:
            sizes = [t.get("bytes") for t in src.get("tables", []) if (t["schema"], t["name"]) in tables]
            if sizes and all(isinstance(b, int) for b in sizes):
                return sum(sizes), f"the {len(sizes)} table{'s' if len(sizes) > 1 else ''} took"
        if isinstance(src.get("database_size"), int):
            return src["database_size"], "the database took"
        return int(self._dump_entry()["raw_size"]) * 2, "twice the archive is"

    # --- database lifecycle ------------------------------------------------------------------------------------
    def create_database(self, admin: psycopg.Connection, name: str) -> None:
        src = self.source
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Identifier(name),
            sql.Literal(src.get("encoding", "UTF8")),
            sql.Literal(src.get("collate", "C")),
            sql.Literal(src.get("ctype", "C")),
        )
        try:
            admin.execute(statement)
        except psycopg.Error as exc:
            raise TargetError(f"cannot create database {name} on {self.target.display()}: {_first_line(exc)}") from None

    def timescale_hook(self, dbname: str, phase: str) -> None:
        if not self.timescale:
            return
        with self.target.connect(dbname=dbname) as conn:
            if phase == "pre":
                conn.execute(
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS timescaledb VERSION {}").format(
                        sql.Literal(self.timescale["version"])
                    )
                )
                conn.execute("SELECT timescaledb_pre_restore()")
            else:
                conn.execute("SELECT timescaledb_post_restore()")

    def verify(self, dbname: str, tables: set[tuple[str, str]] | None) -> None:
        mismatches: list[str] = []
        with self.target.connect(dbname=dbname) as conn, conn.cursor() as cur:
            for t in self.source.get("tables", []):
                if tables is not None and (t["schema"], t["name"]) not in tables:
                    continue
                key = toc.qualified((t["schema"], t["name"]))
                check = check_table(conn, cur, t, checksums=self.opts.checksums)
                if check.problem is not None and check.checksum_ok is None:  # missing, or its count differs
                    mismatches.append(check.problem)
                    continue
                if t.get("estimated"):  # an estimate proves nothing: verified only by a matching checksum
                    self.report.estimated_skipped.append(key)
                    if check.checksum_ok is None:
                        self.report.tables_unverified.append(key)
                        continue
                self.report.tables_verified += 1
                self.report.rows_verified += check.rows or 0
                if check.checksum_ok is False:
                    mismatches.append(check.problem or f"{key} content checksum differs")
                elif check.checksum_ok:
                    self.report.checksums_verified += 1
            if tables is None and self.timescale and "jobs" in self.timescale:
                mismatches += self._timescale_mismatches(cur)
        if mismatches:
            shown = "; ".join(mismatches[:5]) + (f"; and {len(mismatches) - 5} more" if len(mismatches) > 5 else "")
            raise RestoreVerificationFailed(
                f"restored database {dbname} does not match backup {self.backup_id}: {shown}"
            )

    def _timescale_mismatches(self, cur: psycopg.Cursor) -> list[str]:
        """Chunks, compressed chunks and background jobs of a whole-database restore against the backup's."""
        assert self.timescale is not None
        out = []
        cur.execute(HYPERTABLES_SQL)
        now = {f"{s}.{t}": (int(n), int(c)) for s, t, n, c in cur.fetchall()}
        for h in self.timescale["hypertables"]:
            key = f"{h['schema']}.{h['table']}"
            want = (h["chunks"], h.get("compressed_chunks", now.get(key, (0, 0))[1]))
            if now.get(key) != want:
                got = now.get(key)
                out.append(
                    f"hypertable {key} has {'no' if got is None else f'{got[0]} chunks ({got[1]} compressed)'},"
                    f" backup had {want[0]} chunks ({want[1]} compressed)"
                )
        jobs = timescale_jobs(cur)
        if jobs != self.timescale["jobs"]:
            ids = sorted({j["id"] for j in jobs} ^ {j["id"] for j in self.timescale["jobs"]}) or [
                a["id"] for a, b in zip(jobs, self.timescale["jobs"], strict=False) if a != b
            ]
            out.append(f"TimescaleDB jobs differ from the backup's (job {', '.join(map(str, ids[:5]))})")
        return out


def restore_postgres(
    repo: Repository,
    backup_id: str,
    target: PgTarget,
    opts: RestoreOptions | None = None,
    *,
    progress: Callable[[int], None] | None = None,
    settings: Any = None,
    purpose: str = "restore",
) -> RestoreReport:
    """Restore one logical backup (see the module docstring for the guarantees around crashes).

    Holds a lease naming the backup for the whole restore: nothing deletes it meanwhile (Barman #200).
    Audited as ``restore``, or ``restore-test`` with ``purpose="drill"`` (a DR drill into a scratch database:
    what "last restore-tested" is made of).
    """
    operation = audit.restore_operation(purpose)
    with leases.shared(repo, "restore postgres", [backup_id]), audit.audited(repo, operation, [backup_id]) as ev:
        ev.details.update(kind="postgres-logical", database=target.dbname)
        report = _restore_postgres(repo, backup_id, target, opts, progress=progress, settings=settings)
        ev.details.update(tables_verified=report.tables_verified, rows_verified=report.rows_verified,
                          checksums_verified=report.checksums_verified,
                          tables_unverified=len(report.tables_unverified))  # fmt: skip
        return report


def _restore_postgres(
    repo: Repository,
    backup_id: str,
    target: PgTarget,
    opts: RestoreOptions | None,
    *,
    progress: Callable[[int], None] | None,
    settings: Any,
) -> RestoreReport:
    opts = opts or RestoreOptions()
    started = time.perf_counter()
    job = _Restore(repo, backup_id, target, opts, progress)
    report = job.report
    final = target.dbname
    selective = bool(opts.schemas or opts.tables)
    with target.connect(dbname="postgres") as admin:
        _lock_target(admin, target)
        job.preflight(admin)
        entries, restored_tables = _plan(job)
        in_place = selective and opts.into_existing and _db_exists(admin, final)
        work = final if in_place else work_name(final, backup_id)
        if not in_place:
            report.notes += _clear_leftovers(admin, target, work)
        # After the leftovers are dropped (their space is free again), before anything is created.
        job.check_spool_space()
        job.check_server_space(admin, restored_tables)
        if opts.with_globals:
            job.restore_globals()
        if in_place:
            _load(job, final, entries, restored_tables)
        else:
            _load_and_place(job, admin, work, entries, restored_tables)
    if opts.replace and opts.drop_previous and report.safety_copy:
        report.safety_backup = _drop_safety_copy(repo, target, report.safety_copy, settings)
    report.seconds["total"] = time.perf_counter() - started
    return report


def _load(job: _Restore, dbname: str, entries: list[toc.TocEntry] | None, tables: set[tuple[str, str]] | None) -> None:
    """pg_restore (inside the TimescaleDB hooks) into ``dbname``, then verify it against the manifest."""
    t0 = time.perf_counter()
    job.timescale_hook(dbname, "pre")
    job.run_pg_restore(dbname, entries)
    job.timescale_hook(dbname, "post")
    job.report.seconds["pg_restore"] = time.perf_counter() - t0
    faults.reached("pg-restore-loaded")
    t0 = time.perf_counter()
    job.verify(dbname, tables)
    job.report.seconds["verify"] = time.perf_counter() - t0


def _load_and_place(
    job: _Restore,
    admin: psycopg.Connection,
    work: str,
    entries: list[toc.TocEntry] | None,
    tables: set[tuple[str, str]] | None,
) -> None:
    """Restore into a marked temporary database, then rename (or swap) it into place; dropped on any failure."""
    final = job.target.dbname
    job.create_database(admin, work)
    try:
        _mark(admin, work, "restoring", job.backup_id, final)
        faults.reached("pg-restore-db-created")
        _load(job, work, entries, tables)
        faults.reached("pg-restore-verified")
        if job.opts.replace:
            job.report.safety_copy = _swap(admin, final, work, _safety_name(admin, final))
        else:
            _move_into_place(admin, work, final)
    except BaseException:
        with contextlib.suppress(psycopg.Error):
            _drop(admin, work)
        raise
    faults.reached("pg-restore-in-place")
    if job.timescale:
        _start_timescale_jobs(job.target, final)


def _plan(job: _Restore) -> tuple[list[toc.TocEntry] | None, set[tuple[str, str]] | None]:
    """The TOC entries to give pg_restore -L (None: everything) and the tables a selective restore brings back."""
    opts = job.opts
    selective = bool(opts.schemas or opts.tables)
    if not (selective or job.timescale):
        return None, None
    entries = job.list_toc()
    chosen, notes = toc.select(
        entries,
        job.source.get("tables", []),
        schemas=opts.schemas,
        tables=opts.tables,
        skip_extensions=("timescaledb",) if job.timescale else (),
    )
    job.report.notes += notes
    if not selective:
        return chosen, None
    restored_tables = {(e.schema, e.tag) for e in chosen if e.desc == "TABLE" and e.schema is not None}
    if not restored_tables:
        missing = [n for n in notes if n.endswith("is not in the backup")]
        raise UsageError(
            "nothing to restore: no table of the backup matches --schema/--table"
            + (f" ({'; '.join(missing)})" if missing else "")
        )
    hypertables = [toc.qualified(k) for k in sorted(restored_tables & job.hypertables())]
    if hypertables:
        # Its rows live in chunks that only TimescaleDB's catalog ties to it; a selective restore has neither.
        raise UsageError(
            f"{', '.join(hypertables)} {'is a TimescaleDB hypertable' if len(hypertables) == 1 else 'are hypertables'}"
            " and cannot be restored with --table/--schema (its chunks and catalog entries come only with the"
            " whole database)",
            hint="restore the whole backup into a new database and copy the rows you need from it",
        )
    return chosen, restored_tables


def work_name(final: str, backup_id: str) -> str:
    """The temporary database a restore of ``backup_id`` into ``final`` works in (at most 63 bytes)."""
    return _db_name(final, f"_sv_{_short_stamp(backup_id)}")


def _legacy_work_name(final: str, backup_id: str) -> str:
    """The name older seedvault versions ended up with for a long non-ASCII target: cut by PostgreSQL."""
    return clip_name(final[: NAME_BYTES - len(f"_sv_{_short_stamp(backup_id)}")] + f"_sv_{_short_stamp(backup_id)}")


# --- interrupted runs --------------------------------------------------------------------------------------
def _lock_target(admin: psycopg.Connection, target: PgTarget) -> None:
    """One restore per target name at a time; the session lock dies with a killed run's connection."""
    key = f"seedvault restore {target.dbname}"
    row = admin.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (key,)).fetchone()
    if not row or not row[0]:
        raise LockHeld(f"another seedvault restore into {target.dbname} is running on {target.display()}")


def _mark(admin: psycopg.Connection, name: str, state: str, backup_id: str, final: str) -> None:
    """Record in the database's comment that it is seedvault's temporary restore, and how far it got."""
    marker = MARKER_PREFIX + json.dumps({"state": state, "backup": backup_id, "into": final}, sort_keys=True)
    admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(marker)))


def _marker(comment: str | None) -> dict[str, str] | None:
    if not comment or not comment.startswith(MARKER_PREFIX):
        return None
    try:
        data = json.loads(comment[len(MARKER_PREFIX) :])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _clear_leftovers(admin: psycopg.Connection, target: PgTarget, work: str) -> list[str]:
    """Deal with temporary databases an interrupted restore into this target left; return notes.

    Runs under the target's advisory lock, so no seedvault restore is working in any of them.
    """
    final = target.dbname
    notes: list[str] = []
    rows = admin.execute(
        "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database WHERE datname <> %s", (final,)
    ).fetchall()
    for name, comment in rows:
        marker = _marker(comment)
        if marker is None or marker.get("into") != final or marker.get("state") != "restoring":
            continue
        backup = str(marker.get("backup"))
        if name not in (work_name(final, backup), _legacy_work_name(final, backup)):
            continue  # renamed by someone: no longer seedvault's to drop
        _drop(admin, name)
        notes.append(f"dropped {name}, an unverified restore left by an interrupted run")
    if _db_exists(admin, work):
        if not _is_empty_database(target, work):
            raise TargetError(
                f"database {work} exists and is not an unfinished seedvault restore; seedvault will not touch it",
                hint="drop or rename it, then run the restore again",
            )
        _drop(admin, work)  # created by a run killed before it could mark it: empty, nothing to lose
        notes.append(f"dropped {work}, an empty database left by an interrupted run")
    return notes


def _is_empty_database(target: PgTarget, name: str) -> bool:
    """No user-made object at all (every object a user creates gets an OID >= 16384)."""
    with target.connect(dbname=name) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_class WHERE oid >= 16384)"
            " OR EXISTS (SELECT 1 FROM pg_namespace WHERE oid >= 16384)"
            " OR EXISTS (SELECT 1 FROM pg_proc WHERE oid >= 16384)"
            " OR EXISTS (SELECT 1 FROM pg_type WHERE oid >= 16384)"
            " OR EXISTS (SELECT 1 FROM pg_largeobject_metadata)"
            " OR EXISTS (SELECT 1 FROM pg_extension WHERE oid >= 16384)"
        ).fetchone()
    return not row[0]


def _drop(admin: psycopg.Connection, name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- putting the restored database in place ----------------------------------------------------------------
def _move_into_place(admin: psycopg.Connection, work: str, final: str) -> None:
    """Rename the verified temporary database to the target name (and drop the marker), atomically."""
    ident = sql.Identifier
    try:
        with admin.transaction():
            admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(work), ident(final)))
            admin.execute(sql.SQL("COMMENT ON DATABASE {} IS NULL").format(ident(final)))
    except psycopg.Error as exc:
        raise TargetError(f"could not rename the restored database to {final}: {_first_line(exc)}") from None


SWAP_ATTEMPTS = 3


def _safety_name(admin: psycopg.Connection, live: str) -> str:
    """``<db>_before_<UTC second>``, with ``_2``, ``_3``... when replaces follow each other within a second."""
    stamp = time.strftime("%Y%m%dt%H%M%S", time.gmtime())
    for n in range(1, 100):
        name = _db_name(live, f"_before_{stamp}" + (f"_{n}" if n > 1 else ""))
        if not _db_exists(admin, name):
            return name
    raise TargetError(f"no free safety copy name for {live}; drop old {live}_before_* databases first")


def _swap(admin: psycopg.Connection, live: str, restored: str, safety: str) -> str:
    """Rename live -> safety and restored -> live in one transaction: both happen, or neither."""
    comment = admin.execute(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (live,)
    ).fetchone()
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            _swap_once(admin, live, restored, safety, comment[0] if comment else None)
            return safety
        except psycopg.errors.ObjectInUse as exc:
            # A client reconnected between terminating sessions and the rename's lock: terminate again.
            if attempt == SWAP_ATTEMPTS:
                raise TargetError(
                    f"could not swap in the restored database: {_first_line(exc)}; {live} is unchanged",
                    hint=f"stop the clients of {live}, then run the restore again",
                ) from None
        except psycopg.Error as exc:
            raise TargetError(
                f"could not swap in the restored database: {_first_line(exc)}; {live} is unchanged"
            ) from None
    raise AssertionError("unreachable")


def _swap_once(admin: psycopg.Connection, live: str, restored: str, safety: str, comment: str | None) -> None:
    ident = sql.Identifier
    with admin.transaction():
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (live,),
        )
        # Takes the database's lock first: sessions connecting from here on wait for the COMMIT.
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(live), ident(safety)))
        faults.reached("pg-swap-live-moved")
        admin.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(restored), ident(live)))
        admin.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident(live), sql.Literal(comment)))
        faults.reached("pg-swap-renamed")


SCHEDULER_WAIT = 30.0


def _start_timescale_jobs(target: PgTarget, dbname: str) -> None:
    """Start TimescaleDB's job scheduler for the database now under the target name, and see it run.

    Why: ``ALTER DATABASE ... RENAME`` stops the database's scheduler and nothing restarts it before the
    server restarts, so compression, continuous-aggregate refresh and retention would silently stop.
    """
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'TimescaleDB Background Worker Scheduler'"
    )
    try:
        with target.connect(dbname=dbname) as conn:
            conn.autocommit = True
            proc = conn.execute(
                "SELECT coalesce(to_regproc('_timescaledb_functions.start_background_workers'),"
                " to_regproc('_timescaledb_internal.start_background_workers'))::text"
            ).fetchone()[0]
            if proc is None:
                raise TargetError("this TimescaleDB version has no start_background_workers()")
            conn.execute(sql.SQL("SELECT {}()").format(sql.SQL(proc)))
            deadline = time.monotonic() + SCHEDULER_WAIT
            while conn.execute(query).fetchone()[0] == 0:
                if time.monotonic() > deadline:
                    busy, limit = conn.execute(
                        "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'TimescaleDB%'),"
                        " current_setting('timescaledb.max_background_workers')"
                    ).fetchone()
                    raise TargetError(
                        f"no scheduler process appeared within {SCHEDULER_WAIT:.0f} s ({busy} TimescaleDB"
                        f" workers run, timescaledb.max_background_workers = {limit}; every database with the"
                        " extension needs one, and they count against max_worker_processes)"
                    )
                time.sleep(0.2)
    except (psycopg.Error, TargetError) as exc:
        message = exc.message if isinstance(exc, TargetError) else _first_line(exc)
        raise TargetError(
            f"database {dbname} is restored and verified, but TimescaleDB's job scheduler did not start: {message}",
            hint=f"in {dbname}: SELECT _timescaledb_functions.start_background_workers(); or restart the server",
        ) from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _drop_safety_copy(repo: Repository, target: PgTarget, safety: str, settings: Any) -> str:
    """Back up the safety copy through seedvault and verify that backup before dropping it."""
    from seedvault.config import Settings
    from seedvault.ops.postgres_backup import backup_postgres
    from seedvault.ops.verify import verify_backup

    settings = settings or Settings()
    report = backup_postgres(
        repo,
        settings,
        target.with_db(safety),
        LogicalOptions(with_globals=False),
        label=f"{target.dbname}-before-restore",
    )
    check = verify_backup(repo, report.body["id"])
    if not check.ok:
        raise SeedvaultError(f"safety backup of {safety} failed verification; {safety} kept: {check.problems[0]}")
    with target.connect(dbname="postgres") as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(safety)))
    return report.body["id"]
