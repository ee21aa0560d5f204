"""``seedvault prune``: print the retention plan, every item with the rule that keeps or deletes it; --yes deletes."""

from __future__ import annotations

import sys

import typer

from seedvault.cli.runtime import handle_errors, print_json, state
from seedvault.ops import prune as prune_op
from seedvault.retention import policies_of
from seedvault.storagecost import lock_policy_conflict
from seedvault.units import human_bytes


@handle_errors
def prune(
    ctx: typer.Context,
    yes: bool = typer.Option(False, "--yes", help="Delete what the plan deletes (without it: print the plan only)."),
    show_wal: bool = typer.Option(False, "--wal", help="List every WAL file's decision (default: a summary)."),
    json_out: bool = typer.Option(False, "--json", help="The whole plan and outcome as JSON."),
) -> None:
    """Apply the retention policy ([retention] in the settings): keep_within, GFS counts, min_verified, pitr_window.

    Never deleted whatever the policy: pinned backups, anything under S3 Object Lock, parents of kept backups,
    WAL a kept base backup or the PITR window needs, history files, anything dated in the future, the newest
    verified backups and everything newer than the newest verified one, unreadable backups, and backups a
    running restore/verify/PITR holds a lease on. Manifests are deleted first, data after, so a crash leaves
    nothing listed that is half gone ('seedvault cleanup' then converges).
    """
    st = state(ctx)
    policies = policies_of(st.settings)
    repo = st.repository()
    report = prune_op.prune(
        repo,
        policies,
        execute=yes,
        state=prune_op.audit_state(repo),
        lease_stale=st.settings.lease_stale_after(),
        lock_conflict=lock_policy_conflict(
            st.settings.object_lock, st.settings.object_lock_days, policies.default.keep_within
        ),
    )
    if json_out:
        print_json(report.as_dict())
        return
    out = sys.stdout.write
    for d in report.plan.backups:
        item = d.item
        verdict = "keep  " if d.keep else "DELETE"
        out(f"{verdict} {d.name} {item.kind} {item.label or '-'}: {'; '.join(d.reasons)}\n")  # type: ignore[union-attr]
    wal_keep = [d for d in report.plan.wal if d.keep]
    wal_del = [d for d in report.plan.wal if not d.keep]
    if show_wal:
        for d in report.plan.wal:
            out(f"{'keep  ' if d.keep else 'DELETE'} WAL {d.item.name}: {'; '.join(d.reasons)}\n")  # type: ignore[union-attr]
    elif wal_del:
        names = sorted(d.item.name for d in wal_del)  # type: ignore[union-attr]
        out(f"DELETE {len(wal_del)} WAL files ({names[0]} .. {names[-1]}): {wal_del[0].reasons[0]}\n")
    for line in report.unreadable:
        out(f"keep   {line} (unreadable: never pruned; see 'seedvault verify')\n")
    for line in report.in_use:
        out(f"keep   {line} (in use)\n")
    for warning in report.plan.warnings:
        sys.stderr.write(f"seedvault: warning: {warning}\n")
    deleting = sum(1 for d in report.plan.backups if not d.keep)
    if report.executed:
        out(
            f"deleted {len(report.deleted_backups)} backups and {report.deleted_wal} WAL files, "
            f"freed {human_bytes(report.bytes_freed)}; kept {len(report.plan.backups) - len(report.deleted_backups)} "
            f"backups and {len(wal_keep)} WAL files\n"
        )
    elif deleting or wal_del:
        out(f"plan: delete {deleting} backups and {len(wal_del)} WAL files; nothing deleted (run with --yes)\n")
    else:
        n_backups, n_wal = len(report.plan.backups), len(report.plan.wal)
        out(f"nothing to delete: every one of {n_backups} backups and {n_wal} WAL files is kept\n")


def register(app: typer.Typer) -> None:
    app.command()(prune)
