"""``backup neo4j``: an offline dump, an Enterprise online backup (FULL/DIFF chain), or a Bolt export.

Modes:

* ``dump`` (any edition): ``neo4j-admin ... dump`` needs the database stopped. It is stopped with the
  configured stop command (Community: e.g. ``systemctl stop neo4j``) or ``STOP DATABASE`` over Bolt
  (Enterprise), and **always** started again, also when the dump fails; the downtime is measured and
  recorded. 5.x streams the dump through stdout into the engine; 4.4 dumps into a staging directory on
  the Neo4j side whose file is then streamed out (and the directory removed).
* ``online`` (Enterprise): ``neo4j-admin ... backup`` into a staging directory while the database runs.
  ``FULL`` stores the artifacts; ``DIFF`` (5.x) first lays the chain it extends into the staging
  directory, so neo4j-admin writes only the difference, and stores only the new artifact, recording the
  parent; ``AUTO`` is DIFF when a chain exists, else FULL. 4.4 backups are always stored whole.
* ``export`` (Community, online): the logical Bolt export (``seedvault.sources.neo4j.export``).

Counts (nodes per label, relationships per type, indexes, constraints) are read over Bolt before the
dump, so a restore can prove it got the same graph.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from seedvault.config import Settings
from seedvault.errors import BackupNotFound, ConfigError, DatabaseLeftStopped, SeedvaultError, SourceError
from seedvault.format.manifest import without_floats
from seedvault.repository import Repository
from seedvault.sources.neo4j.admin import Admin, backup_args, dump_args, dump_failure_cause, run_local, store_txn
from seedvault.sources.neo4j.version import DIALECT_44, Neo4jVersion

KIND = "neo4j"
NEO4J_ZSTD_LEVEL = 3
MODES = ("dump", "online", "export")
SERVE_TIMEOUT = 300.0  # seconds a started database has to serve again (a large store replays its logs)


class Graph(Protocol):
    """What the Neo4j operations need over Bolt (seedvault.sources.neo4j.bolt.BoltGraph)."""

    def counts(self) -> dict[str, Any]: ...
    def serves(self) -> bool: ...
    def stop_database(self) -> None: ...
    def start_database(self) -> None: ...
    def database_exists(self) -> bool: ...
    def create_database(self) -> None: ...


@dataclass
class Neo4jJob:
    """One Neo4j database and how to reach it (no secrets: the Bolt password lives in ``graph``)."""

    database: str
    admin: Admin
    graph: Graph | None = None
    edition: str | None = None  # community | enterprise (default: from neo4j-admin --version)
    backup_from: str | None = None  # --from=HOST:PORT for online backups

    def server(self) -> str:
        """Which server this is, for chains: the backup address, else where neo4j-admin runs."""
        return self.backup_from or self.admin.config.describe()

    def check_stoppable(self) -> None:
        """Refuse before touching anything when the database could not be stopped and started again."""
        if self.admin.config.stop_command and self.admin.config.start_command:
            return
        if self.admin.config.stop_command or self.admin.config.start_command:
            raise ConfigError("configure both the stop and the start command, or neither")
        if not (self.graph is not None and self.edition == "enterprise"):
            raise ConfigError(
                f"an offline dump of {self.database} needs the database stopped, and there is no way to stop it",
                hint="configure stop/start commands (Community), or give the Bolt connection (Enterprise)",
            )

    def stop(self) -> float:
        t0 = time.perf_counter()
        self.check_stoppable()
        if self.admin.config.stop_command:
            run_local(self.admin.config.stop_command, what=f"stopping Neo4j database {self.database}")
        else:
            assert self.graph is not None
            self.graph.stop_database()
        return time.perf_counter() - t0

    def start(self) -> bool:
        """Start the database and wait until it serves again; True when that was seen over Bolt.

        Why the wait: a start command may return before the server answers (``neo4j start`` does), and
        everything after it (counts, the next restore step, the downtime recorded) is about a serving database.
        Without a Bolt connection there is nothing to ask: False, and the caller says so.
        """
        if self.admin.config.start_command:
            run_local(self.admin.config.start_command, what=f"starting Neo4j database {self.database}")
        elif self.graph is not None and self.edition == "enterprise":
            self.graph.start_database()
        else:
            raise ConfigError(f"no way to start Neo4j database {self.database} again")
        return self.wait_serving()

    def wait_serving(self, timeout: float = SERVE_TIMEOUT) -> bool:
        if self.graph is None:
            return False
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                if self.graph.serves():
                    return True
                last = "not online yet"
            except SeedvaultError as exc:
                last = exc.one_line()
            if time.monotonic() > deadline:
                raise SourceError(
                    f"Neo4j database {self.database} did not serve again within {timeout:.0f} s of being"
                    f" started: {last}",
                    hint="look at the Neo4j server log; the database may still be starting or may have failed",
                )
            time.sleep(0.5)


@dataclass
class Neo4jBackupReport:
    body: dict[str, Any]
    downtime: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        src = self.body["source"]
        return {
            "id": self.body["id"],
            "database": src["database"],
            "mode": src["mode"],
            "backup_type": src.get("backup_type"),
            "parent": self.body.get("parent"),
            "version": src["version"],
            "raw_size": self.body["raw_size"],
            "stored_size": self.body["stored_size"],
            "downtime_seconds": src["downtime_ms"] / 1000 if src.get("downtime_ms") is not None else None,
            "counts": src.get("counts"),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def _counts(job: Neo4jJob) -> dict[str, Any] | None:
    return job.graph.counts() if job.graph is not None else None


def chain_of(
    repo: Repository, database: str, *, upto: str | None = None, where: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """The newest online-backup chain of ``database`` (FULL first), ending at ``upto`` if given.

    ``where`` (the server: backup address or command prefix) keeps two servers' ``neo4j`` databases in one
    repository from being taken for one chain.
    """
    from seedvault.catalog import Catalog

    catalog = Catalog(repo)

    def online(b: dict) -> bool:
        src = b["source"]
        return (
            b.get("kind") == KIND
            and src.get("mode") == "online"
            and src["database"] == database
            and (where is None or src.get("server") == where)
        )

    ids = [bid for bid, _ in catalog.bodies(online)]
    if not ids:
        return []
    last = upto or max(ids)
    if last not in ids:
        raise BackupNotFound(f"backup {last} is not an online Neo4j backup of {database}")
    chain = catalog.chain(last)
    if not all(online(b) for _, b in chain):
        broken = next(bid for bid, b in chain if not online(b))
        raise BackupNotFound(f"backup {broken} in the chain of {last} is not an online backup of {database}")
    return chain


def backup_neo4j(
    repo: Repository,
    settings: Settings,
    job: Neo4jJob,
    *,
    mode: str = "dump",
    backup_type: str = "FULL",
    label: str | None = None,
    staging: bool = False,
    stopped: bool = False,
    stopped_counts: dict[str, Any] | None = None,
    at_consistency: Callable[[dict[str, str]], None] | None = None,
) -> Neo4jBackupReport:
    """Take one Neo4j backup; returns the committed manifest and timings.

    ``stopped``: the database is already stopped by the caller, who starts it again (a restore's safety copy:
    one stop for the copy and the load, not a restart in between); ``stopped_counts`` are its counts, taken
    by the caller before it stopped it.

    ``at_consistency`` (a platform group, seedvault.ops.platform) is called once, before the backup commits, at
    the moment the graph in the backup is the graph of the database: while a dump's database is still stopped
    (after the dump, before the start), right after an online backup or an export finished. It gets the
    interval in which the backed-up graph was the database's (``from``/``until``, UTC ISO times; a dump's
    ``until`` is empty during the call and set when the start command runs); when it raises, nothing commits.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}")
    t0 = time.perf_counter()
    version = job.admin.version() if mode != "export" else None
    if version is not None and job.edition is None:
        job.edition = version.edition
    if job.edition is None and job.graph is not None and hasattr(job.graph, "components"):
        job.edition = job.graph.components()[1]  # CALL dbms.components(): neo4j-admin may not say
    seconds: dict[str, float] = {"version": time.perf_counter() - t0}
    source: dict[str, Any] = {
        "type": "neo4j",
        "database": job.database,
        "mode": mode,
        "version": version.text if version else None,
        "dialect": version.dialect if version else None,
        "edition": job.edition,
        "where": job.admin.config.describe(),
        "server": job.server(),
    }
    t1 = time.perf_counter()
    counts = stopped_counts if stopped else _counts(job)
    seconds["counts"] = time.perf_counter() - t1
    source["counts"] = counts
    parent = None
    chain: list[tuple[str, dict[str, Any]]] = []
    if mode == "online":
        if job.edition == "community":
            raise SourceError("online backups need Neo4j Enterprise; use --mode dump (offline) or --mode export")
        backup_type = backup_type.upper()
        assert version is not None
        if version.dialect == DIALECT_44:
            backup_type = "FULL"  # stored whole: 4.4's incremental rewrites the backup directory in place
        chain = chain_of(repo, job.database, where=job.server()) if backup_type in ("DIFF", "AUTO") else []
        if backup_type == "DIFF" and not chain:
            raise BackupNotFound(f"no online backup of {job.database} to take a DIFF from (take a FULL first)")
        backup_type = "DIFF" if chain and backup_type in ("DIFF", "AUTO") else "FULL"
        parent = chain[-1][0] if chain and backup_type == "DIFF" else None
        source["backup_type"] = backup_type
    with repo.begin(
        kind=KIND,
        labels={"name": label or f"neo4j-{job.database}", "database": job.database},
        source=source,
        parent=parent,
        compression=settings.compression,
        level=settings.zstd_level_for(NEO4J_ZSTD_LEVEL),
        threads=settings.zstd_threads,
        chunk_size=settings.chunk_size,
    ) as backup:
        t2 = time.perf_counter()
        downtime = None
        if mode == "dump":
            assert version is not None
            facts: dict[str, Any] = {}
            downtime, serving = _offline_dump(backup, job, version, staging=staging, stopped=stopped,
                                              at_consistency=at_consistency, facts=facts)  # fmt: skip
            source["store_txn"] = facts.get("store_txn")  # the dumped store's last transaction (5.x), or null
            if counts is not None and not stopped:  # read over Bolt while it still accepted writes
                source["counts_when"] = "before-stop"
            if not stopped:
                source["downtime_ms"] = int(round(downtime * 1000))  # manifests hold no floats
                # until it served again (seen over Bolt), or only until the start command returned
                source["downtime_until"] = "serving" if serving else "start-command-returned"
        elif mode == "online":
            assert version is not None
            began = utc_now()
            source["artifacts"] = _online_backup(repo, backup, job, version, backup_type, chain)
            source["chain"] = [bid for bid, _ in chain] + [backup.backup_id] if parent else [backup.backup_id]
            if at_consistency is not None:  # the backup holds the transactions committed before it finished
                at_consistency({"from": began, "until": utc_now()})
        else:
            from seedvault.sources.neo4j.export import GraphExporter

            if job.graph is None:
                raise ConfigError("an export needs the Bolt connection (URI, user, password)")
            exporter = GraphExporter(job.graph)  # type: ignore[arg-type]
            began = utc_now()
            backup.write_object("graph.jsonl", exporter.reader())  # type: ignore[arg-type]
            source["export"] = without_floats(exporter.summary or {})  # Community has no snapshot: what changed
            end_counts = job.graph.counts()
            if counts is not None and end_counts != counts:
                source["counts_at_end"] = end_counts
            if at_consistency is not None:
                if "counts_at_end" in source:
                    raise SourceError(
                        f"Neo4j database {job.database} changed while it was exported, so the export is no point"
                        " in time and cannot be one side of a platform group",
                        hint="stop the applications' writes for the export, or use --mode dump or online",
                    )
                at_consistency({"from": began, "until": utc_now()})
        seconds[mode] = time.perf_counter() - t2
        backup.source = source
    seconds["total"] = time.perf_counter() - t0
    return Neo4jBackupReport(backup.body or {}, downtime, seconds)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _offline_dump(
    backup: Any,
    job: Neo4jJob,
    version: Neo4jVersion,
    *,
    staging: bool,
    stopped: bool = False,
    at_consistency: Callable[[dict[str, str]], None] | None = None,
    facts: dict[str, Any] | None = None,
) -> tuple[float, bool]:
    """Stop, dump through the engine, start again whatever happened; returns (downtime, seen serving again).

    A stop that fails leaves the database as the stop command left it, and nothing is started: the database
    may never have stopped (starting it would fail and raise a false "left stopped" alarm). Only where Bolt
    shows it is down after all is it started again. ``stopped``: the caller stopped it and starts it (a
    restore's safety copy), so neither happens here.
    """
    facts = facts if facts is not None else {}
    if stopped:
        facts["store_txn"] = _dump_stopped(backup, job, version, staging=staging)
        return 0.0, False
    job.check_stoppable()
    down = time.perf_counter()
    try:
        job.stop()
    except SeedvaultError as exc:
        still_serving = _serving_now(job)
        if still_serving is False:
            job.start()  # it did go down: bring it back before reporting the failure
        state = {True: "it still serves", False: "it was started again", None: "its state is unknown"}[still_serving]
        raise SourceError(
            f"{exc.one_line()}; nothing was dumped and {state}",
            hint="fix the stop command (or stop the database by hand), then back up again",
        ) from None
    failure: BaseException | None = None
    serving = False
    moment = {"from": utc_now(), "until": ""}
    try:
        facts["store_txn"] = _dump_stopped(backup, job, version, staging=staging)
        if at_consistency is not None:  # still stopped: the dump is the database at any moment until the start
            at_consistency(moment)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        moment["until"] = utc_now()  # the start command runs now: the caller's dict shows the whole interval
        try:
            serving = job.start()
        except SeedvaultError as start_exc:
            if failure is None:  # the dump is stored; the database is down
                raise DatabaseLeftStopped(
                    f"{start_exc.one_line()} after the dump (so the backup is not kept)",
                    hint="start the database by hand now, then back up again",
                ) from None
            raise DatabaseLeftStopped(
                f"{one_line(failure)}; and starting {job.database} again failed too: {start_exc.one_line()}",
                hint="start the database by hand now",
            ) from None
    return time.perf_counter() - down, serving


