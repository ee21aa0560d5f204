"""``restore neo4j``: load a dump, restore an online-backup chain, or import an export; counts verified.

The order protects the live database:

1. the backup is authenticated (manifest) before anything is touched;
2. a target Community cannot have (another database name) is refused before anything runs;
3. the database is stopped once; **safety copy**: if it exists, it is dumped through the engine as a backup
   of its own (label ``safety-<db>-before-<id>``) and that copy is verified (every object read back
   against its SHA-256) - unless the operator explicitly declines it; if the copy fails, the database is
   started again unchanged;
4. the backup is loaded/restored with overwrite, the database started (created first when new, 5.x) and
   waited for until it serves (the downtime ends there), and counts over Bolt are compared with the
   backup's; any difference fails the restore, naming it;
5. on any failure after step 2, the safety copy is loaded back, so the old database is in place again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from seedvault import audit, leases
from seedvault.config import Settings
from seedvault.errors import BackupNotFound, ConfigError, RestoreVerificationFailed, SeedvaultError, TargetError
from seedvault.ops.neo4j_backup import KIND, Neo4jJob, backup_neo4j, chain_of, one_line
from seedvault.ops.verify import verify_backup
from seedvault.repository import Repository
from seedvault.sources.neo4j.admin import feed, info_args, load_args, restore_args, store_txn
from seedvault.sources.neo4j.version import DIALECT_44, Neo4jVersion


@dataclass
class Neo4jRestoreReport:
    backup_id: str
    database: str
    mode: str
    safety_copy: str | None = None
    counts: dict[str, Any] | None = None
    downtime: float | None = None
    downtime_until: str | None = None  # "serving" (seen over Bolt) or "start-command-returned"
    rolled_back: bool = False
    store_txn: int | None = None  # the loaded store's last transaction, equal to the dump's (5.x)
    counts_note: str | None = None  # why counts read before the dump's stop differ while the store is the dump's
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def restore_neo4j(
    repo: Repository,
    settings: Settings,
    backup_id: str,
    job: Neo4jJob,
    *,
    safety_copy: bool = True,
    until: str | None = None,
    staging: bool = False,
    purpose: str = "restore",
) -> Neo4jRestoreReport:
    """Restore one Neo4j backup, holding a lease naming it (and so its chain's parents: delete refuses parents).

    Audited as ``restore`` (``restore-test`` with ``purpose="drill"``)."""
    operation = audit.restore_operation(purpose)
    with leases.shared(repo, "restore neo4j", [backup_id]), audit.audited(repo, operation, [backup_id]) as ev:
        ev.details.update(kind="neo4j", database=job.database)
        report = _restore_neo4j(repo, settings, backup_id, job, safety_copy=safety_copy, until=until, staging=staging)
        ev.details.update(mode=report.mode, until=until, verified_counts=report.counts is not None)
        return report


def _restore_neo4j(
    repo: Repository,
    settings: Settings,
    backup_id: str,
    job: Neo4jJob,
    *,
    safety_copy: bool,
    until: str | None,
    staging: bool,
) -> Neo4jRestoreReport:
    t0 = time.perf_counter()
    body = repo.manifest(backup_id)
    if body.get("kind") != KIND:
        raise BackupNotFound(f"backup {backup_id} is not a Neo4j backup (kind {body.get('kind')})")
    src = body["source"]
    mode = src["mode"]
    report = Neo4jRestoreReport(backup_id, job.database, mode)
    version = job.admin.version() if mode != "export" else None
    if version is not None and job.edition is None:
        job.edition = version.edition
    if job.edition is None and job.graph is not None and hasattr(job.graph, "components"):
        job.edition = job.graph.components()[1]  # CALL dbms.components(): neo4j-admin may not say
    if until and (mode != "online" or version is None or not version.point_in_time):
        raise ConfigError("--restore-until needs an online backup restored with Neo4j 5.x or later")
    exists = _target_exists(job, mode, version)
    down = time.perf_counter()
    if exists and mode != "export":
        before = job.graph.counts() if safety_copy and job.graph is not None else None
        down = time.perf_counter()
        job.stop()  # once: the safety copy is dumped from the stopped database, then the backup loaded
        if safety_copy:
            _safety_copy(repo, settings, job, backup_id, report, staging, before)
            report.seconds["safety_copy"] = time.perf_counter() - t0
    try:
        if mode == "export":
            expected = _import(repo, backup_id, job)
            if expected is not None:  # what the import can reproduce (dangling relationships excepted)
                src = dict(src, counts=dict(src.get("counts") or {}, **expected))
        else:
            assert version is not None
            serving = False
            try:
                if mode == "dump":
                    _load(repo, backup_id, job, version, staging=staging)
                    report.store_txn = _check_store(job, version, src, backup_id)
                else:
                    _restore_chain(repo, backup_id, job, version, until)
            finally:
                serving = _start_or_create(job, exists, version)
            report.downtime = round(time.perf_counter() - down, 3)  # until it serves again, where Bolt can tell
            report.seconds["load"] = time.perf_counter() - t0  # loaded (or restored) and started
            report.downtime_until = "serving" if serving else "start-command-returned"
        if until:  # the recorded counts are the chain's end, not the point restored to
            report.counts = job.graph.counts() if job.graph is not None else None
        else:
            report.counts = _verify_counts(job, src.get("counts"), backup_id, report)
    except BaseException as exc:
        if report.safety_copy is None:
            raise
        _roll_back(repo, settings, report, job, staging, exc)
        raise
    report.seconds["total"] = time.perf_counter() - t0
    return report


def _load(repo: Repository, backup_id: str, job: Neo4jJob, version: Neo4jVersion, *, staging: bool) -> None:
    admin = job.admin
    chunks = repo.read_object(backup_id, "dump")
    if version.streams and not staging:
        feed(admin.admin_writer(load_args(version, job.database, from_dir=None)), chunks)
        return
    with admin.staging("load") as stage:
        feed(admin.write_file(f"{stage}/{job.database}.dump"), chunks)
        admin.run_admin(load_args(version, job.database, from_dir=stage), error=TargetError)


def _restore_chain(repo: Repository, backup_id: str, job: Neo4jJob, version: Neo4jVersion, until: str | None) -> None:
    admin = job.admin
    chain = chain_of(repo, job_db(repo, backup_id), upto=backup_id)
    with admin.staging("restore") as stage:
        for bid, _ in chain:
            feed(admin.tar_in(stage), repo.read_object(bid, "backup.tar"))
        if version.dialect == DIALECT_44:
            path = f"{stage}/{chain[-1][1]['source']['database']}"
        else:
            path = f"{stage}/{chain[-1][1]['source']['artifacts'][-1]}"
        admin.run_admin(restore_args(version, job.database, path, until=until), error=TargetError)


def job_db(repo: Repository, backup_id: str) -> str:
    return str(repo.manifest(backup_id)["source"]["database"])


def _start_or_create(job: Neo4jJob, existed: bool, version: Neo4jVersion) -> bool:
    if not existed and job.graph is not None and job.edition == "enterprise" and version.dialect != DIALECT_44:
        job.graph.create_database()  # a restored store of a new name must be registered (5.x)
        return job.wait_serving()
    return job.start()


def _target_exists(job: Neo4jJob, mode: str, version: Neo4jVersion | None) -> bool:
    """Whether the target database exists; a database Community cannot have is refused before anything runs.

    Why: Community serves one user database (and ``system``); a load into another name writes a store the
    server never serves, and without a Bolt connection would even be reported as a success.
    """
    if job.graph is None:
        if mode == "export" or version is None or (args := info_args(version, job.database)) is None:
            return True  # 4.4 has no way to ask; the load itself then says what it finds
        try:
            job.admin.run_admin(args)
        except SeedvaultError as exc:
            if "does not exist" in exc.message:
                raise TargetError(
                    f"database {job.database} does not exist on this Neo4j server, and without a Bolt connection"
                    " seedvault cannot create it (Community cannot at all)",
                    hint="restore into the database the server serves (neo4j by default), or pass --uri",
                ) from None
        return True  # it exists (running, "in use", or stopped)
    exists = job.graph.database_exists()
    if not exists and job.edition == "community" and mode != "export":
        raise TargetError(
            f"database {job.database} does not exist on {job.graph.display()}, and Neo4j Community cannot create"
            " another database",
            hint="restore into the database the server serves (SHOW DATABASES; neo4j by default)",
        )
    return exists


def _safety_copy(
    repo: Repository,
    settings: Settings,
    job: Neo4jJob,
    backup_id: str,
    report: Neo4jRestoreReport,
    staging: bool,
    counts: dict[str, Any] | None,
) -> None:
    """Dump the stopped target through the engine and verify it; on any failure start it again, unchanged."""
    try:
        copy = backup_neo4j(
            repo, settings, job, mode="dump", label=f"safety-{job.database}-before-{backup_id}",
            staging=staging, stopped=True, stopped_counts=counts,
        )  # fmt: skip
        check = verify_backup(repo, copy.body["id"])
        if not check.ok:
            raise TargetError(f"the safety copy {copy.body['id']} did not verify: {check.problems[0]}; nothing changed")
    except BaseException:
        job.start()
        raise
    report.safety_copy = copy.body["id"]


def _import(repo: Repository, backup_id: str, job: Neo4jJob) -> dict[str, Any] | None:
    from seedvault.sources.neo4j.export import import_stream

    if job.graph is None:
        raise ConfigError("importing an export needs the Bolt connection (URI, user, password)")
    result = import_stream(job.graph, repo.read_object(backup_id, "graph.jsonl"))  # type: ignore[arg-type]
    return result.expected_counts()


def _check_store(job: Neo4jJob, version: Neo4jVersion, src: dict[str, Any], backup_id: str) -> int | None:
    """The loaded (still stopped) store must be at the dumped store's last transaction, where both are known."""
    loaded = store_txn(job.admin, version, job.database)
    want = src.get("store_txn")
    if want is not None and loaded is not None and loaded != want:
        raise RestoreVerificationFailed(
            f"the loaded store of {job.database} is at transaction {loaded}, backup {backup_id} dumped it at {want}"
        )
    return loaded if want is not None and loaded == want else None


def _verify_counts(
    job: Neo4jJob, expected: dict[str, Any] | None, backup_id: str, report: Neo4jRestoreReport | None = None
) -> dict[str, Any] | None:
    """Counts over Bolt against the backup's.

    A dump's counts are read before its stop, while the database still accepts writes (Community cannot refuse
    them online), so writes that land during the stop make them differ from the dump. Where the loaded store is
    proven to be the dumped one (its last transaction id, :func:`_check_store`), such a difference is reported in
    ``counts_note``, not failed; anywhere else a difference fails the restore.
    """
    if job.graph is None or expected is None:
        return None
    from seedvault.sources.neo4j.bolt import compare_counts

    actual = job.graph.counts()
    diff = compare_counts(expected, actual)
    if diff and report is not None and report.store_txn is not None:
        report.counts_note = (
            f"counts were read before the stop, while {job.database} still accepted writes; the loaded store is"
            f" the dumped one (transaction {report.store_txn}); differences: {'; '.join(diff[:3])}"
        )
        return actual
    if diff:
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise RestoreVerificationFailed(
            f"restored {job.database} does not match backup {backup_id}: {'; '.join(diff[:3])}{more}"
        )
    return actual


def _roll_back(
    repo: Repository, settings: Settings, report: Neo4jRestoreReport, job: Neo4jJob, staging: bool, exc: BaseException
) -> None:
    """Put the safety copy back after a failed restore; the original error is raised by the caller."""
    assert report.safety_copy is not None
    try:
        version = job.admin.version()
        try:
            job.stop()
        except SeedvaultError:
            pass  # it may be down already
        try:
            _load(repo, report.safety_copy, job, version, staging=staging)
        finally:
            job.start()
        report.rolled_back = True
    except SeedvaultError as again:
        raise TargetError(
            f"restore of {report.backup_id} failed ({one_line(exc)}) and putting the safety copy "
            f"{report.safety_copy} back failed too: {again.one_line()}",
            hint=f"restore the safety copy by hand: seedvault restore neo4j {report.safety_copy}",
        ) from None
    if isinstance(exc, SeedvaultError):
        exc.hint = (
            exc.hint + "; " if exc.hint else ""
        ) + f"the previous database was put back from {report.safety_copy}"
