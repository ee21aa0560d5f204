"""``backup postgres``: one logical backup = objects ``dump`` (pg_dump -Fc) and ``globals`` (pg_dumpall -g).

Order of events: export a snapshot; start pg_dump on it and stream its stdout through the engine's
stages; meanwhile count rows (and checksum tables if asked) in the same snapshot; then stream the
globals; then commit the manifest with everything recorded. Any failure (pg_dump exit code included,
checked before the object is committed) abandons the backup: no manifest, leftovers removed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from seedvault.config import Settings
from seedvault.repository import Repository
from seedvault.sources.postgres.connection import PgTarget
from seedvault.sources.postgres.logical import LogicalOptions, SnapshotSession
from seedvault.writer import BackupWriter, ObjectStats

KIND = "postgres-logical"
# Level 3 in one thread is slower than pg_dump on 2 cores (bench/postgres.py: 1.5x raw pg_dump); level 1 keeps up.
DUMP_ZSTD_LEVEL = 1


@dataclass
class BackupReport:
    body: dict
    objects: dict[str, ObjectStats] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        b = self.body
        steps: dict[str, float] = {}
        for stats in self.objects.values():
            for k, v in stats.times.as_dict().items():
                steps[k] = round(steps.get(k, 0.0) + v, 3)
        return {
            "id": b["id"],
            "database": b["source"]["database"],
            "raw_size": b["raw_size"],
            "stored_size": b["stored_size"],
            "ratio": round(b["raw_size"] / b["stored_size"], 2) if b["stored_size"] else None,
            "tables": len(b["source"]["tables"]),
            "total_rows": b["source"]["total_rows"],
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "steps": steps,
        }


def begin_backup(repo: Repository, settings: Settings, target: PgTarget, label: str | None) -> BackupWriter:
    return repo.begin(
        kind=KIND,
        labels={"name": label or target.dbname, "database": target.dbname},
        source={"type": "postgres", "database": target.dbname},
        compression=settings.compression,
        level=settings.zstd_level_for(DUMP_ZSTD_LEVEL),
        threads=settings.zstd_threads,
        chunk_size=settings.chunk_size,
    )


def backup_postgres(
    repo: Repository,
    settings: Settings,
    target: PgTarget,
    options: LogicalOptions | None = None,
    *,
    label: str | None = None,
    progress: Callable[[int], None] | None = None,
    run_object: Callable[[BackupWriter, str, Any], ObjectStats] | None = None,
) -> BackupReport:
    """Take one logical backup. ``run_object`` lets the Prefect layer run the stages as tasks."""
    options = options or LogicalOptions()
    started = time.perf_counter()
    run_object = run_object or (lambda bw, name, reader: bw.write_object(name, reader, progress=progress))
    seconds: dict[str, float] = {}
    objects: dict[str, ObjectStats] = {}
    with SnapshotSession(target) as session, begin_backup(repo, settings, target, label) as backup:
        dump = session.start_dump()
        facts: dict[str, Any] = {}
        failure: list[BaseException] = []

        def inspect_snapshot() -> None:
            t0 = time.perf_counter()
            try:
                facts.update(session.inspect(options))
            except BaseException as exc:
                failure.append(exc)
            seconds["inspect"] = time.perf_counter() - t0

        counter = threading.Thread(target=inspect_snapshot, name="pg-inspect")
        counter.start()
        t0 = time.perf_counter()
        try:
            objects["dump"] = run_object(backup, "dump", dump)
        except BaseException as exc:
            counter.join()
            # A failed inspection aborts the snapshot's transaction, which then fails pg_dump too:
            # report the cause, not the echo.
            raise (failure[0] if failure else exc) from None
        finally:
            dump.close()
            counter.join()
        seconds["dump"] = time.perf_counter() - t0
        if failure:
            raise failure[0]
        if options.with_globals:
            t0 = time.perf_counter()
            globals_reader = session.start_globals()
            try:
                objects["globals"] = run_object(backup, "globals", globals_reader)
            finally:
                globals_reader.close()
            seconds["globals"] = time.perf_counter() - t0
        backup.source = {
            "type": "postgres",
            "format": "pg_dump-custom",
            "snapshot": session.snapshot,
            "tools": session.tool_versions(),
            "options": {"estimate_above": options.estimate_above, "checksums": options.checksums},
            **facts,
        }
    seconds["total"] = time.perf_counter() - started
    assert backup.body is not None
    return BackupReport(backup.body, objects, seconds)
