"""``seedvault backup postgres`` and ``seedvault restore postgres``: no Prefect server needed.

Passwords never come from the command line: a DSN with a password is refused; use PGPASSFILE/~/.pgpass
or PGPASSWORD in the environment (handed to pg_dump/pg_restore only through theirs).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from seedvault.cli.runtime import handle_errors, print_json, progress_bar, state

backup_app = typer.Typer(no_args_is_help=True, help="Back up a database.")
restore_app = typer.Typer(no_args_is_help=True, help="Restore a database from a backup.")


@backup_app.command("postgres")
@handle_errors
def backup_postgres_cmd(
    ctx: typer.Context,
    dsn: str = typer.Option(..., "--dsn", help="postgresql://user@host:port/db (no password)."),
    label: str = typer.Option(None, "--label", help="Name for the backup (default: the database name)."),
    estimate_above: int = typer.Option(
        None, "--estimate-above", help="Record planner estimates instead of exact counts above this many rows."
    ),
    checksums: bool = typer.Option(False, "--checksums", help="Record a SHA-256 of every table's rows (PK order)."),
    no_globals: bool = typer.Option(False, "--no-globals", help="Skip pg_dumpall --globals-only."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Logical backup (pg_dump -Fc from an exported snapshot, counts in the same snapshot, plus globals)."""
    from seedvault.ops.postgres_backup import backup_postgres
    from seedvault.sources.postgres.connection import PgTarget
    from seedvault.sources.postgres.logical import LogicalOptions

    st = state(ctx)
    target = PgTarget.from_dsn(dsn)
    repo = st.repository(create=True)
    options = LogicalOptions(estimate_above=estimate_above, checksums=checksums, with_globals=not no_globals)
    with progress_bar(f"backup {target.dbname}") as progress:
        report = backup_postgres(repo, st.settings, target, options, label=label, progress=progress)
    summary = report.summary()
    if json_out:
        print_json(summary)
    else:
        sys.stdout.write(
            f"{summary['id']}  {summary['database']}: {summary['tables']} tables, {summary['total_rows']} rows, "
            f"{summary['raw_size']} bytes raw -> {summary['stored_size']} stored in {summary['seconds']['total']} s\n"
        )


@restore_app.command("postgres")
@handle_errors
def restore_postgres_cmd(
    ctx: typer.Context,
    backup_id: str = typer.Argument(..., help="Backup id (seedvault list)."),
    target_dsn: str = typer.Option(..., "--target-dsn", help="Database to create (or replace), no password."),
    replace: bool = typer.Option(False, "--replace", help="Replace an existing database, keeping a safety copy."),
    drop_previous: bool = typer.Option(
        False, "--drop-previous", help="With --replace: back up and verify the safety copy, then drop it."
    ),
    jobs: int = typer.Option(None, "--jobs", "-j", help="Parallel pg_restore (spools the archive locally)."),
    spool_dir: Path = typer.Option(
        None, "--spool-dir", help="Where --jobs spools (default: TMPDIR); its free space is checked first."
    ),
    with_globals: bool = typer.Option(False, "--with-globals", help="Apply roles/tablespaces first."),
    schema: list[str] = typer.Option(None, "--schema", help="Restore only this schema (repeatable)."),
    table: list[str] = typer.Option(
        None,
        "--table",
        help="Restore only this table [schema.]name (repeatable; names as they are, spaces and dots included;"
        ' quote the parts as in SQL where a dot is ambiguous: \'"a.b"."c"\').',
    ),
    into_existing: bool = typer.Option(False, "--into-existing", help="Selective restore into an existing scratch DB."),
    no_owner: bool = typer.Option(False, "--no-owner", help="Do not restore ownership and privileges."),
    no_checksums: bool = typer.Option(False, "--no-checksums", help="Skip content checksum comparison."),
    skip_space_check: bool = typer.Option(
        False,
        "--skip-space-check",
        help="Restore even if the free space checks fail or cannot be made (the server's data directory, the"
        " --jobs spool). A full data directory stops PostgreSQL.",
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Restore a logical backup into a new database (or --replace one), verifying every table's row count.

    Before it creates anything, the restore checks the free space of the server's data directory against the
    database's size at backup (for --table/--schema: those tables'), plus room for WAL and index builds (the
    largest of 20 %, that size up to max_wal_size, and 64 MiB), and refuses (exit 51, with both numbers) when
    the copy would not fit. The space is measured on this
    host when the server's data directory is here, else by running df on the server (a superuser or
    pg_execute_server_program role); when neither is possible the restore refuses unless --skip-space-check.
    """
    from seedvault.ops.postgres_restore import RestoreOptions, restore_postgres
    from seedvault.sources.postgres.connection import PgTarget

    st = state(ctx)
    target = PgTarget.from_dsn(target_dsn)
    repo = st.repository(fallback=True)
    opts = RestoreOptions(
        replace=replace,
        drop_previous=drop_previous,
        jobs=jobs,
        spool_dir=spool_dir,
        with_globals=with_globals,
        schemas=list(schema or []),
        tables=list(table or []),
        into_existing=into_existing,
        no_owner=no_owner,
        checksums=not no_checksums,
        skip_space_check=skip_space_check,
    )
    with progress_bar(f"restore {target.dbname}") as progress:
        report = restore_postgres(repo, backup_id, target, opts, progress=progress, settings=st.settings)
    if json_out:
        print_json(report.as_dict())
        return
    line = (
        f"restored {backup_id} into {report.database}: {report.tables_verified} tables, "
        f"{report.rows_verified} rows verified"
    )
    if report.checksums_verified:
        line += f", {report.checksums_verified} checksums"
    if report.tables_unverified:
        names = report.tables_unverified
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        line += f"; {len(names)} tables not verified (row counts were estimated at backup): {shown}"
    if report.safety_copy:
        line += f"; previous database kept as {report.safety_copy}"
    if report.safety_backup:
        line += f" (backed up as {report.safety_backup} and dropped)"
    sys.stdout.write(line + "\n")
    for note in report.notes:
        sys.stderr.write(f"note: {note}\n")


@backup_app.command("postgres-base")
@handle_errors
def backup_postgres_base_cmd(
    ctx: typer.Context,
    dsn: str = typer.Option(..., "--dsn", help="postgresql://user@host:port/db of a REPLICATION role (no password)."),
    label: str = typer.Option(None, "--label", help="Name for the backup (default: pg-<system id>)."),
    checkpoint: str = typer.Option("fast", "--checkpoint", help="fast or spread (pg_basebackup --checkpoint)."),
    wal_wait: float = typer.Option(600.0, "--wal-wait", help="Seconds to wait for the backup's WAL to be archived."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Physical base backup (pg_basebackup tar streamed through the engine; WAL must go to seedvault wal-push)."""
    from seedvault.ops.postgres_base import backup_postgres_base
    from seedvault.sources.postgres.connection import PgTarget

    st = state(ctx)
    target = PgTarget.from_dsn(dsn)
    body = backup_postgres_base(
        st.repository(create=True), st.settings, target, label=label, checkpoint=checkpoint, wal_wait=wal_wait
    )
    src = body["source"]
    summary = {
        "id": body["id"],
        "system_id": src["system_id"],
        "timeline": src["timeline"],
        "start_lsn": src["start_lsn"],
        "stop_lsn": src["stop_lsn"],
        "wal": [src["start_wal"], src["stop_wal"]],
        "raw_size": body["raw_size"],
        "stored_size": body["stored_size"],
        "seconds": body["seconds"],
    }
    if json_out:
        print_json(summary)
    else:
        sys.stdout.write(
            f"{summary['id']}  system {src['system_id']} timeline {src['timeline']}: "
            f"{src['start_lsn']}..{src['stop_lsn']}, "
            f"{body['raw_size']} bytes raw -> {body['stored_size']} stored in {body['seconds']['total']} s\n"
        )