def _serving_now(job: Neo4jJob) -> bool | None:
    """Whether the database serves right now (Bolt), None without a Bolt connection to ask."""
    if job.graph is None:
        return None
    try:
        return job.graph.serves()
    except SeedvaultError:
        return False


def _dump_stopped(backup: Any, job: Neo4jJob, version: Neo4jVersion, *, staging: bool) -> int | None:
    """``neo4j-admin database dump`` of the stopped database into the backup's ``dump`` object.

    Returns the store's last committed transaction id (5.x ``database info``, read on the same stopped store
    right after the dump), which a restore compares with the loaded store's.
    """
    admin = job.admin
    if version.streams and not staging:
        reader = admin.admin_reader(dump_args(version, job.database, to_dir=None))
        try:
            backup.write_object("dump", reader)
        except SourceError as exc:
            cause = dump_failure_cause(admin, version, job.database)
            if cause and cause not in exc.message:
                raise SourceError(f"{exc.message}: {cause}", hint=exc.hint) from None
            raise
        finally:
            reader.close()
    else:
        with admin.staging("dump") as stage:
            admin.run_admin(dump_args(version, job.database, to_dir=stage))
            reader = admin.read_file(f"{stage}/{job.database}.dump")
            try:
                backup.write_object("dump", reader)
            finally:
                reader.close()
    return store_txn(admin, version, job.database)


