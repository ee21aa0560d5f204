"""``drill platform``: restore a platform group into scratch targets, verify, measure RTO and RPO, clean up.

Steps (each a fault point ``drill-<step>``)::

    sweep      leftovers of killed drills (marked as ours, owner process dead) are removed first
    picked     the newest complete group, or a seeded random one within a window (AWS Backup's restore testing)
    marked     a marker <scratch parent>/<drill id>.json (drill id, pid, host, what it will create), then the
               scratch directory <scratch parent>/<drill id>/
    neo4j      the scratch Neo4j instance: the configured setup command
    restored   restore_platform into the scratch targets: PostgreSQL recovered by PITR into a new data
               directory (free loopback port, archive_mode off), Neo4j loaded without a safety copy (scratch);
               both verified as the group recorded them (rows, checksums, counts)
    measured   RPO read from the recovered server: pg_last_xact_replay_timestamp(), else the restore point
    cleaned    the scratch cluster stopped and removed, the teardown command run, the directory and marker gone
    recorded   a ``drill`` audit event with RTO/RPO (total, per store, per step), then the trend of the last 12

RTO is measured from the drill's start (after the sweep, which is housekeeping) to both stores verified;
RPO is the drill's start minus the newest commit the recovered PostgreSQL holds (the data a disaster at
that moment would lose), and the group's own age (start minus its restore point). Cleanup runs whatever
happened (``finally``); a drill killed before it finished leaves its marker, and the next drill (or
``drill platform --cleanup-only``) stops the cluster, kills processes still using the directory, runs the
teardown command the marker names and removes everything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import random
import shlex
import shutil
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from seedvault import audit, faults
from seedvault.config import Settings
from seedvault.errors import (
    BackupNotFound,
    ConfigError,
    DrillTargetMissed,
    SeedvaultError,
)
from seedvault.ops.neo4j_backup import Neo4jJob
from seedvault.ops.platform import KIND, GroupCheck, _parse, check_group, newest_group, restore_platform
from seedvault.repository import Repository
from seedvault.sources.neo4j.admin import run_local
from seedvault.sources.postgres.cluster import LocalCluster, default_run_as

log = logging.getLogger(__name__)

OPERATION = "drill"
DEFAULT_SCRATCH_PARENT = "/var/tmp/seedvault-drill"  # world-traversable: the server runs as an unprivileged user
RTO_TARGET_S = 3600.0
RPO_TARGET_S = 900.0
TREND = 12
COMMAND_TIMEOUT_S = 900.0
ENV_ID, ENV_DIR = "SEEDVAULT_DRILL_ID", "SEEDVAULT_DRILL_DIR"  # given to the scratch setup/teardown commands
STEPS = (  # (key, what) in order: the seconds of each, as the report and the event carry them
    ("pick", "pick and check the group"),
    ("neo4j_setup", "scratch Neo4j setup command"),
    ("check", "restore: group, members and WAL checked again"),
    ("postgres_plan", "postgres: recovery plan"),
    ("postgres_download", "postgres: download, decrypt, extract the base backup"),
    ("postgres_verifybackup", "postgres: pg_verifybackup"),
    ("postgres_replay", "postgres: WAL fetch and replay to the restore point"),
    ("postgres_verify", "postgres: rows and checksums"),
    ("neo4j_load", "neo4j: download, decrypt, load, start"),
    ("neo4j_verify", "neo4j: counts"),
    ("rpo", "read the recovered moment"),
)


@dataclass
class DrillOptions:
    scratch_parent: str = DEFAULT_SCRATCH_PARENT
    group_id: str | None = None
    label: str | None = None
    random_within_days: float | None = None  # pick a random complete group made within this many days
    seed: int | None = None
    rto_target: float = RTO_TARGET_S
    rpo_target: float = RPO_TARGET_S
    run_as: str | None = None
    neo4j_setup: str | None = None  # commands creating / removing the scratch Neo4j instance the job describes
    neo4j_teardown: str | None = None
    timeout: float = 3600.0


@dataclass
class DrillReport:
    drill_id: str
    started: str
    group_id: str | None = None
    result: str = "failed"
    error: str | None = None
    problems: list[str] = field(default_factory=list)  # targets missed, checks that did not pass
    rto: dict[str, Any] = field(default_factory=dict)  # total, postgres, neo4j, target, met
    rpo: dict[str, Any] = field(default_factory=dict)  # seconds, group_seconds, newest_commit, target, met
    steps: dict[str, float] = field(default_factory=dict)
    verified: dict[str, Any] = field(default_factory=dict)
    swept: list[str] = field(default_factory=list)  # leftovers of killed drills removed first
    cleanup: dict[str, Any] = field(default_factory=dict)
    trend: list[dict[str, Any]] = field(default_factory=list)
    audit_seq: int | None = None
    failure: BaseException | None = field(default=None, repr=False)  # what stopped it (not in as_dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "failure"}

    def raise_for_result(self) -> None:
        """The failure that stopped the drill, else :class:`DrillTargetMissed` naming every problem, else nothing."""
        if self.failure is not None:
            raise self.failure
        if self.problems:
            raise DrillTargetMissed(f"drill {self.drill_id} of group {self.group_id}: " + "; ".join(self.problems))


# --- markers and leftovers ------------------------------------------------------------------------------
def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc): a pid reused later has another."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(marker: dict[str, Any]) -> bool:
    pid = int(marker.get("pid") or 0)
    start = _proc_start(pid) if pid > 0 else None
    return start is not None and start == marker.get("pid_start")


def _write_marker(path: Path, marker: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(marker, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _processes_using(path: Path, uid: int) -> list[int]:
    """Processes of ``uid`` whose command line names ``path`` (the postmaster, a killed recovery's WAL daemon)."""
    needle = str(path).encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid and needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                out.append(int(entry))
        except OSError:
            continue
    return out


def _server_uid(run_as: str | None) -> int:
    try:
        return pwd.getpwnam(run_as or default_run_as()).pw_uid
    except KeyError:
        return os.getuid()


def _run_command(command: str, what: str, drill_id: str, drill_dir: Path) -> None:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"{what} is not a valid command line: {exc}") from None
    if not argv:
        raise ConfigError(f"{what} is empty")
    run_local(argv, what=what, timeout=COMMAND_TIMEOUT_S, extra_env={ENV_ID: drill_id, ENV_DIR: str(drill_dir)})


