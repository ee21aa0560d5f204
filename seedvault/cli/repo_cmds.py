"""Repository commands: init, put, get, list, show, verify, delete, cleanup."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from seedvault import process
from seedvault.cli.runtime import err, handle_errors, print_json, progress_bar, state
from seedvault.config import parse_duration
from seedvault.errors import BackupNotFound, SourceError, ToolMissing, UsageError, VerificationFailed
from seedvault.ops import transfer
from seedvault.ops.cleanup import cleanup as cleanup_op
from seedvault.ops.verify import Sample, verify_all, verify_backup, verify_latest
from seedvault.units import human_bytes

if TYPE_CHECKING:
    from seedvault.audit import AuditState
    from seedvault.repository import Repository


@handle_errors
def init(ctx: typer.Context) -> None:
    """Create the repository (done automatically by the first backup)."""
    repo = state(ctx).repository(key=False, create=True)
    config = repo.config(create=True)
    sys.stdout.write(f"repository {repo.storage.url} (id {config['id']})\n")


@handle_errors
def put(
    ctx: typer.Context,
    command: list[str] = typer.Argument(
        None,
        metavar="[-- COMMAND [ARG...]]",
        help="Run COMMAND and protect its standard output; committed only if it exits 0 (e.g. -- pg_dump -Fc db).",
        show_default=False,
    ),
    label: str = typer.Option(..., "--label", "-l", help="Name of what is protected (e.g. orders-db)."),
    input: Path = typer.Option(None, "--input", "-i", help="Read this file instead of standard input."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Protect a byte stream as a new backup; prints its id.

    With '-- COMMAND ...' seedvault runs the producer itself and commits only when it exits 0: a dump that
    dies half-way fails the backup with the producer's last error line. From standard input (or --input)
    seedvault cannot know whether the producer succeeded: a truncated stream ends like a complete one.
    """
    repo = state(ctx).repository(create=True)
    settings = state(ctx).settings
    if command and input is not None:
        raise UsageError("give either --input FILE or '-- COMMAND', not both")
    if not command and input is None and sys.stdin.isatty():
        raise UsageError("nothing to back up: pipe data into 'seedvault put', use --input FILE or '-- COMMAND'")
    total = input.stat().st_size if input is not None and input.is_file() else None
    reader = _producer(command) if command else open(input, "rb") if input is not None else sys.stdin.buffer  # noqa: SIM115
    try:
        with progress_bar("put", total) as progress:
            body, stats = transfer.put(repo, reader, settings, label=label, progress=progress)
    finally:
        if command or input is not None:
            reader.close()
    if json_out:
        print_json(
            {
                "id": body["id"],
                "raw_size": body["raw_size"],
                "stored_size": body["stored_size"],
                "seconds": round(stats.seconds, 3),
                "steps": stats.times.as_dict(),
            }
        )
    else:
        sys.stdout.write(body["id"] + "\n")


def _producer(command: list[str]) -> process.ChildReader:
    """The producer's stdout; at its end the reader fails (SourceError, exit 50) if the producer failed."""
    try:
        return process.ChildReader(command, error=SourceError)
    except FileNotFoundError:
        raise ToolMissing(f"cannot run {command[0]!r}: not found") from None
    except PermissionError:
        raise ToolMissing(f"cannot run {command[0]!r}: permission denied") from None


@handle_errors
def get(
    ctx: typer.Context,
    backup_id: str = typer.Argument(..., help="Backup id (see 'seedvault list')."),
    output: Path = typer.Option(None, "--output", "-o", help="Write to this file (atomically) instead of stdout."),
    object_name: str = typer.Option(None, "--object", help="Object to restore when a backup has several."),
) -> None:
    """Restore a backup's data to standard output or a file; only authenticated bytes are written."""
    from seedvault import leases as lease_mod

    repo = state(ctx).repository(fallback=True)
    with lease_mod.shared(repo, "get", [backup_id]), progress_bar("get") as progress:
        target = output if output is not None else sys.stdout.buffer
        transfer.get(repo, backup_id, target, name=object_name, progress=progress)


