"""``seedvault catalog ...``: the index of manifests (seedvault.catalog), its state and its repair."""

from __future__ import annotations

import sys

import typer

from seedvault.cli.runtime import err, handle_errors, print_json, state

app = typer.Typer(no_args_is_help=True, help="The catalog: the authenticated index of backups (status, rebuild).")


@app.command("rebuild")
@handle_errors
def rebuild_cmd(ctx: typer.Context, json_out: bool = typer.Option(False, "--json")) -> None:
    """Re-derive the catalog from the manifests (every one read and authenticated), replacing the index.

    Run it when 'catalog status' reports backups missing from the index or listed without a manifest, or
    after a warning that a catalog object is not trusted. Manifests are never touched.
    """
    from seedvault import catalog

    repo = state(ctx).repository()
    report = catalog.rebuild(repo)
    if json_out:
        print_json(report.as_dict())
    else:
        sys.stdout.write(
            f"catalog rebuilt: {report.indexed} backups indexed in {report.segment}, "
            f"{report.removed} older catalog objects removed\n"
        )
    for line in report.unreadable:
        err(f"seedvault: warning: not indexed, its manifest cannot be read: {line}")


@app.command("status")
@handle_errors
def status_cmd(ctx: typer.Context, json_out: bool = typer.Option(False, "--json")) -> None:
    """Compare the index with the manifests: entries, generation, loose objects, missing or extra backups."""
    from seedvault import catalog

    repo = state(ctx).repository()
    report = catalog.status(repo)
    if json_out:
        print_json(report)
        return
    sys.stdout.write(
        f"generation {report['generation']} ({report['segments']} segments), {report['loose_entries']} loose "
        f"entries, {report['tombstones']} tombstones; {report['indexed']} backups indexed, "
        f"{report['manifests']} manifests\n"
    )
    for label, key in (
        ("missing from the index", "missing_from_index"),
        ("listed without a manifest", "listed_without_manifest"),
        ("not trusted", "untrusted"),
        ("in flight (no manifest yet)", "in_flight"),
    ):
        for item in report[key]:
            sys.stdout.write(f"  {label}: {item}\n")
    if report["fallback"]:
        sys.stdout.write(f"  index not used: {report['fallback']}\n")
    if report["missing_from_index"] or report["listed_without_manifest"] or report["untrusted"]:
        err("seedvault: warning: the catalog differs from the manifests; run 'seedvault catalog rebuild'")