def remove_scratch(marker_path: Path, marker: dict[str, Any]) -> list[str]:
    """Stop and remove everything a drill marked; returns the problems (the marker stays while there are any)."""
    problems: list[str] = []
    drill_dir = Path(marker["dir"])
    data_dir = Path(marker["data_dir"])
    if (data_dir / "postmaster.pid").exists() or data_dir.exists():
        try:
            LocalCluster(data_dir, run_as=marker.get("run_as")).destroy()
        except Exception as exc:  # noqa: BLE001 - still kill by command line below, and say what failed
            problems.append(f"scratch PostgreSQL in {data_dir} not stopped cleanly: {type(exc).__name__}")
    for pid in _processes_using(drill_dir, _server_uid(marker.get("run_as"))):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if marker.get("neo4j_teardown") and marker.get("neo4j_setup_ran"):
        try:
            _run_command(marker["neo4j_teardown"], "the scratch Neo4j teardown command", marker["drill_id"], drill_dir)
        except SeedvaultError as exc:
            problems.append(exc.one_line())
    shutil.rmtree(drill_dir, ignore_errors=True)
    if drill_dir.exists():
        problems.append(f"scratch directory {drill_dir} could not be removed")
    if not problems:
        marker_path.unlink(missing_ok=True)
    return problems


def sweep(parent: Path) -> tuple[list[str], list[str]]:
    """Remove the leftovers of drills on this host whose process is gone: (drill ids removed, problems)."""
    removed: list[str] = []
    problems: list[str] = []
    if not parent.is_dir():
        return removed, problems
    host = socket.gethostname()
    for path in sorted(parent.glob("drill-*.json")):
        try:
            marker = json.loads(path.read_text())
            drill_id = str(marker["drill_id"])
            mine = parent / drill_id  # what a marker may name: its own directory, nothing else
            named = "/" not in drill_id and path.name == f"{drill_id}.json" and Path(marker["dir"]) == mine
            named = named and Path(marker["data_dir"]).is_relative_to(mine)
        except (OSError, ValueError, KeyError, TypeError):
            named = False
        if not named:  # not ours to judge (and never a reason to delete anything): said, not failed
            log.warning("seedvault: warning: %s is not a drill marker of this directory; left alone", path)
            continue
        if marker.get("host") != host or _alive(marker):
            continue  # another host's (a shared parent), or a drill still running
        found = remove_scratch(path, marker)
        if found:
            problems += [f"leftover of drill {marker['drill_id']}: {p}" for p in found]
        else:
            removed.append(str(marker["drill_id"]))
            log.warning("seedvault: removed the leftovers of killed drill %s", marker["drill_id"])
    return removed, problems