@handle_errors
def list_(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="JSON for scripts."),
    no_verify: bool = typer.Option(False, "--no-verify", help="List without a key (manifests not authenticated)."),
    kind: str = typer.Option(None, "--kind", help="Only this kind (put, postgres-logical, ...)."),
    label: str = typer.Option(None, "--label", help="Only backups with this name label."),
    latest: bool = typer.Option(False, "--latest", help="Print only the id of the newest matching good backup."),
    index: bool = typer.Option(
        False, "--index", help="Answer from the catalog alone (fast; damage after a commit is not seen)."
    ),
) -> None:
    """List complete backups, oldest first (manifests authenticated with the configured key).

    A backup whose manifest or key object cannot be read is listed too, with the reason as its status (its
    kind and labels are unknown, so it is shown whatever --kind/--label say); the listing goes on and exits 0,
    with a warning on stderr: 'verify --all' is the check that fails. --latest picks the newest good backup
    and names on stderr the unreadable newer ones it skipped; it asks the catalog (seedvault.catalog: a few
    requests, whatever the number of backups) and reads only the answer's manifest and key object. Without
    --latest every manifest and key object is read (the inventory that shows damage); --index lists from the
    catalog instead, each body authenticated by the index, nothing else re-read.
    """
    from seedvault.catalog import Catalog

    repo = state(ctx).repository(key=not no_verify)
    catalog = Catalog(repo, authenticate=not no_verify)

    def matches(body: dict) -> bool:
        return (not kind or body.get("kind") == kind) and (not label or body["labels"].get("name") == label)

    if latest:
        entry, skipped = catalog.latest(matches)
        for bad in skipped:
            err(f"seedvault: warning: skipped backup {bad.backup_id}, which cannot be read: {bad.problem}")
        if entry is None:
            raise BackupNotFound(
                "no matching complete backup" + (f" that can be read ({len(skipped)} cannot)" if skipped else ""),
                hint="check --kind/--label and 'seedvault list'",
            )
        sys.stdout.write(entry.backup_id + "\n")
        return
    rows = []
    listed = catalog.entries() if index else repo.entries(authenticate=not no_verify)
    for entry in listed:
        if entry.body is not None and not matches(entry.body):
            continue
        b = entry.body or {}
        rows.append(
            {
                "id": entry.backup_id,
                "kind": b.get("kind"),
                "labels": b.get("labels", {}),
                "finished": b.get("finished"),
                "raw_size": b.get("raw_size"),
                "stored_size": b.get("stored_size"),
                "parent": b.get("parent"),
                "authenticated": entry.verified,
                "problem": entry.problem,
            }
        )
    audited = _audit_state(repo) if not no_verify else None
    for r in rows:
        r.update(audited.of(r["id"]) if audited is not None else {})
    damaged = [r["id"] for r in rows if r["problem"]]
    if damaged:
        more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        err(
            f"seedvault: warning: {len(damaged)} of {len(rows)} listed backups cannot be read "
            f"({', '.join(damaged[:3])}{more}); see their status, and run 'seedvault verify --all'"
        )
    if json_out:
        print_json(rows)
        return
    if not rows:
        err("no complete backups")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None)
    for col in ("id", "kind", "label", "finished", "raw", "stored", "status", "verified", "restore-tested", "pin"):
        table.add_column(col, no_wrap=col in ("id", "finished"))
    for r in rows:
        status = r["problem"] or ("ok" if r["authenticated"] else "unverified")
        table.add_row(
            r["id"],
            r["kind"] or "?",
            (r["labels"] or {}).get("name", ""),
            r["finished"] or "",
            human_bytes(r["raw_size"]),
            human_bytes(r["stored_size"]),
            status,
            *_audit_columns(r),
        )
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200).print(table)


@handle_errors
def show(
    ctx: typer.Context,
    backup_id: str = typer.Argument(...),
    json_out: bool = typer.Option(False, "--json", help="The authenticated manifest as JSON."),
) -> None:
    """Show one backup's authenticated manifest (from the catalog's cache when it holds it)."""
    from seedvault.catalog import Catalog

    repo = state(ctx).repository()
    body = Catalog(repo).body(backup_id)
    body = {**body, "key_objects": repo.key_ids(backup_id)}
    audited = _audit_state(repo)
    body.update(audited.of(backup_id) if audited is not None else {})
    if json_out:
        print_json(body)
        return
    lines = [
        f"id          {body['id']}",
        f"kind        {body['kind']}",
        f"labels      {', '.join(f'{k}={v}' for k, v in body['labels'].items())}",
        f"started     {body['started']}",
        f"finished    {body['finished']}",
        f"parent      {body['parent'] or '-'}",
        f"sizes       raw {human_bytes(body['raw_size'])}, compressed {human_bytes(body['compressed_size'])}, "
        f"stored {human_bytes(body['stored_size'])}",
        f"cipher      {body['cipher']}, chunk {body['chunk_size']} B, compression {body['compression']['name']}",
        f"key         {body['key']['kind']} key {body['key']['key_id']}; wrapped for {', '.join(body['key_objects'])}",
    ]
    for o in body["objects"]:
        lines.append(
            f"object      {o['name']}: {human_bytes(o['raw_size'])} raw, {o['chunks']} chunks, sha256 {o['sha256']}"
        )
    lines += _source_lines(body.get("source"))
    if audited is not None:
        verified, tested, pinned = _audit_columns(body)
        lines += [f"verified    {verified}", f"restore-tested {tested}", f"pin         {pinned}"]
    sys.stdout.write("\n".join(lines) + "\n")


