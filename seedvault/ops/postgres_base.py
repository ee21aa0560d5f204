"""``backup postgres-base``: a physical base backup, ``pg_basebackup`` tar streamed through the engine.

Objects: ``base.tar`` (the data directory as pg_basebackup's tar, backup_manifest included as its last
member) and ``pg-manifest`` (PostgreSQL's backup manifest again, for checks without reading the tar).

Why ``--wal-method=none``: to stdout pg_basebackup cannot stream WAL, and ``fetch`` can fail on a long
backup when the server recycles the WAL first. Our WAL store is the WAL source instead: the server waits
until the backup's WAL is archived (through ``seedvault wal-push``), and we commit the backup only after
confirming every segment of its WAL range is in our store. A backup whose WAL is not archived could not
be restored to any point, so it never appears as a good one.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from seedvault.config import Settings
from seedvault.errors import SourceError, WalGap
from seedvault.process import ChildReader
from seedvault.repository import Repository
from seedvault.sources.postgres.binaries import find_client_binaries
from seedvault.sources.postgres.connection import PgTarget
from seedvault.sources.postgres.tarscan import TarScanner
from seedvault.sources.postgres.wal import names as wn
from seedvault.sources.postgres.wal.store import WalStore

KIND = "postgres-physical"
BASE_ZSTD_LEVEL = 1
WAL_CONFIRM_SECONDS = 30.0
KEEP = {"backup_label": 64 * 1024, "global/pg_control": 16, "PG_VERSION": 64, "backup_manifest": None}


@dataclass
class ServerFacts:
    major: int
    version_num: int
    system_id: str
    wal_segment_size: int
    timeline: int
    data_checksums: bool
    in_recovery: bool


def preflight(target: PgTarget) -> ServerFacts:
    """Refuse, before pg_basebackup starts, what could not make a restorable backup."""
    with target.connect() as conn:
        try:
            row = conn.execute(
                "SELECT current_setting('server_version_num')::int, current_setting('wal_level'),"
                " current_setting('archive_mode'), current_setting('archive_command'),"
                " (SELECT system_identifier FROM pg_control_system()),"
                " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
                " (SELECT timeline_id FROM pg_control_checkpoint()),"
                " current_setting('data_checksums') = 'on', pg_is_in_recovery()"
            ).fetchone()
            library = ""
            assert row is not None
            if row[0] >= 150000:
                library = conn.execute("SELECT current_setting('archive_library')").fetchone()[0]  # type: ignore[index]
            spaces = conn.execute(
                "SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace"
                " WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1"
            ).fetchall()
        except psycopg.Error as exc:
            raise SourceError(f"cannot inspect {target.display()}: {str(exc).splitlines()[0]}") from None
    num, wal_level, archive_mode, archive_command, sysid, seg_size, tli, checksums, in_recovery = row
    where = target.display()
    if num < 130000:
        raise SourceError(f"{where} runs PostgreSQL {num // 10000}; physical backups need 13 or newer")
    if wal_level not in ("replica", "logical"):
        raise SourceError(f"{where} has wal_level={wal_level}; physical backups need replica or logical")
    if archive_mode not in ("on", "always") or (in_recovery and archive_mode != "always"):
        raise SourceError(
            f"{where} has archive_mode={archive_mode}: its WAL is not archived, so this backup could not be "
            "recovered to any point",
            hint="set archive_mode = on and archive_command = 'seedvault wal-push %p' (RUNBOOK.md)",
        )
    if library or "wal-push" not in archive_command:
        raise SourceError(
            f"{where} does not archive its WAL to seedvault (archive_command does not run 'seedvault wal-push')",
            hint="set archive_command = 'seedvault wal-push %p' (RUNBOOK.md)",
        )
    if spaces:
        name, location = spaces[0]
        raise SourceError(
            f"tablespace {name} at {location}: streamed base backups support only the main data directory",
            hint="move its objects with ALTER ... SET TABLESPACE pg_default, or back it up logically",
        )
    return ServerFacts(num // 10000, num, str(sysid), int(seg_size), int(tli), bool(checksums), bool(in_recovery))


_LABEL_RE = {
    "start_lsn": re.compile(r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)", re.M),
    "checkpoint_lsn": re.compile(r"^CHECKPOINT LOCATION: ([0-9A-F]+/[0-9A-F]+)", re.M),
    "backup_from": re.compile(r"^BACKUP FROM: (\w+)", re.M),
    "start_time": re.compile(r"^START TIME: (.+)$", re.M),
    "timeline": re.compile(r"^START TIMELINE: (\d+)", re.M),
}


def parse_backup_label(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, rx in _LABEL_RE.items():
        m = rx.search(text)
        if not m:
            raise SourceError(f"backup_label from pg_basebackup lacks {key.replace('_', ' ')}")
        out[key] = m.group(1)
        if key == "start_lsn":
            out["start_wal"] = m.group(2)
    out["timeline"] = int(out["timeline"])
    return out


def check_pg_manifest(data: bytes) -> dict[str, Any]:
    """PostgreSQL's backup manifest: parses, and its own checksum (SHA-256 of the text before it) holds."""
    try:
        body = json.loads(data)
        ranges = body["WAL-Ranges"]
        stated = body["Manifest-Checksum"]
    except (ValueError, KeyError, TypeError):
        raise SourceError("the backup manifest from pg_basebackup is not valid") from None
    cut = data.rfind(b'"Manifest-Checksum"')
    if cut < 0 or hashlib.sha256(data[:cut]).hexdigest() != stated:
        raise SourceError("the backup manifest from pg_basebackup fails its own checksum")
    return {"ranges": ranges, "checksum": stated, "files": len(body.get("Files", []))}