# --- picking -------------------------------------------------------------------------------------------
def pick_group(repo: Repository, options: DrillOptions) -> GroupCheck:
    """The group to drill: given, newest complete, or a seeded random complete one made within the window."""
    if options.group_id:
        return check_group(repo, options.group_id)
    if options.random_within_days is None:
        return newest_group(repo, options.label)
    from seedvault.catalog import Catalog

    since = datetime.now(UTC) - timedelta(days=options.random_within_days)
    ids = sorted(
        bid for bid, b in Catalog(repo).bodies(lambda b: b.get("kind") == KIND)
        if (not options.label or (b.get("labels") or {}).get("name") == options.label)
        and audit.parse_time(b["finished"]) >= since
    )  # fmt: skip
    rng = random.Random(options.seed)
    rng.shuffle(ids)
    skipped: list[str] = []
    for gid in ids:
        try:
            return check_group(repo, gid)
        except SeedvaultError as exc:
            skipped.append(f"{gid}: {exc.one_line()}")
            log.warning("seedvault: warning: skipped incomplete group %s", skipped[-1])
    raise BackupNotFound(
        f"no complete platform group made within the last {options.random_within_days:g} days"
        + (f": {skipped[0]}" if skipped else ""),
        hint="widen --random-within-days, or drill the newest group",
    )


