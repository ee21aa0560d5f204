"""``seedvault check ...``: health checks for monitoring and schedulers, no Prefect server needed.

A check exits 0 when healthy and with its error's catalogued code otherwise (``wal-freshness``: 61
``WalStale`` when archiving fails or lags, 25 ``WalGap`` when the repository lacks archived WAL), so cron,
a Nagios-style probe or the Prefect flow can branch on the code alone. The reason is one line on stderr;
``--json`` also prints the whole report on stdout, healthy or not, for dashboards.
"""

from __future__ import annotations

import sys

import typer

from seedvault.cli.runtime import err, handle_errors, print_json, state

app = typer.Typer(no_args_is_help=True, help="Health checks for monitoring (exit 0 healthy).")


@app.command("wal-freshness")
@handle_errors
def wal_freshness_cmd(
    ctx: typer.Context,
    dsn: str = typer.Option(..., "--dsn", help="postgresql://user@host:port/db of the archiving server (no password)."),
    max_lag: float = typer.Option(
        300.0, "--max-lag", help="Seconds completed WAL may wait for archiving before it is an alarm."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the JSON report (also when the check fails)."),
) -> None:
    """Fail (exit 61/25) when the server's WAL archiving fails, lags or left a hole in the repository."""
    from seedvault.ops.wal_freshness import check_wal_freshness
    from seedvault.sources.postgres.connection import PgTarget

    st = state(ctx)
    target = PgTarget.from_dsn(dsn)
    report = check_wal_freshness(st.repository(), target, max_lag=max_lag)
    if json_out:
        print_json(report.as_dict())
    elif report.ok:
        sys.stdout.write(report.summary() + "\n")
    if report.ok:
        for note in report.notes:
            err(f"note: {note}")
    report.raise_for_problems()