def _audit_state(repo: Repository) -> AuditState | None:
    """The audit log's state for list/show; a broken chain or an unreadable log is a warning, not a failure."""
    from seedvault import audit

    found, why = audit.state_or_empty(repo, full=False)  # new events only: list/show stay cheap
    if why is not None:
        if "no repository secret yet" not in why:
            err(f"seedvault: warning: the audit log cannot be read ({why}); last verified and pins not shown")
        return None
    if found.problems:
        err(
            f"seedvault: warning: the audit log is not intact ({len(found.problems)} problem(s), first: "
            f"{found.problems[0]}); shown from its authentic events only: run 'seedvault audit'"
        )
    return found


def _audit_columns(row: dict) -> tuple[str, str, str]:
    """verified, restore-tested, pin: "2026-12-01T10:00:00Z ok" / "... FAILED" / "-"."""

    def outcome(value: dict | None) -> str:
        return f"{value['time']} {'ok' if value['ok'] else 'FAILED'}" if value else "-"

    pin = row.get("pin")
    pinned = f"{pin['by']}: {pin['reason']}" + (f" (until {pin['until']})" if pin["until"] else "") if pin else "-"
    return outcome(row.get("last_verified")), outcome(row.get("last_restore_tested")), pinned


def _source_lines(source: object) -> list[str]:
    """What a database backup recorded of its source: server, extensions, hypertables, tables and counts."""
    if not isinstance(source, dict) or "server_version" not in source:
        return []
    lines = [
        f"server      PostgreSQL {source['server_version']}, database {source.get('database', '?')}"
        f" ({human_bytes(int(source.get('database_size', 0)))})",
        f"extensions  {', '.join(f'{k} {v}' for k, v in (source.get('extensions') or {}).items()) or '-'}",
    ]
    timescale = source.get("timescaledb") or {}
    for h in timescale.get("hypertables", []):
        compressed = f", {h['compressed_chunks']} compressed" if "compressed_chunks" in h else ""
        lines.append(f"hypertable  {h['schema']}.{h['table']}: {h['chunks']} chunks{compressed}")
    if timescale.get("jobs"):
        lines.append(f"jobs        {len(timescale['jobs'])} TimescaleDB jobs and policies")
    tables = source.get("tables", [])
    lines.append(f"tables      {len(tables)}, {source.get('total_rows', 0)} rows")
    for t in tables:
        flags = [f for f in ("hypertable", "partitioned", "estimated") if t.get(f)] + (
            ["checksum"] if t.get("sha256") else []
        )
        lines.append(f"  {t['schema']}.{t['name']}: {t['rows']} rows" + (f" ({', '.join(flags)})" if flags else ""))
    return lines