# --- measuring -----------------------------------------------------------------------------------------
def _steps(restore: dict[str, Any], pick: float, setup: float, rpo: float) -> dict[str, float]:
    """Per-step seconds from the reports' cumulative seconds (restore_platform's, restore_pitr's, Neo4j's)."""
    s = restore.get("seconds", {})
    p = (restore.get("postgres") or {}).get("seconds") or {}
    n = (restore.get("neo4j") or {}).get("seconds") or {}

    def d(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(max(0.0, a - b), 3)

    out = {
        "pick": round(pick, 3),
        "neo4j_setup": round(setup, 3),
        "check": s.get("check"),
        "postgres_plan": p.get("plan"),
        "postgres_download": d(p.get("extract"), p.get("plan")),
        "postgres_verifybackup": d(p.get("verify"), p.get("extract")),
        "postgres_replay": d(p.get("recover"), p.get("verify")),
        "postgres_verify": d(s.get("postgres_verify"), s.get("postgres_recover")),
        "neo4j_load": round(n["load"], 3) if "load" in n else None,
        "neo4j_verify": d(n.get("total"), n.get("load")),
        "rpo": round(rpo, 3),
    }
    return {k: v for k, v in out.items() if v is not None}


def _recovered_moment(data_dir: str, port: int, run_as: str | None, point_time: str) -> tuple[datetime, str]:
    """The newest commit the recovered server replayed, or the restore point's time when it replayed none."""
    cluster = LocalCluster(Path(data_dir), port=port, run_as=run_as)
    with cluster.connect(autocommit=True) as conn:
        row = conn.execute("SELECT pg_last_xact_replay_timestamp()").fetchone()
    if row and row[0] is not None:
        return row[0].astimezone(UTC), "pg_last_xact_replay_timestamp"
    return _parse(point_time), "restore point time (no transaction replayed)"


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


# --- history -------------------------------------------------------------------------------------------
def history(repo: Repository, limit: int = TREND) -> list[dict[str, Any]]:
    """The last ``limit`` drill events, oldest first, as figures (seconds) for the trend and the runbook."""
    report = audit.verify_chain(repo, full=False)
    if not report.ok:
        log.warning("seedvault: warning: the audit log is not intact; the drill history shows its authentic events")
    out = []
    drills = [e for e in report.events if e.operation == OPERATION and e.details.get("mode", "platform") == "platform"]
    for ev in drills[-limit:]:
        d = ev.details

        def s(ms: Any) -> float | None:
            return None if ms is None else round(int(ms) / 1000, 3)

        out.append({
            "seq": ev.seq, "time": ev.time, "by": ev.by, "result": ev.result, "group_id": d.get("group_id"),
            "drill_id": d.get("drill_id"), "rto_seconds": s(d.get("rto_ms")), "rpo_seconds": s(d.get("rpo_ms")),
            "rto_target_seconds": s(d.get("rto_target_ms")), "rpo_target_seconds": s(d.get("rpo_target_ms")),
            "missed": d.get("missed", []), "error": d.get("error"),
            "steps": {k: s(v) for k, v in (d.get("steps_ms") or {}).items()},
        })  # fmt: skip
    return out


# --- the drill -----------------------------------------------------------------------------------------
def run_drill(repo: Repository, settings: Settings, job: Neo4jJob | None, options: DrillOptions) -> DrillReport:
    """One drill (see the module docstring), recorded; :meth:`DrillReport.raise_for_result` says whether it passed.

    Only a configuration error found before anything started (and an interrupt, after the cleanup) raises here.
    """
    if job is not None and not (options.neo4j_setup and options.neo4j_teardown):
        raise ConfigError(
            "the drill restores Neo4j only into a scratch instance it creates and removes (the restore takes no"
            " safety copy): give both the scratch setup and teardown commands",
            hint="--neo4j-scratch-setup CMD --neo4j-scratch-teardown CMD, or --no-neo4j for PostgreSQL only",
        )
    parent = Path(options.scratch_parent).absolute()
    swept, sweep_problems = sweep(parent)
    faults.reached("drill-swept")
    t0 = time.perf_counter()
    started = datetime.now(UTC)
    drill_id = f"drill-{started.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:6]}"
    report = DrillReport(drill_id, started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), swept=swept)
    report.problems += sweep_problems
    failure: BaseException | None = None
    check: GroupCheck | None = None
    marker_path = parent / f"{drill_id}.json"
    drill_dir = parent / drill_id
    marker: dict[str, Any] | None = None
    try:
        check = pick_group(repo, options)
        report.group_id = check.group_id
        pick_s = time.perf_counter() - t0
        faults.reached("drill-picked")
        run_as = options.run_as or default_run_as()
        parent.mkdir(parents=True, exist_ok=True)
        marker = {
            "drill_id": drill_id, "pid": os.getpid(), "pid_start": _proc_start(os.getpid()),
            "host": socket.gethostname(), "started": report.started, "group_id": check.group_id,
            "dir": str(drill_dir), "data_dir": str(drill_dir / "pg" / "data"), "run_as": run_as,
            "neo4j_teardown": options.neo4j_teardown if job is not None else None, "neo4j_setup_ran": False,
        }  # fmt: skip
        _write_marker(marker_path, marker)  # before anything it names exists
        drill_dir.mkdir(mode=0o755)
        os.chmod(drill_dir, 0o755)
        faults.reached("drill-marked")
        setup_s = 0.0
        if job is not None:
            marker["neo4j_setup_ran"] = True  # a half-done setup is torn down too
            _write_marker(marker_path, marker)
            t = time.perf_counter()
            _run_command(str(options.neo4j_setup), "the scratch Neo4j setup command", drill_id, drill_dir)
            setup_s = time.perf_counter() - t
            faults.reached("drill-neo4j")
        restored = restore_platform(
            repo, settings, job, marker["data_dir"], group_id=check.group_id, run_as=run_as, archive_mode="off",
            safety_copy=False, stop_after=False, purpose="drill", timeout=options.timeout,
        ).as_dict()  # fmt: skip
        verified_at = time.perf_counter()
        faults.reached("drill-restored")
        pg = restored["postgres"]
        report.verified = {"postgres": pg.get("verified"), "neo4j": _neo4j_verified(restored["neo4j"], job)}
        t = time.perf_counter()
        point = check.point
        newest, how = _recovered_moment(pg["data_dir"], int(pg["port"]), run_as, point["time"])
        rpo_s = time.perf_counter() - t
        faults.reached("drill-measured")
        rpo = (started - newest).total_seconds()
        behind = (_parse(point["time"]) - newest).total_seconds()
        if behind < -1.0:  # the same server's clock: a commit after the restore point means recovery overshot
            report.problems.append(f"recovered PostgreSQL holds a commit {-behind:.3f} s after the restore point")
        report.steps = _steps(restored, pick_s, setup_s, rpo_s)
        s = restored["seconds"]
        before = verified_at - t0 - s["total"]  # pick + setup: before restore_platform's own clock started
        report.rto = {
            "seconds": round(verified_at - t0, 3),
            "postgres_seconds": round(before + s["postgres_verify"], 3),
            "neo4j_seconds": round(s["neo4j"] - s["postgres_verify"], 3) if job is not None else None,
            "target_seconds": options.rto_target,
        }
        report.rpo = {
            "seconds": round(rpo, 3),
            "group_seconds": round((started - _parse(point["time"])).total_seconds(), 3),
            "newest_commit": newest.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "newest_commit_from": how,
            "restore_point_time": point["time"],
            "neo4j_moment": check.body["source"]["neo4j"].get("moment"),
            "skew_seconds": check.body["source"]["skew"]["ms"] / 1000,
            "target_seconds": options.rpo_target,
        }
        report.rto["met"] = report.rto["seconds"] <= options.rto_target
        report.rpo["met"] = rpo <= options.rpo_target
        if not report.rto["met"]:
            report.problems.append(f"RTO {report.rto['seconds']:.3f} s missed the target of {options.rto_target:g} s")
        if not report.rpo["met"]:
            report.problems.append(f"RPO {rpo:.3f} s missed the target of {options.rpo_target:g} s")
    except BaseException as exc:
        failure = exc
        report.error = audit.error_line(exc)
    finally:
        t = time.perf_counter()
        if marker is not None:
            leftover = remove_scratch(marker_path, marker)
            report.problems += leftover
            report.cleanup = {"removed": not leftover, "seconds": round(time.perf_counter() - t, 3),
                              "marker": str(marker_path) if leftover else None}  # fmt: skip
    if failure is not None and not isinstance(failure, Exception):
        raise failure  # KeyboardInterrupt and the like: cleaned up, not recorded as a drill result
    faults.reached("drill-cleaned")
    report.result = "ok" if failure is None and not report.problems else "failed"
    event = audit.record(repo, OPERATION, backup_ids=_ids(check), result=report.result, details=_details(report))
    report.audit_seq = event.seq if event is not None else None
    report.trend = history(repo)
    report.failure = failure
    return report


