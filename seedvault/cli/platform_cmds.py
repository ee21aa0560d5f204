"""``seedvault backup platform`` and ``seedvault restore platform``: one recovery point for Neo4j + PostgreSQL.

For when Prefect itself is down: the same engine calls as the ``backup-platform`` and ``restore-platform``
flows. The Neo4j options are those of ``backup neo4j``; PostgreSQL is a DSN without a password (PGPASSFILE,
PGPASSWORD) of the primary whose ``archive_command`` runs ``seedvault wal-push`` into this repository.
"""

from __future__ import annotations

import sys

import typer

from seedvault.cli.neo4j_cmds import (
    _CONF,
    _DB,
    _EDITION,
    _HOME,
    _PREFIX,
    _PWFILE,
    _STAGE,
    _START,
    _STOP,
    _URI,
    _USER,
    _job,
)
from seedvault.cli.pg_cmds import backup_app, restore_app
from seedvault.cli.runtime import handle_errors, print_json, state


@backup_app.command("platform")
@handle_errors
def backup_platform_cmd(
    ctx: typer.Context,
    pg_dsn: str = typer.Option(..., "--pg-dsn", help="postgresql://user@host:port/db of the primary (no password)."),
    database: str = _DB,
    uri: str = _URI,
    user: str = _USER,
    password_file: str = _PWFILE,
    admin_prefix: str = _PREFIX,
    neo4j_home: str = _HOME,
    neo4j_conf: str = _CONF,
    staging_dir: str = _STAGE,
    stop_command: str = _STOP,
    start_command: str = _START,
    edition: str = _EDITION,
    mode: str = typer.Option("dump", "--mode", help="Neo4j side: dump (offline), online (Enterprise), export."),
    backup_type: str = typer.Option("FULL", "--type", help="Online backups: FULL, DIFF or AUTO."),
    backup_from: str = typer.Option(None, "--from", help="Online backups: HOST:PORT of the backup server."),
    writes_stopped: bool = typer.Option(
        False, "--writes-stopped", help="Export mode only: the applications' writes are stopped (else refused)."
    ),
    no_checksums: bool = typer.Option(
        False, "--no-checksums", help="Record row counts only, not per-table SHA-256 (faster on large tables)."
    ),
    wal_wait: float = typer.Option(300.0, "--wal-wait", help="Seconds to wait for the restore point's WAL."),
    label: str = typer.Option(None, "--label", help="Name of the group (default: platform)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Group backup: Neo4j backup + PostgreSQL restore point at the graph's moment, committed as one group."""
    from seedvault.ops.platform import backup_platform
    from seedvault.sources.postgres.connection import PgTarget

    st = state(ctx)
    pg = PgTarget.from_dsn(pg_dsn)
    job = _job(database, uri, user, password_file, admin_prefix, neo4j_home, neo4j_conf, staging_dir,
               stop_command, start_command, edition, backup_from)  # fmt: skip
    report = backup_platform(st.repository(create=True), st.settings, job, pg, mode=mode, backup_type=backup_type,
                             label=label, writes_stopped=writes_stopped, checksums=not no_checksums,
                             wal_wait=wal_wait)  # fmt: skip
    summary = report.summary()
    if json_out:
        print_json(summary)
    else:
        rp = summary["restore_point"]
        sys.stdout.write(
            f"{summary['id']}  platform group: neo4j {summary['neo4j_backup']} ({summary['neo4j_mode']}), "
            f"postgres restore point {rp['name']} at {rp['lsn']} (timeline {rp['timeline']}, {rp['time']}) on base "
            f"backup {summary['base_backup']}; {summary['tables']} tables, {summary['rows']} rows recorded; "
            f"skew {summary['skew_seconds']:.3f} s (bound {summary['skew_bound_seconds']:.3f} s)\n"
        )


@restore_app.command("platform")
@handle_errors
def restore_platform_cmd(
    ctx: typer.Context,
    group_id: str = typer.Argument(None, help="Group to restore (default: the newest complete one)."),
    data_dir: str = typer.Option(..., "--data-dir", help="New PostgreSQL data directory (absent or empty)."),
    group_label: str = typer.Option(None, "--label", help="Newest complete group of this name (no GROUP given)."),
    port: int = typer.Option(None, "--port", help="Port of the recovered PostgreSQL (default: a free one)."),
    run_as: str = typer.Option(None, "--run-as", help="OS user running PostgreSQL (default: postgres when root)."),
    restore_command: str = typer.Option(
        None, "--restore-command", help="restore_command for PostgreSQL (default: from its archive_command)."
    ),
    archive_mode: str = typer.Option("preserve", "--archive-mode", help="preserve or off (recovered PostgreSQL)."),
    stop: bool = typer.Option(False, "--stop", help="Stop the recovered PostgreSQL after it is verified."),
    no_neo4j: bool = typer.Option(False, "--no-neo4j", help="Recover PostgreSQL only; the graph is not restored."),
    database: str = _DB,
    uri: str = _URI,
    user: str = _USER,
    password_file: str = _PWFILE,
    admin_prefix: str = _PREFIX,
    neo4j_home: str = _HOME,
    neo4j_conf: str = _CONF,
    staging_dir: str = _STAGE,
    stop_command: str = _STOP,
    start_command: str = _START,
    edition: str = _EDITION,
    no_safety_copy: bool = typer.Option(
        False, "--no-safety-copy", help="Do not dump the current Neo4j database first (lost if the restore fails)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report."),
) -> None:
    """Both stores to one group's moment: PostgreSQL by PITR to its restore point, Neo4j from its member."""
    from seedvault.ops.platform import restore_platform

    st = state(ctx)
    job = None if no_neo4j else _job(database, uri, user, password_file, admin_prefix, neo4j_home, neo4j_conf,
                                     staging_dir, stop_command, start_command, edition)  # fmt: skip
    repo = st.repository(fallback=True)
    report = restore_platform(repo, st.settings, job, data_dir, group_id=group_id, label=group_label,
                              port=port, run_as=run_as, restore_command=restore_command, archive_mode=archive_mode,
                              safety_copy=not no_safety_copy, stop_after=stop)  # fmt: skip
    if json_out:
        print_json(report.as_dict())
        return
    pg, m = report.postgres, report.moments
    v = pg["verified"]
    if job is None:
        graph = "not restored (--no-neo4j)"
    else:
        graph = "counts verified" if report.neo4j.get("counts") is not None else "loaded (no counts recorded)"
    safety = f", previous graph kept as backup {report.neo4j['safety_copy']}" if report.neo4j.get("safety_copy") else ""
    sys.stdout.write(
        f"restored group {report.group_id}: postgres {pg['data_dir']} (port {pg['port']}) recovered to restore point "
        f"at {m['postgres_lsn']} ({m['postgres']}), {v['tables']} tables / {v['rows']} rows / {v['checksums']} "
        f"checksums verified; neo4j {graph}{safety}; skew {m['skew_seconds']:.3f} s "
        f"(bound {m['skew_bound_seconds']:.3f} s)\n"
    )
