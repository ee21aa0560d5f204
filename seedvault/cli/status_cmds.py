"""``seedvault status``: the status view of the repository, and a non-zero exit (65) while anything alerts.

Made for cron and monitoring without Prefect: exit 0 when nothing alerts, 65 (``StatusAlerting``) when
something does (every alert on stderr, one line each, and in the report); ``--json`` prints the whole report
on stdout in both cases. The Prefect flows publish the same view as the ``seedvault-status`` artifact.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import typer

from seedvault.cli.runtime import err, handle_errors, print_json, state
from seedvault.errors import UsageError


@handle_errors
def status_cmd(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print the JSON report (also when something alerts)."),
    at: str = typer.Option(None, "--at", hidden=True, help="Evaluate as of this UTC time (ISO 8601; for tests)."),
) -> None:
    """Per store and database: last good backup (age, size, trend), last verify, last drill (RTO, RPO against
    targets), WAL lag, repository bytes and estimated cost. Exit 65 when something alerts: stale-backup,
    size-anomaly, key-age, drill-failed, verify-failed, wal-stale (thresholds: the [status] settings table).
    """
    from seedvault.ops.status import compute_status
    from seedvault.ops.status_markdown import render_markdown

    now = None
    if at:
        try:
            now = datetime.fromisoformat(at.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"--at must be an ISO 8601 time, not {at!r}") from None
        now = now if now.tzinfo else now.replace(tzinfo=UTC)
    st = state(ctx)
    report = compute_status(st.repository(), st.settings, now=now)
    if json_out:
        print_json(report.as_dict())
    else:
        sys.stdout.write(render_markdown(report))
    for alert in report.alerts:
        err(f"alert: {alert.kind} {alert.subject}: {alert.message}")
    report.raise_for_alerts()


def register(app: typer.Typer) -> None:
    app.command("status")(status_cmd)