@restore_app.command("postgres-pitr")
@handle_errors
def restore_postgres_pitr_cmd(
    ctx: typer.Context,
    data_dir: str = typer.Option(..., "--data-dir", help="New data directory (absent or empty)."),
    to_time: str = typer.Option(None, "--to-time", help="Recover up to this time (ISO 8601, UTC if no zone)."),
    to_lsn: str = typer.Option(None, "--to-lsn", help="Recover up to this LSN (e.g. 0/3000060)."),
    to_name: str = typer.Option(None, "--to-name", help="Recover up to this restore point (pg_create_restore_point)."),
    latest: bool = typer.Option(False, "--latest", help="Recover everything archived."),
    immediate: bool = typer.Option(False, "--immediate", help="Stop as soon as the base backup is consistent."),
    exclusive: bool = typer.Option(False, "--exclusive", help="Stop just before the target instead of after it."),
    port: int = typer.Option(None, "--port", help="Port of the recovered server (default: a free one)."),
    run_as: str = typer.Option(None, "--run-as", help="OS user running the server (default: postgres when root)."),
    backup_id: str = typer.Option(None, "--backup", help="Base backup to start from (default: newest that fits)."),
    system_id: str = typer.Option(None, "--system-id", help="Database system (when the repository holds several)."),
    timeline: int = typer.Option(None, "--timeline", help="Timeline to follow (default: the newest archived)."),
    restore_command: str = typer.Option(
        None, "--restore-command", help="restore_command for the server (default: from its archive_command)."
    ),
    archive_mode: str = typer.Option("preserve", "--archive-mode", help="preserve or off (for the restored server)."),
    stop: bool = typer.Option(False, "--stop", help="Stop the server after promotion."),
    keep_failed: bool = typer.Option(False, "--keep-failed", help="Keep the data directory if recovery fails."),
    read_ahead: int = typer.Option(
        4, "--read-ahead", min=0, max=64, help="Parallel WAL downloads ahead of replay (0: one wal-fetch per file)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report."),
) -> None:
    """Point-in-time recovery into a new data directory: plan (WAL continuity checked), lay out, verify, recover."""
    from seedvault.ops.postgres_pitr import parse_target, restore_pitr

    st = state(ctx)
    target = parse_target(
        to_time=to_time, to_lsn=to_lsn, to_name=to_name, latest=latest, immediate=immediate, exclusive=exclusive
    )
    report = restore_pitr(
        st.repository(fallback=True),
        target,
        data_dir,
        port=port,
        run_as=run_as,
        backup_id=backup_id,
        system_id=system_id,
        timeline=timeline,
        restore_command=restore_command,
        archive_mode=archive_mode,
        stop_after=stop,
        keep_failed=keep_failed,
        read_ahead=read_ahead,
    )
    if json_out:
        print_json(report.as_dict())
    else:
        state_word = "running" if report.running else "stopped"
        sys.stdout.write(
            f"recovered {report.data_dir} from backup {report.plan['backup_id']}: timeline {report.timeline}, "
            f"LSN {report.lsn}, {report.stop_reason or 'end of archived WAL'}; server {state_word} on port "
            f"{report.port}\n"
        )
