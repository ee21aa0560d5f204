"""Audit-log commands: audit (print the log, check its chain), pin, unpin."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import typer

from seedvault import audit
from seedvault.cli.runtime import handle_errors, print_json, state
from seedvault.config import parse_duration
from seedvault.errors import ConfigError, UsageError
from seedvault.ops import pins


def parse_when(text: str, option: str, *, future: bool) -> datetime:
    """``2026-12-01``, ``2026-12-01T10:00[:00][Z]`` (UTC), or a duration (``7d``: ago, or ahead when ``future``)."""
    value = text.strip()
    for fmt in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(value.removesuffix("Z"), fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    try:
        seconds = parse_duration(value)
    except ConfigError:
        raise UsageError(
            f"{option} {text!r} is not a date: use 2026-12-01, 2026-12-01T10:00Z (UTC) or a duration like 7d"
        ) from None
    delta = timedelta(seconds=seconds)
    return datetime.now(UTC) + delta if future else datetime.now(UTC) - delta


@handle_errors
def audit_cmd(
    ctx: typer.Context,
    since: str = typer.Option(None, "--since", help="Only events from this UTC date/time on (or a duration: 7d)."),
    json_out: bool = typer.Option(False, "--json", help="Events and the chain's verdict as JSON."),
) -> None:
    """Print the audit log (one line per event: seq, time, who, operation, backup ids, result), then check it.

    Every event is authenticated (HMAC under the repository's audit key) and chained to the one before it by
    hash; the whole log is checked whatever --since says. An edited, forged, removed (also from the end, as
    far as this host saw it) or reordered event is named by its seq, and the command exits 24.
    """
    repo = state(ctx).repository()
    start = parse_when(since, "--since", future=False) if since else None
    report = audit.verify_chain(repo, since=start)
    if json_out:
        print_json(report.as_dict())
    else:
        for event in report.events:
            sys.stdout.write(event.line() + "\n")
        verdict = "intact" if report.ok else f"NOT INTACT, {len(report.problems)} problem(s)"
        sys.stdout.write(f"audit log: {report.last_seq} events, chain {verdict}\n")
        for problem in report.problems:
            sys.stdout.write(f"  {problem}\n")
    report.raise_if_broken()


@handle_errors
def pin(
    ctx: typer.Context,
    backup_id: str = typer.Argument(..., help="Backup id (see 'seedvault list')."),
    reason: str = typer.Option(None, "--reason", help="Why it is kept (recorded in the audit log; required)."),
    until: str = typer.Option(None, "--until", help="Keep it until this UTC date/time (or a duration: 90d)."),
) -> None:
    """Keep a backup whatever the retention policy (recorded in the audit log with who, why and until when)."""
    repo = state(ctx).repository()
    when = parse_when(until, "--until", future=True) if until else None
    event = pins.pin(repo, backup_id, reason, when)
    end = f" until {when:%Y-%m-%dT%H:%M:%SZ}" if when else ""
    sys.stdout.write(f"pinned {backup_id}{end} (audit seq {event.seq})\n")


@handle_errors
def unpin(
    ctx: typer.Context,
    backup_id: str = typer.Argument(..., help="Backup id."),
    reason: str = typer.Option(None, "--reason", help="Why the pin is removed (recorded; required)."),
) -> None:
    """Remove a backup's pin (recorded in the audit log)."""
    repo = state(ctx).repository()
    event = pins.unpin(repo, backup_id, reason)
    sys.stdout.write(f"unpinned {backup_id} (audit seq {event.seq})\n")


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_cmd)
    app.command()(pin)
    app.command()(unpin)