def confirm_wal(store: WalStore, timeline: int, start_lsn: int, stop_lsn: int, seg_size: int) -> list[str]:
    """Every segment of the backup's WAL range must be in our store (after a grace for archiving lag)."""
    first, last = wn.segno_of_lsn(start_lsn, seg_size), wn.segno_of_lsn(stop_lsn, seg_size)
    needed = [wn.segment_name(timeline, s, seg_size) for s in range(first, last + 1)]
    deadline = time.monotonic() + WAL_CONFIRM_SECONDS
    while True:
        have = {o.name for o in store.list(timeline) if o.kind == "segment"}
        missing = [n for n in needed if n not in have]
        if not missing:
            return needed
        if time.monotonic() > deadline:
            raise WalGap(
                f"WAL segment {missing[0]} of this base backup is not archived in {store.repo.storage.url} "
                f"(needed {needed[0]}..{needed[-1]}); the backup is not committed",
                hint="check archive_command and pg_stat_archiver on the server",
            )
        time.sleep(1.0)


def backup_postgres_base(
    repo: Repository,
    settings: Settings,
    target: PgTarget,
    *,
    label: str | None = None,
    checkpoint: str = "fast",
    wal_wait: float = 600.0,
) -> dict[str, Any]:
    """Take one physical base backup; returns the committed manifest body."""
    if checkpoint not in ("fast", "spread"):
        raise SourceError("--checkpoint must be fast or spread")
    t0 = time.perf_counter()
    facts = preflight(target)
    binaries = find_client_binaries(facts.major, ("pg_basebackup",))
    store = WalStore(repo, facts.system_id)
    seconds: dict[str, float] = {}
    with repo.begin(
        kind=KIND,
        labels={"name": label or f"pg-{facts.system_id}", "system_id": facts.system_id},
        source={"type": "postgres-physical", "system_id": facts.system_id},
        compression=settings.compression,
        level=settings.zstd_level_for(BASE_ZSTD_LEVEL),
        threads=settings.zstd_threads,
        chunk_size=settings.chunk_size,
    ) as backup:
        argv = [
            binaries.tool("pg_basebackup"),
            f"--dbname={target.conninfo()}",
            "--format=tar",
            "--pgdata=-",
            "--wal-method=none",
            f"--checkpoint={checkpoint}",
            f"--label=seedvault-{backup.backup_id}",
            "--manifest-checksums=CRC32C",
            "--no-password",
        ]
        child = ChildReader(argv, error=SourceError, extra_env=target.child_env())
        scanner = TarScanner(child, KEEP)
        watchdog = _Watchdog(child, scanner, wal_wait)
        try:
            stats = backup.write_object("base.tar", scanner)
        finally:
            watchdog.stop()
            child.close()
        if watchdog.fired:
            raise SourceError(
                f"pg_basebackup waited more than {wal_wait:.0f} s for the backup's WAL to be archived; aborted",
                hint="check archive_command and pg_stat_archiver on the server",
            )
        seconds["base"] = round(time.perf_counter() - t0, 3)
        manifest = scanner.manifest_bytes()
        label_text = scanner.captured.get("backup_label", b"").decode("utf-8", "replace")
        control = scanner.captured.get("global/pg_control", b"")
        scanner.close()
        if not scanner.ended or manifest is None or not label_text or len(control) < 8:
            raise SourceError("pg_basebackup's tar lacks backup_label, pg_control or backup_manifest")
        info = parse_backup_label(label_text)
        pgm = check_pg_manifest(manifest)
        sysid = str(wn.system_id_from_pg_control(control))
        if sysid != facts.system_id:
            raise SourceError(f"pg_control in the backup has system id {sysid}, the server said {facts.system_id}")
        ranges = pgm["ranges"]
        start_lsn = wn.parse_lsn(ranges[0]["Start-LSN"])
        stop_lsn = wn.parse_lsn(ranges[-1]["End-LSN"])
        if start_lsn != wn.parse_lsn(info["start_lsn"]) or int(ranges[0]["Timeline"]) != info["timeline"]:
            raise SourceError("backup_label and the backup manifest disagree on the start of the backup")
        stop_time = datetime.now(UTC)
        backup.write_object("pg-manifest", io.BytesIO(manifest))
        t1 = time.perf_counter()
        needed: list[str] = []
        for r in ranges:
            lo = max(start_lsn, wn.parse_lsn(r["Start-LSN"]))
            needed += confirm_wal(store, int(r["Timeline"]), lo, wn.parse_lsn(r["End-LSN"]), facts.wal_segment_size)
        seconds["confirm_wal"] = round(time.perf_counter() - t1, 3)
        backup.source = {
            "type": "postgres-physical",
            "system_id": facts.system_id,
            "timeline": info["timeline"],
            "stop_timeline": int(ranges[-1]["Timeline"]),
            "start_lsn": wn.format_lsn(start_lsn),
            "stop_lsn": wn.format_lsn(stop_lsn),
            "start_wal": needed[0],
            "stop_wal": needed[-1],
            "checkpoint_lsn": info["checkpoint_lsn"],
            "backup_from": info["backup_from"],
            "start_time": info["start_time"],
            "stop_time": stop_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "server_version_num": facts.version_num,
            "pg_major": facts.major,
            "wal_segment_size": facts.wal_segment_size,
            "data_checksums": facts.data_checksums,
            "pg_basebackup_version": binaries.version("pg_basebackup"),
            "pg_manifest_checksum": pgm["checksum"],
            "files": pgm["files"],
            "tablespaces": [],
            "raw_size": stats.raw_size,
        }
    seconds["total"] = round(time.perf_counter() - t0, 3)
    assert backup.body is not None
    return {**backup.body, "seconds": seconds}


class _Watchdog:
    """Kill pg_basebackup if, after its tar ended, it waits too long for WAL archiving."""

    def __init__(self, child: ChildReader, scanner: TarScanner, limit: float) -> None:
        import threading

        self.fired = False
        self._child, self._scanner, self._limit = child, scanner, limit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="basebackup-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        ended_at: float | None = None
        while not self._stop.wait(0.5):
            if self._scanner.ended and ended_at is None:
                ended_at = time.monotonic()
            if ended_at is not None and time.monotonic() - ended_at > self._limit:
                self.fired = True
                self._child.proc.kill()
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
