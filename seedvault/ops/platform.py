"""Platform groups: one recovery point for the graph (Neo4j) and the time series (PostgreSQL/TimescaleDB).

``backup platform`` takes the Neo4j backup and, at the graph's consistency moment, marks the same moment in
PostgreSQL's continuous archive: a restore point (``pg_create_restore_point``) followed by a WAL switch. The
time series can then be recovered to exactly that moment by PITR from the archive (``restore platform``).

The consistency moment per Neo4j mode (FORMAT.md section 10.6):

* ``dump`` (offline): the database is stopped from the moment the stop command returned until the start
  command runs; the dump *is* the graph at any moment in between, and the restore point is made in between
  (after the dump, before the start). Skew: 0 by construction, and the group records the interval to show it.
* ``online`` (Enterprise): the backup holds every transaction committed before neo4j-admin finished; the
  restore point is made right after. Skew: the time from the backup's end to the restore point (reported),
  bounded by the backup's own duration (transactions committed while it pulled the last log).
* ``export`` (Community, online): not a point in time while writes go on, so refused for groups unless the
  operator states that writes are stopped (``writes_stopped``), and refused even then when the counts read
  before and after the export differ.

PostgreSQL's side is exact, not just close: the restore point is made inside a REPEATABLE READ transaction
that first takes SHARE locks on every recorded table (waiting out running writers, blocking new ones for the
few milliseconds until it commits) and exports its snapshot; a second connection imports that snapshot. No
commit to those tables can fall between the snapshot and the restore point, so the row counts and checksums
read through the imported snapshot (after the locks are gone, while Neo4j runs again) are exactly what a
recovery to the restore point must give.

The group is committed last, as its own manifest kind (``platform``), only once the Neo4j member is committed,
the restore point's WAL segment is in the archive and a recovery plan to it exists (a base backup and every
segment from its start): a run killed anywhere before leaves no group, and a listed group is always complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from seedvault import audit, faults, leases
from seedvault.config import Settings
from seedvault.errors import (
    BackupNotFound,
    ConfigError,
    DatabaseUnreachable,
    IntegrityError,
    RestoreVerificationFailed,
    SeedvaultError,
    SourceError,
    WalGap,
)
from seedvault.format import layout
from seedvault.ops.neo4j_backup import Neo4jJob, backup_neo4j, utc_now
from seedvault.repository import Repository
from seedvault.sources.postgres.cluster import LocalCluster
from seedvault.sources.postgres.connection import PgTarget
from seedvault.sources.postgres.inspect import InspectOptions, check_table, timescale_storage
from seedvault.sources.postgres.inspect import tables as inspect_tables
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.plan import PHYSICAL, Plan, Target, make_plan
from seedvault.sources.postgres.wal.store import WalStore

log = logging.getLogger(__name__)

KIND = "platform"
TABLES_OBJECT = "postgres-tables.json"
LOCK_TIMEOUT_S = 30  # how long the restore point waits for running writers of the recorded tables
WAL_WAIT_S = 300.0  # how long the group waits for the restore point's segment to be archived

# Tables whose rows a recovery brings back: permanent ones (unlogged tables come back empty, temporary ones
# not at all), outside PostgreSQL's and TimescaleDB's catalogs; chunks are locked through their hypertable.
LOCK_SQL = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND c.relpersistence = 'p'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_timescaledb_catalog', '_timescaledb_config',
                        '_timescaledb_cache', '_timescaledb_internal', '_timescaledb_functions')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
  AND NOT c.relispartition
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


@dataclass
class RestorePoint:
    """A moment in PostgreSQL's WAL, made by :func:`mark_restore_point`."""

    name: str
    lsn: str  # what pg_create_restore_point returned: the end of its record
    time: str  # UTC, read right after the record was written
    timeline: int
    segment: str  # the WAL file holding the record
    system_id: str
    database: str
    server_version_num: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class SnapshotAtPoint:
    """A connection whose REPEATABLE READ snapshot is the recorded tables exactly at the restore point."""

    def __init__(self, conn: psycopg.Connection, tables: list[tuple[str, str]]) -> None:
        self.conn, self.locked = conn, tables

    def inspect(self, checksums: bool) -> list[dict[str, Any]]:
        """Rows (exact) and, with ``checksums``, SHA-256 per table, as a logical backup records them."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT extname, extversion FROM pg_extension")
            extensions = dict(cur.fetchall())
            out = inspect_tables(cur, InspectOptions(checksums=checksums), timescale_storage(cur, extensions))
        locked = set(self.locked)
        keep = ("schema", "name", "rows", "estimated", "hypertable", "partitioned", "partition", "sha256")
        return [
            {k: t[k] for k in keep if k in t} for t in out if (t["schema"], t["name"]) in locked or t.get("partition")
        ]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.rollback()
        with contextlib.suppress(Exception):
            self.conn.close()


def mark_restore_point(
    target: PgTarget, name: str, *, lock_timeout: int = LOCK_TIMEOUT_S
) -> tuple[RestorePoint, SnapshotAtPoint]:
    """Make the restore point (then switch WAL) with the snapshot that matches it; see the module docstring."""
    marker = target.connect(autocommit=True)
    reader: psycopg.Connection | None = None
    try:
        with marker.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery()")
            if cur.fetchone()[0]:  # type: ignore[index]
                raise SourceError(
                    f"PostgreSQL {target.display()} is a standby: restore points are made on the primary",
                    hint="point the platform backup's PostgreSQL DSN at the primary",
                )
            cur.execute(LOCK_SQL)
            tables = [(s, t) for s, t in cur.fetchall()]
            # The transaction's snapshot is taken by its first query, so nothing but SET and LOCK may come
            # before pg_export_snapshot(): a SELECT first would miss the commits the LOCK waits for.
            marker.autocommit = False
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout)}s")))
            if tables:
                names = sql.SQL(", ").join(
                    sql.SQL("{}.{}").format(sql.Identifier(s), sql.Identifier(t)) for s, t in tables
                )
                try:
                    cur.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(names))
                except psycopg.errors.LockNotAvailable:
                    raise SourceError(
                        f"a writer held a table of {target.display()} for more than {lock_timeout} s; no restore point"
                        " was made",
                        hint="retry later, or find the long transaction in pg_stat_activity",
                    ) from None
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]  # type: ignore[index]
            try:
                cur.execute("SELECT pg_create_restore_point(%s)::text", (name,))
            except psycopg.errors.InsufficientPrivilege:
                raise SourceError(
                    f"the PostgreSQL role of {target.display()} may not create restore points",
                    hint="GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO the role, or use a superuser",
                ) from None
            except psycopg.errors.ObjectNotInPrerequisiteState as exc:
                raise SourceError(f"PostgreSQL refused the restore point: {str(exc).splitlines()[0]}") from None
            lsn = cur.fetchone()[0]  # type: ignore[index]
            cur.execute(
                "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
                " pg_walfile_name(%s::pg_lsn), (SELECT system_identifier::text FROM pg_control_system()),"
                " current_database(), current_setting('server_version_num')::int",
                (lsn,),
            )
            when, walfile, sysid, database, version = cur.fetchone()  # type: ignore[misc]
        reader = target.connect(autocommit=False)
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        marker.commit()  # the locks go: writers wait only for these few statements
        marker.autocommit = True
        marker.execute("SELECT pg_switch_wal()")  # the restore point's segment is archived now, not at a timeout
    except psycopg.OperationalError as exc:
        if reader is not None:
            reader.close()
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatabaseUnreachable(
            f"PostgreSQL {target.display()} went away while the restore point was made: {detail}"
        ) from None
    except BaseException:
        if reader is not None:
            reader.close()
        raise
    finally:
        marker.close()
    point = RestorePoint(name, lsn, when, int(walfile[:8], 16), walfile, sysid, database, int(version))
    return point, SnapshotAtPoint(reader, tables)


def manifest_digest(repo: Repository, backup_id: str) -> str:
    """SHA-256 of a backup's sealed manifest object as stored: what a group records of each member."""
    return hashlib.sha256(repo._require_manifest(backup_id)).hexdigest()