def _online_backup(
    repo: Repository,
    backup: Any,
    job: Neo4jJob,
    version: Neo4jVersion,
    backup_type: str,
    chain: list[tuple[str, dict[str, Any]]],
) -> list[str]:
    admin = job.admin
    with admin.staging("backup") as stage:
        if backup_type == "DIFF":
            for bid, _body in chain:  # the chain neo4j-admin extends
                _unpack(repo, admin, bid, stage)
        before = set(admin.list_dir(stage))
        args = backup_args(version, job.database, stage, kind=backup_type, source=job.backup_from)
        admin.run_admin(args)
        new = sorted(set(admin.list_dir(stage)) - before) if version.dialect != DIALECT_44 else [job.database]
        if not new:
            raise SourceError(f"neo4j-admin backup of {job.database} produced no artifact in {stage}")
        reader = admin.tar_out(stage, new)
        try:
            backup.write_object("backup.tar", reader)
        finally:
            reader.close()
    return new


def _unpack(repo: Repository, admin: Admin, backup_id: str, directory: str) -> None:
    from seedvault.sources.neo4j.admin import feed

    writer = admin.tar_in(directory)
    feed(writer, repo.read_object(backup_id, "backup.tar"))


def one_line(exc: BaseException) -> str:
    if isinstance(exc, SeedvaultError):
        return exc.one_line()
    with contextlib.suppress(Exception):
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return type(exc).__name__
