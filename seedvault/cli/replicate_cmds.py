"""``seedvault replicate``: copy backups and WAL to the second repository; ``--status``: what it lacks."""

from __future__ import annotations

import sys

import typer

from seedvault.cli.runtime import err, handle_errors, print_json, state
from seedvault.errors import ConfigError, ReplicationIncomplete, ReplicationLagging
from seedvault.retention import policies_of
from seedvault.units import human_bytes


@handle_errors
def replicate(
    ctx: typer.Context,
    to: str = typer.Option(
        None, "--to", help="Destination repository URL (default: [replica] repository); its other settings: [replica]."
    ),
    status: bool = typer.Option(False, "--status", help="Copy nothing: say what the destination lacks, and the lag."),
    no_wal: bool = typer.Option(False, "--no-wal", help="Backups only, no WAL files."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report."),
) -> None:
    """Copy every backup and WAL file the destination lacks, byte for byte, each verified on arrival.

    Key objects and data first, the manifest last: a half-copied backup is never listed at the destination; a
    rerun after any interruption converges. What the destination's own retention policy ([replica.retention])
    would delete is not copied; nothing at the destination is ever deleted by replication. Server-side copy
    when both ends are S3 on one endpoint with the same credentials, streaming otherwise.
    Exit 66 when a copy was wrong twice (its backup is not published there); --status exits 67 when the
    oldest thing lacking is older than [status] replication_max_lag (default 2h).
    """
    from seedvault.ops.replicate import replicate as run
    from seedvault.ops.replication_status import replication_status
    from seedvault.ops.status import StatusPolicy
    from seedvault.repository import Repository
    from seedvault.storage.open import open_storage

    st = state(ctx)
    settings = st.settings
    if settings.is_replica:
        raise ConfigError("--replica names the destination of replicate already: give --to, or leave --replica off")
    dst_settings = settings.replica_settings(to)
    if dst_settings is None:
        raise ConfigError("no destination: pass --to URL or configure [replica] repository")
    src = st.repository()
    dst = Repository(open_storage(dst_settings, create=True), dst_settings.key_source())
    dst.catalog_cache = dst_settings.catalog_cache  # type: ignore[attr-defined]
    policies = policies_of(dst_settings)
    if status:
        max_lag = StatusPolicy.from_settings(settings).replication_max_lag
        report = replication_status(src, dst, policies, max_lag=max_lag)
        if json_out:
            print_json(report.as_dict())
        else:
            sys.stdout.write(report.line() + "\n")
            for b in report.backups_lacking:
                sys.stdout.write(
                    f"  lacks backup {b['id']} {b['kind']} {b['label'] or '-'} ({human_bytes(b['bytes'])})\n"
                )
            for sid, w in report.wal_lacking.items():
                sys.stdout.write(f"  lacks {w['files']} WAL files of system {sid}: {w['first']} .. {w['last']}\n")
        if report.alerting:
            raise ReplicationLagging(report.line())
        return
    result = run(src, dst, policies, include_wal=not no_wal, progress=None)
    if json_out:
        print_json(result.as_dict())
    else:
        sys.stdout.write(
            f"replicated {len(result.copied_backups)} backups and {result.wal_copied} WAL files to "
            f"{result.destination} ({human_bytes(result.bytes_copied)} in {result.objects} objects, "
            f"{result.server_side} server-side); {result.present_backups} backups were there already\n"
        )
        if result.not_wanted:
            sys.stdout.write(f"  not copied: {len(result.not_wanted)} backups the destination's policy deletes\n")
        for line in result.retried:
            err(f"seedvault: warning: {line} arrived wrong and was copied again")
    if not result.ok:
        raise ReplicationIncomplete(
            f"{len(result.failed)} item(s) not replicated: {result.failed[0]}",
            hint="rerun 'seedvault replicate'; a copy wrong twice points at the destination's storage",
        )


def register(app: typer.Typer) -> None:
    app.command()(replicate)
