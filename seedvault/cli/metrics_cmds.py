"""``seedvault metrics``: the repository's Prometheus metrics on stdout, into a textfile, or to a Pushgateway."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from seedvault.cli.runtime import err, handle_errors, state
from seedvault.errors import ConfigError


@handle_errors
def metrics_cmd(
    ctx: typer.Context,
    textfile: Path = typer.Option(
        None, "--textfile", help="Write the exposition to this file atomically (node_exporter's textfile collector)."
    ),
    push: str = typer.Option(
        None, "--push", metavar="URL", help="Push to this Pushgateway (job 'seedvault', grouped by store/database)."
    ),
) -> None:
    """Prometheus metrics of the repository, computed from the repository alone (no Prefect, no database).

    From the catalog (newest backup per store, database and kind: finish time, duration, stored bytes), the
    audit log (failed backups, verifications, drills and restore tests, RTO and RPO), one listing (bytes and
    the estimated monthly cost per part, the newest archived WAL file per system id). Without --textfile or
    --push the exposition goes to standard output; with either, one summary line goes to standard error.
    Cron example for node_exporter (--collector.textfile.directory=/var/lib/prometheus/node-exporter):
    'seedvault metrics --textfile /var/lib/prometheus/node-exporter/seedvault.prom'. Needs the key (the
    catalog and the audit log are authenticated). Metric names and labels: README "Metrics".
    """
    from seedvault import metrics

    if textfile is not None and not textfile.parent.is_dir():
        raise ConfigError(f"textfile directory {textfile.parent} does not exist")
    st = state(ctx)
    snap = metrics.collect(st.repository(), prices=st.settings.prices)
    if textfile is None and push is None:
        sys.stdout.buffer.write(metrics.exposition(snap))
        sys.stdout.flush()
        return
    if textfile is not None:
        try:
            metrics.write_textfile(snap, textfile)
        except OSError as exc:
            raise ConfigError(f"cannot write {textfile}: {exc.strerror or type(exc).__name__}") from None
        err(f"metrics: {len(snap.groups)} groups written to {textfile}")
    if push is not None:
        n = metrics.push(snap, push)
        err(f"metrics: {n} groups pushed to {metrics.safe_url(push)}")
    for problem in snap.problems[:5]:
        err(f"seedvault: warning: {problem}")


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics_cmd)
