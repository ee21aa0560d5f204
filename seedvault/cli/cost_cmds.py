"""Storage-cost commands: ``usage`` (bytes and estimated cost) and ``lifecycle`` (an S3 lifecycle configuration)."""

from __future__ import annotations

import json
import sys

import typer

from seedvault.cli.runtime import handle_errors, print_json, state
from seedvault.errors import UsageError
from seedvault.ops.lifecycle import lifecycle_rules
from seedvault.ops.usage import NO_CLASS, Tally, usage
from seedvault.units import human_bytes


def _row(name: str, tally: Tally, priced: bool) -> str:
    cost = f"{tally.usd_month:10.4f}" if priced else f"{'-':>10}"
    return f"  {name:<32} {tally.objects:>8} {human_bytes(tally.bytes):>10} {cost}\n"


@handle_errors
def usage_cmd(ctx: typer.Context, json_out: bool = typer.Option(False, "--json", help="Print a JSON report.")) -> None:
    """Bytes per backup kind, label and WAL system, with an ESTIMATED monthly cost.

    Labels are the backups' name label (--label). The cost is an ESTIMATE: stored bytes times the price per
    GB-month (GB = 2^30 bytes) of each object's storage class, from the 'prices' settings table (defaults:
    AWS us-east-1 list prices, e.g. STANDARD 0.023, STANDARD_IA 0.0125, GLACIER_IR 0.004 USD), counting
    S3's 128 KiB minimum per object in the IA classes.
    Requests, retrieval, transfer, early-deletion fees and old versions are not included: check the bill.
    One listing of the repository plus one manifest read per backup (authenticated when a key is set).
    """
    st = state(ctx)
    repo = st.repository(key=False)
    report = usage(repo, st.settings.prices)
    if json_out:
        print_json(report.as_dict())
        return
    priced = NO_CLASS not in report.classes or len(report.classes) > 1
    total = report.total
    cost = f"estimated {total.usd_month:.4f} USD/month" if priced else "no storage classes, so no cost estimate"
    out = sys.stdout
    out.write(f"repository {report.repository}: {total.objects} objects, {human_bytes(total.bytes)}, {cost}\n")
    out.write(f"  {'':<32} {'objects':>8} {'bytes':>10} {'USD/month':>10}\n")
    rest = {
        "incomplete backups (cleanup)": report.incomplete,
        "unreadable backups": report.unreadable,
        "config, leases, catalog, audit": report.other,
    }
    for title, rows in (
        ("by kind", report.kinds),
        ("by label", report.labels),
        ("WAL by system id", report.wal),
        ("outside backups and WAL", {k: v for k, v in rest.items() if v.objects}),
        ("by storage class", report.classes),
    ):
        if rows:
            out.write(f"{title}:\n")
            for name in sorted(rows):
                out.write(_row(name, rows[name], priced and name != NO_CLASS))
    unpriced = sorted(c for c in report.classes if c != NO_CLASS and c not in report.prices)
    if unpriced:
        out.write(f"no price for storage class {', '.join(unpriced)}: set it in the 'prices' table\n")
    if not report.authenticated:
        out.write("kinds and labels read from unauthenticated manifests (no key configured)\n")
    for problem in report.problems:
        out.write(f"unreadable: {problem}\n")
    out.write("costs are estimates from list prices (see 'seedvault usage --help')\n")


@handle_errors
def lifecycle_cmd(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print only the JSON configuration (for a file)."),
) -> None:
    """Print an S3 lifecycle configuration (JSON) consistent with the settings; never expires backups.

    Apply it with 'aws s3api put-bucket-lifecycle-configuration --bucket B --lifecycle-configuration
    file://lifecycle.json'. It aborts incomplete multipart uploads after cleanup_grace (at least a day),
    moves WAL (and, where no override conflicts, backups) to their configured storage class, and expires
    noncurrent versions
    object_lock_days + 7 days after a delete. It NEVER expires current objects: 'seedvault prune' decides what
    may go (retention policy, PITR window, pins, DIFF chains, verified backups); an age-based expiry would
    delete what a kept backup or the PITR window needs. Applying it replaces the bucket's whole lifecycle
    configuration: merge in any rules the bucket already has. Nothing is sent to the bucket.
    """
    from seedvault.storage.s3 import S3Storage

    st = state(ctx)
    storage = st.repository(key=False).storage
    if not isinstance(storage, S3Storage):
        raise UsageError(f"lifecycle rules are for s3:// repositories; {storage.url} is not one")
    config, notes = lifecycle_rules(st.settings, f"{storage.prefix}/" if storage.prefix else "")
    if not json_out:
        sys.stdout.write(f"# S3 lifecycle configuration for bucket {storage.bucket} ({storage.url})\n")
        for note in notes:
            sys.stdout.write(f"# - {note}\n")
        sys.stdout.write("# apply the JSON below (seedvault lifecycle --json > lifecycle.json) with aws s3api ...\n")
        sys.stdout.write(json.dumps(config, indent=2) + "\n")
        return
    print_json(config)


def register(app: typer.Typer) -> None:
    app.command("usage")(usage_cmd)
    app.command("lifecycle")(lifecycle_cmd)