def wait_archived(store: WalStore, point: RestorePoint, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if any(o.name == point.segment and o.kind == "segment" for o in store.list(point.timeline)):
            return
        if time.monotonic() > deadline:
            raise WalGap(
                f"WAL segment {point.segment} holding restore point {point.name} was not archived in "
                f"{store.repo.storage.url} within {timeout:.0f} s; the group is not committed",
                hint="check archive_command ('seedvault wal-push %p') and pg_stat_archiver on the server",
            )
        time.sleep(0.5)


def restore_point_target(point: dict[str, Any]) -> Target:
    """Recovery up to and including the restore point's record (its LSN is the record's end), nothing after."""
    lsn = wn.parse_lsn(point["lsn"])
    return Target("lsn", wn.format_lsn(lsn), False, lsn=lsn)


def _skew(mode: str, moment: dict[str, str], point_time: str) -> tuple[float, float, str]:
    """(skew, documented bound, how) in seconds, between the graph's moment and the restore point."""
    rp = _parse(point_time)
    if mode == "dump":
        inside = _parse(moment["from"]) <= rp and (not moment.get("until") or rp <= _parse(moment["until"]))
        if not inside:
            raise SourceError("the restore point was not made while the Neo4j database was stopped")
        return 0.0, 0.0, "restore point made while the database was stopped (the dump is every moment of it)"
    until = _parse(moment["until"])
    skew = max(0.0, (rp - until).total_seconds())
    if mode == "online":
        bound = (rp - _parse(moment["from"])).total_seconds()
        return skew, bound, "restore point made right after the online backup finished"
    return 0.0, 0.0, "export with writes stopped (counts before and after agree)"


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class PlatformBackupReport:
    body: dict[str, Any]
    neo4j: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        src = self.body["source"]
        return {
            "id": self.body["id"],
            "neo4j_backup": src["neo4j"]["backup_id"],
            "neo4j_mode": src["neo4j"]["mode"],
            "base_backup": src["postgres"]["base_backup_id"],
            "restore_point": src["postgres"]["restore_point"],
            "skew_seconds": src["skew"]["ms"] / 1000,
            "skew_bound_seconds": src["skew"]["bound_ms"] / 1000,
            "tables": src["postgres"]["tables"],
            "rows": src["postgres"]["rows"],
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def backup_platform(
    repo: Repository,
    settings: Settings,
    job: Neo4jJob,
    pg: PgTarget,
    *,
    mode: str = "dump",
    backup_type: str = "FULL",
    label: str | None = None,
    writes_stopped: bool = False,
    checksums: bool = True,
    wal_wait: float = WAL_WAIT_S,
    lock_timeout: int = LOCK_TIMEOUT_S,
) -> PlatformBackupReport:
    """Neo4j backup + PostgreSQL restore point at the graph's moment + the group manifest (committed last)."""
    if mode == "export" and not writes_stopped:
        raise ConfigError(
            "a Community export is no point in time while the applications write: it cannot be one side of a"
            " platform group",
            hint="use --mode dump (offline) or online (Enterprise), or stop the writes and pass --writes-stopped",
        )
    t0 = time.perf_counter()
    name = f"seedvault-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
    marked: dict[str, Any] = {}

    def at_consistency(moment: dict[str, str]) -> None:
        t = time.perf_counter()
        point, snap = mark_restore_point(pg, name, lock_timeout=lock_timeout)
        marked.update(point=point, snapshot=snap, moment=moment, seconds=time.perf_counter() - t)
        faults.reached("platform-restore-point")

    snap: SnapshotAtPoint | None = None
    try:
        with pg.connect() as probe:  # unreachable or refusing PostgreSQL: nothing is stopped or written
            probe.execute("SELECT 1")
        report = backup_neo4j(repo, settings, job, mode=mode, backup_type=backup_type,
                              label=label and f"{label}-neo4j", at_consistency=at_consistency)  # fmt: skip
        snap = marked.get("snapshot")
        if snap is None:
            raise SourceError("the Neo4j backup finished without reaching its consistency moment; no group")
        faults.reached("platform-neo4j-committed")
        point: RestorePoint = marked["point"]
        neo4j_body = report.body
        seconds = {"neo4j": report.seconds.get("total", 0.0), "restore_point": marked["seconds"]}
        t = time.perf_counter()
        recorded = snap.inspect(checksums)
        snap.close()
        seconds["postgres_counts"] = time.perf_counter() - t
        t = time.perf_counter()
        wait_archived(WalStore(repo, point.system_id), point, wal_wait)
        faults.reached("platform-wal-archived")
        seconds["wal"] = time.perf_counter() - t
        plan = _plan(repo, point.as_dict())
        skew, bound, how = _skew(mode, marked["moment"], point.time)
        source = {
            "type": KIND,
            "neo4j": {
                "backup_id": neo4j_body["id"],
                "manifest_sha256": manifest_digest(repo, neo4j_body["id"]),
                "database": job.database,
                "mode": neo4j_body["source"]["mode"],
                "moment": marked["moment"],
                "counts": neo4j_body["source"].get("counts"),
            },
            "postgres": {
                "system_id": point.system_id,
                "database": point.database,
                "server": pg.display(),
                "server_version_num": point.server_version_num,
                "base_backup_id": plan.backup_id,
                "base_manifest_sha256": manifest_digest(repo, plan.backup_id),
                "restore_point": point.as_dict(),
                "first_segment": plan.segments[0] if plan.segments else None,
                "segments": len(plan.segments),
                "tables": len(recorded),
                "rows": sum(int(t["rows"]) for t in recorded),
                "checksums": checksums,
            },
            "skew": {"ms": int(round(skew * 1000)), "bound_ms": int(round(bound * 1000)), "how": how},  # no floats
        }
        with repo.begin(kind=KIND, labels={"name": label or "platform"}, source=source,
                        compression=settings.compression, chunk_size=settings.chunk_size) as group:  # fmt: skip
            group.write_object(TABLES_OBJECT, io.BytesIO(json.dumps(recorded, sort_keys=True).encode()))
        seconds["total"] = time.perf_counter() - t0
        assert group.body is not None
        return PlatformBackupReport(group.body, report.summary(), seconds)
    finally:
        if snap is not None:
            snap.close()
        elif marked.get("snapshot") is not None:
            marked["snapshot"].close()


def _plan(repo: Repository, point: dict[str, Any], base_backup_id: str | None = None) -> Plan:
    """The recovery plan to the restore point: a base backup and every WAL segment (a gap names the segment)."""
    try:
        return make_plan(repo, restore_point_target(point), backup_id=base_backup_id, system_id=point["system_id"],
                         timeline=int(point["timeline"]))  # fmt: skip
    except BackupNotFound as exc:
        raise BackupNotFound(
            f"no base backup of PostgreSQL system {point['system_id']} ends before restore point {point['name']}:"
            f" {exc.one_line()}",
            hint="take one with 'seedvault backup postgres-base' (the daily full does), then group again",
        ) from None


# --- reading groups ---------------------------------------------------------------------------------------
@dataclass
class GroupCheck:
    """A group and what restoring it needs, all checked before anything is touched."""

    group_id: str
    body: dict[str, Any]
    plan: Plan
    tables: list[dict[str, Any]]

    @property
    def neo4j_backup(self) -> str:
        return str(self.body["source"]["neo4j"]["backup_id"])

    @property
    def point(self) -> dict[str, Any]:
        return dict(self.body["source"]["postgres"]["restore_point"])


def check_group(repo: Repository, group_id: str) -> GroupCheck:
    """Authenticate the group, its members (by the digests it recorded) and the WAL path to its restore point."""
    body = repo.manifest(group_id)
    if body.get("kind") != KIND:
        raise BackupNotFound(f"backup {group_id} is not a platform group (kind {body.get('kind')})")
    src = body["source"]
    members = [(src["neo4j"]["backup_id"], src["neo4j"]["manifest_sha256"], "Neo4j backup"),
               (src["postgres"]["base_backup_id"], src["postgres"]["base_manifest_sha256"], "base backup")]  # fmt: skip
    for member, digest, what in members:
        try:
            got = manifest_digest(repo, member)
        except BackupNotFound:
            raise BackupNotFound(f"group {group_id} is incomplete: its {what} {member} is gone") from None
        if got != digest:
            raise IntegrityError(f"group {group_id}: the manifest of its {what} {member} is not the one it recorded")
        repo.manifest(member)  # and it authenticates
    plan = _plan(repo, src["postgres"]["restore_point"], src["postgres"]["base_backup_id"])
    tables = json.loads(b"".join(repo.read_object(group_id, TABLES_OBJECT, body=body)))
    return GroupCheck(group_id, body, plan, tables)


def newest_group(repo: Repository, label: str | None = None) -> GroupCheck:
    """The newest group that is complete (members present and matching, WAL continuous); says what it skipped."""
    from seedvault.catalog import Catalog

    groups = [bid for bid, b in Catalog(repo).bodies(lambda b: b.get("kind") == KIND) if not label
              or (b.get("labels") or {}).get("name") == label]  # fmt: skip
    if not groups:
        raise BackupNotFound(f"no platform group in {repo.storage.url}", hint="run 'seedvault backup platform'")
    problems: list[str] = []
    for gid in sorted(groups, reverse=True):
        try:
            check = check_group(repo, gid)
        except SeedvaultError as exc:
            problems.append(f"{gid}: {exc.one_line()}")
            continue
        for p in problems:
            log.warning("seedvault: warning: skipped incomplete group %s", p)
        return check
    raise BackupNotFound(f"no complete platform group: {problems[0]}" + (f" (and {len(problems) - 1} more)"
                                                                         if len(problems) > 1 else ""))  # fmt: skip


# --- restoring ---------------------------------------------------------------------------------------------
@dataclass
class PlatformRestoreReport:
    group_id: str
    postgres: dict[str, Any] = field(default_factory=dict)
    neo4j: dict[str, Any] = field(default_factory=dict)
    moments: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def verify_postgres(conninfo_connect: Any, database: str, recorded: list[dict[str, Any]]) -> dict[str, int]:
    """Rows and checksums of the recovered database against what the group recorded at its restore point."""
    mismatches: list[str] = []
    rows = checksums = 0
    with conninfo_connect(database) as conn, conn.cursor() as cur:
        for t in recorded:
            check = check_table(conn, cur, t, checksums=True, recorded_as="the restore point")
            if check.problem is not None:
                mismatches.append(check.problem)
                continue
            rows += check.rows or 0
            checksums += 1 if check.checksum_ok else 0
    if mismatches:
        shown = "; ".join(mismatches[:5]) + (f"; and {len(mismatches) - 5} more" if len(mismatches) > 5 else "")
        raise RestoreVerificationFailed(f"recovered PostgreSQL does not match the restore point: {shown}")
    if not recorded:
        raise RestoreVerificationFailed(f"the group recorded no table of {database}: nothing could be verified")
    return {"tables": len(recorded), "rows": rows, "checksums": checksums}


def restore_platform(
    repo: Repository,
    settings: Settings,
    job: Neo4jJob | None,
    data_dir: str,
    *,
    group_id: str | None = None,
    label: str | None = None,
    port: int | None = None,
    run_as: str | None = None,
    restore_command: str | None = None,
    archive_mode: str = "preserve",
    safety_copy: bool = True,
    stop_after: bool = False,
    purpose: str = "restore",
    timeout: float = 3600.0,
    password: str | None = None,
) -> PlatformRestoreReport:
    """PostgreSQL recovered to the group's restore point (new data directory), then Neo4j restored; both verified.

    Everything is checked first (group, members, WAL to the restore point): a gap is refused naming the segment
    before anything is touched. PostgreSQL goes first because it touches nothing live (a new directory); if
    Neo4j then fails, its safety copy is back in place (seedvault.ops.neo4j_restore) and the recovered copy is
    stopped and removed, so a failed platform restore leaves both stores as they were. ``job=None`` restores
    PostgreSQL only (the graph by other means), and says so in the report.
    """
    from seedvault.ops.neo4j_restore import restore_neo4j
    from seedvault.ops.postgres_pitr import _empty_target_dir, restore_pitr

    t0 = time.perf_counter()
    check = check_group(repo, group_id) if group_id else newest_group(repo, label)
    _empty_target_dir(Path(data_dir).absolute())
    report = PlatformRestoreReport(check.group_id)
    report.seconds["check"] = round(time.perf_counter() - t0, 3)
    src = check.body["source"]
    point = check.point
    operation = audit.restore_operation(purpose)
    ids = [check.group_id, check.neo4j_backup, check.plan.backup_id]
    with leases.shared(repo, "restore platform", ids), audit.audited(repo, operation, ids) as ev:
        ev.details.update(kind=KIND, restore_point=point["name"], data_dir=str(data_dir))
        faults.reached("platform-restore-checked")
        pitr = restore_pitr(
            repo, restore_point_target(point), data_dir, port=port, run_as=run_as, backup_id=check.plan.backup_id,
            system_id=point["system_id"], timeline=int(point["timeline"]), restore_command=restore_command,
            archive_mode=archive_mode, timeout=timeout, password=password,
        )  # fmt: skip
        report.seconds["postgres_recover"] = round(time.perf_counter() - t0, 3)
        cluster = LocalCluster(Path(pitr.data_dir), port=pitr.port, run_as=run_as)
        cluster.password = password  # the source's superuser password: the recovered copy keeps its users
        try:
            faults.reached("platform-postgres-recovered")

            def connect(dbname: str) -> psycopg.Connection:
                return cluster.connect(dbname=dbname, autocommit=True)

            verified = verify_postgres(connect, src["postgres"]["database"], check.tables)
            report.seconds["postgres_verify"] = round(time.perf_counter() - t0, 3)
            report.postgres = {"data_dir": pitr.data_dir, "port": pitr.port, "lsn": pitr.lsn,
                               "timeline": pitr.timeline, "base_backup_id": check.plan.backup_id,
                               "segments": check.plan.as_dict()["segments"], "verified": verified,
                               "stop_reason": pitr.stop_reason, "running": not stop_after,
                               "seconds": dict(pitr.seconds)}  # fmt: skip
            if job is not None:
                n = restore_neo4j(repo, settings, check.neo4j_backup, job, safety_copy=safety_copy, purpose=purpose)
                faults.reached("platform-neo4j-restored")
                report.neo4j = n.as_dict()
                if src["neo4j"].get("counts") is not None and n.counts is None:
                    raise RestoreVerificationFailed(
                        "the Neo4j backup recorded counts but the restored graph could not be counted (no Bolt"
                        " connection): the graph is not verified",
                        hint="give the Neo4j Bolt URI and password",
                    )
            else:
                report.neo4j = {"skipped": "no Neo4j target given: the graph was not restored"}
            report.seconds["neo4j"] = round(time.perf_counter() - t0, 3)
            if stop_after:
                cluster.stop()
        except BaseException:  # the recovered copy goes too: a failed platform restore leaves nothing half done
            with contextlib.suppress(Exception):
                if cluster.is_running():
                    cluster.stop("immediate", timeout=30)
            shutil.rmtree(pitr.data_dir, ignore_errors=True)
            raise
        report.moments = {
            "postgres": point["time"],
            "postgres_lsn": point["lsn"],
            "neo4j": src["neo4j"]["moment"],
            "skew_seconds": src["skew"]["ms"] / 1000,
            "skew_bound_seconds": src["skew"]["bound_ms"] / 1000,
        }
        ev.details.update(skew_ms=src["skew"]["ms"], neo4j_restored=job is not None)
    report.seconds["total"] = round(time.perf_counter() - t0, 3)
    return report


def is_group(body: dict[str, Any]) -> bool:
    return body.get("kind") == KIND


def members_of(body: dict[str, Any]) -> list[str]:
    """The backups a group holds (retention and delete keep them while the group is kept)."""
    if not is_group(body):
        return []
    src = body.get("source") or {}
    out = [src.get("neo4j", {}).get("backup_id"), src.get("postgres", {}).get("base_backup_id")]
    return [m for m in out if isinstance(m, str) and layout.is_backup_id(m)]


__all__ = ["KIND", "PHYSICAL", "backup_platform", "restore_platform", "check_group", "newest_group", "utc_now"]