def _neo4j_verified(neo4j: dict[str, Any], job: Neo4jJob | None) -> dict[str, Any]:
    if job is None:
        return {"skipped": "PostgreSQL only (--no-neo4j)"}
    counts = neo4j.get("counts")
    if counts is None:
        return {"loaded": True, "counts": "none recorded (no Bolt URI at backup time)"}
    return {"loaded": True, "nodes": counts.get("nodes"), "relationships": counts.get("relationships")}


def _ids(check: GroupCheck | None) -> list[str]:
    return [] if check is None else [check.group_id, check.neo4j_backup, check.plan.backup_id]


def _details(r: DrillReport) -> dict[str, Any]:
    """The drill event's details (FORMAT.md 7.4): figures in integer milliseconds (events hold no floats)."""
    missed = [w for w, fig in (("rto", r.rto), ("rpo", r.rpo)) if fig and not fig.get("met")]
    out: dict[str, Any] = {
        "mode": "platform", "drill_id": r.drill_id, "group_id": r.group_id, "started": r.started,
        "rto_ms": _ms(r.rto.get("seconds")), "rto_postgres_ms": _ms(r.rto.get("postgres_seconds")),
        "rto_neo4j_ms": _ms(r.rto.get("neo4j_seconds")), "rto_target_ms": _ms(r.rto.get("target_seconds")),
        "rpo_ms": _ms(r.rpo.get("seconds")), "rpo_group_ms": _ms(r.rpo.get("group_seconds")),
        "rpo_target_ms": _ms(r.rpo.get("target_seconds")), "newest_commit": r.rpo.get("newest_commit"),
        "steps_ms": {k: _ms(v) for k, v in r.steps.items()}, "missed": missed,
        "scratch_removed": bool(r.cleanup.get("removed")), "leftovers_removed": r.swept,
    }  # fmt: skip
    if r.verified.get("postgres"):
        out["verified_tables"] = r.verified["postgres"].get("tables")
        out["verified_rows"] = r.verified["postgres"].get("rows")
    if r.error:
        out["error"] = r.error
    elif r.problems:
        out["error"] = "; ".join(r.problems)
    return out


def cleanup_only(parent: str) -> tuple[list[str], list[str]]:
    """``drill platform --cleanup-only``: the sweep alone (leftovers of killed drills on this host)."""
    return sweep(Path(parent).absolute())