@handle_errors
def verify(
    ctx: typer.Context,
    backup_id: str = typer.Argument(
        None, help="Backup id, or 'wal' for the WAL archive; omit with --all, --latest or --sample."
    ),
    all_: bool = typer.Option(False, "--all", help="Verify every complete backup."),
    latest: bool = typer.Option(False, "--latest", help="Verify the newest readable backup of each (kind, label)."),
    sample: int = typer.Option(
        None,
        "--sample",
        metavar="P",
        help="Read a rotating P percent slice (1-100) of all backups' data objects; all manifests checked.",
    ),
    sample_group: int = typer.Option(
        None, "--sample-group", metavar="K", help="With --sample: read slice K (1..ceil(100/P)) instead of today's."
    ),
    system_id: str = typer.Option(None, "--system-id", help="With 'wal': only this database system's archive."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Read back and check every byte of a backup (or all): authentication, SHA-256, sizes.

    'verify wal' reads every archived WAL file from the oldest base backup's start to the newest segment, along
    each timeline's history, authenticating each; a missing or unreadable segment is named and exits 24.

    --latest checks the newest readable backup of each (kind, label). --sample P reads one of ceil(100/P)
    slices of all data objects (chosen by the UTC day, or --sample-group K), so every object is read within
    100/P daily runs. Everything in scope is checked; any failure exits 24 naming each bad backup.
    """
    if backup_id == "wal":
        if all_ or latest or sample is not None or sample_group is not None:
            raise UsageError("'verify wal' takes no --all, --latest or --sample")
        _verify_wal(ctx, system_id, json_out)
        return
    if system_id is not None:
        raise UsageError("--system-id goes with 'verify wal'")
    scopes = [name for name, on in (("a backup id", bool(backup_id)), ("--all", all_), ("--latest", latest)) if on]
    if sample is not None:
        scopes.append("--sample")
    if len(scopes) != 1:
        raise UsageError(
            "name one backup id, or use one of --all, --latest, --sample P"
            + (f" (got {' and '.join(scopes)})" if scopes else "")
        )
    if sample is not None and not 1 <= sample <= 100:
        raise UsageError(f"--sample takes a percentage from 1 to 100, not {sample}")
    if sample_group is not None and sample is None:
        raise UsageError("--sample-group needs --sample P")
    plan = Sample.make(sample, sample_group) if sample is not None else None
    if plan is not None and not 1 <= plan.group <= plan.groups:
        raise UsageError(f"--sample-group must be from 1 to {plan.groups} with --sample {sample}")
    repo = state(ctx).repository()
    unreadable: list[str] = []
    with progress_bar("verify") as progress:
        if latest:
            results, unreadable = verify_latest(repo, progress=progress)
        elif all_ or plan is not None:
            results = verify_all(repo, progress=progress, sample=plan)
        else:
            results = [verify_backup(repo, backup_id, progress=progress)]
    for bid in unreadable:
        err(f"seedvault: warning: skipped backup {bid}, which cannot be read (see 'seedvault verify --all')")
    bad = [r for r in results if not r.ok]
    objects, read = sum(r.objects for r in results), sum(r.raw_bytes for r in results)
    if json_out and (latest or plan is not None):
        print_json(
            {
                "scope": "latest" if latest else "sample",
                "sample": plan.as_dict() if plan is not None else None,
                "backups": [r.as_dict() for r in results],
                "skipped_unreadable": unreadable,
                "total": {
                    "backups": len(results),
                    "failed": len(bad),
                    "objects": objects,
                    "raw_bytes": read,
                    "skipped": sum(r.skipped for r in results),
                },
            }
        )
    elif json_out:
        print_json([r.as_dict() for r in results])
    else:
        for r in results:
            sys.stdout.write(
                f"{r.backup_id}: {'ok' if r.ok else 'FAILED'} ({r.objects} objects, {human_bytes(r.raw_bytes)})\n"
            )
        if plan is not None:
            sys.stdout.write(
                f"sample {plan.percent}%: slice {plan.group} of {plan.groups} read, {objects} objects "
                f"({human_bytes(read)}), {sum(r.skipped for r in results)} left for other slices\n"
            )
        if len(results) != 1 or plan is not None or latest:
            sys.stdout.write(
                f"total: {len(results) - len(bad)} of {len(results)} backups ok, {objects} objects, "
                f"{human_bytes(read)}\n"
            )
    if bad:
        named = "; ".join(f"{r.backup_id}: {r.problems[0]}" for r in bad)
        raise VerificationFailed(f"{len(bad)} of {len(results)} backups failed verification; {named}")


def _verify_wal(ctx: typer.Context, system_id: str | None, json_out: bool) -> None:
    from seedvault.ops.verify_wal import verify_wal

    repo = state(ctx).repository()
    with progress_bar("verify wal") as progress:
        reports = verify_wal(repo, system_id, progress=progress)
    if json_out:
        print_json([r.as_dict() for r in reports])
    else:
        for r in reports:
            span = f"{r.first} .. {r.last}" if r.first else "nothing"
            tl = ", ".join(str(t) for t in r.timelines) or "-"
            sys.stdout.write(
                f"system {r.system_id}: {'ok' if r.ok else 'FAILED'} ({r.files} files, {human_bytes(r.raw_bytes)}; "
                f"{span}; timelines {tl}; from base backup {r.base_backup or '-'})\n"
            )
            for p in r.problems:
                sys.stdout.write(f"  {p.name}: {p.problem}\n")
    problems = [p for r in reports for p in r.problems]
    if problems:
        named = "; ".join(f"{p.name}: {p.problem}" for p in problems[:10])
        more = f" and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise VerificationFailed(f"WAL archive verification found {len(problems)} problem(s): {named}{more}")


@handle_errors
def delete(
    ctx: typer.Context,
    backup_id: str = typer.Argument(...),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Delete one backup: its manifest first, then its data and key objects (audited).

    Refused for the parent of another backup, a member of a platform group, a backup a running operation holds a
    lease on, and a pinned one.
    """
    from seedvault.ops.delete import check_deletable, delete_backup

    repo = state(ctx).repository(key=False)
    check_deletable(repo, backup_id, lease_stale=state(ctx).settings.lease_stale_after())
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to delete without --yes when not on a terminal")
        typer.confirm(f"delete backup {backup_id}?", abort=True)
    _forget(repo, backup_id)
    delete_backup(repo, backup_id)
    sys.stdout.write(f"deleted {backup_id}\n")


def _forget(repo: Repository, backup_id: str) -> None:
    """The catalog's tombstone, before the manifest goes (without a key: a warning, readers still notice)."""
    from seedvault import catalog
    from seedvault.errors import SeedvaultError

    if repo.key_source is None:
        err(f"seedvault: warning: no key configured: the catalog keeps {backup_id} until a reader notices it is gone")
        return
    try:
        catalog.forget(repo, [backup_id])
    except SeedvaultError as exc:
        err(f"seedvault: warning: no catalog tombstone for {backup_id} ({exc.one_line()}); readers notice it is gone")


@handle_errors
def cleanup(
    ctx: typer.Context,
    grace: str = typer.Option(None, "--grace", help="Leave leftovers younger than this (default 24h)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only report what would be removed."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Remove leftovers of interrupted backups and abort stale multipart uploads (never a complete backup)."""
    st = state(ctx)
    repo = st.repository(key=False)
    seconds = parse_duration(grace or st.settings.cleanup_grace)
    report = cleanup_op(repo, grace_seconds=seconds, dry_run=dry_run, lease_stale=st.settings.lease_stale_after())
    if not dry_run:
        _repair_catalog(repo)
    if json_out:
        print_json(report.as_dict())
        return
    verb = "would remove" if dry_run else "removed"
    sys.stdout.write(
        f"{verb} {len(report.incomplete_backups)} incomplete backups ({len(report.objects_removed)} objects), "
        f"{len(report.partial_writes_aborted)} partial writes; kept {len(report.kept_young)} in grace period, "
        f"{len(report.kept_leased)} being written\n"
    )
    for line in report.kept_leased:
        sys.stdout.write(f"  kept {line}\n")
    for line in report.stale_leases:
        err(f"seedvault: warning: stale lease {line} is ignored (see 'seedvault leases')")
    for key in report.unreadable_leases:
        err(f"seedvault: warning: lease object {key} cannot be read and protects nothing")


def _repair_catalog(repo: Repository) -> None:
    """After a cleanup: a cold catalog read, which indexes what it finds missing (needs the key)."""
    from seedvault.catalog import Catalog
    from seedvault.errors import SeedvaultError

    if repo.key_source is None:
        return
    try:
        catalog = Catalog(repo, cache="off")
        catalog.entries()
    except SeedvaultError as exc:
        err(f"seedvault: warning: the catalog was not checked ({exc.one_line()}); run 'seedvault catalog rebuild'")
        return
    if catalog.stats.repaired:
        sys.stdout.write(f"catalog: indexed {len(catalog.stats.from_manifests)} backups that had no entry\n")


@handle_errors
def leases(
    ctx: typer.Context,
    remove_stale: bool = typer.Option(False, "--remove-stale", help="Delete the stale leases (never a live one)."),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Show the running operations' leases; a stale one (not refreshed for lease_stale) belongs to a dead process."""
    from seedvault import leases as lease_mod

    st = state(ctx)
    repo = st.repository(key=False)
    listing = lease_mod.read_leases(repo, stale_after=st.settings.lease_stale_after())
    removed = lease_mod.remove_stale(repo, listing) if remove_stale else []
    if json_out:
        print_json(
            {
                "live": [lease.as_dict() for lease in listing.live],
                "stale": [lease.as_dict() for lease in listing.stale],
                "unreadable": listing.unreadable,
                "removed": removed,
            }
        )
        return
    for label, group in (("live", listing.live), ("stale", listing.stale)):
        for lease in group:
            names = ", ".join(lease.backup_ids) or "-"
            refreshed = lease.modified.strftime("%Y-%m-%dT%H:%M:%SZ")
            sys.stdout.write(f"{label}: {lease.describe()}, since {lease.started}, refreshed {refreshed}: {names}\n")
    for key in listing.unreadable:
        sys.stdout.write(f"unreadable: {key}\n")
    sys.stdout.write(
        f"{len(listing.live)} live, {len(listing.stale)} stale"
        + (f", {len(removed)} stale removed" if remove_stale else "")
        + "\n"
    )


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(put)
    app.command()(get)
    app.command("list")(list_)
    app.command()(show)
    app.command()(verify)
    app.command()(delete)
    app.command()(cleanup)
    app.command()(leases)
