"""``seedvault drill platform``: the DR drill without Prefect (the ``dr-drill`` flow's platform mode, same engine).

Restores a platform group into scratch targets the drill creates itself (a PostgreSQL data directory under
``--scratch-parent``, and the Neo4j instance the ``--neo4j-scratch-setup`` command creates; the usual Neo4j
options describe that scratch instance), verifies both, measures RTO and RPO, removes the scratch targets and
records a ``drill`` event in the repository. ``--history`` prints the last 12 drills (their per-step seconds
are the expected durations in RUNBOOK.md's full-platform recovery); ``--cleanup-only`` removes what killed
drills left behind.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from seedvault.cli.neo4j_cmds import (
    _CONF,
    _DB,
    _EDITION,
    _HOME,
    _PREFIX,
    _PWFILE,
    _STAGE,
    _START,
    _STOP,
    _URI,
    _USER,
    _job,
)
from seedvault.cli.runtime import err, handle_errors, print_json, state
from seedvault.errors import DrillTargetMissed, UsageError

app = typer.Typer(no_args_is_help=True, help="DR drills: restore into scratch targets, verify, measure, remove.")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def history_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return ["no drill recorded in this repository yet"]
    out = []
    for r in rows:
        missed = f" missed {','.join(r['missed'])}" if r.get("missed") else ""
        out.append(
            f"{r['time']}  {r['result']:<6} group {r['group_id'] or '-'}  RTO {_fmt(r['rto_seconds'])} s"
            f" (target {_fmt(r['rto_target_seconds'])})  RPO {_fmt(r['rpo_seconds'])} s"
            f" (target {_fmt(r['rpo_target_seconds'])}){missed}" + (f"  error: {r['error']}" if r.get("error") else "")
        )
    steps = rows[-1].get("steps") or {}
    if steps:
        out.append("steps of the last drill (seconds):")
        out += [f"  {name:<24} {_fmt(sec)}" for name, sec in steps.items()]
    return out


@app.command("platform")
@handle_errors
def drill_platform_cmd(
    ctx: typer.Context,
    group_id: str = typer.Argument(None, help="Group to drill (default: the newest complete one)."),
    group_label: str = typer.Option(None, "--label", help="Only groups of this name."),
    random_within_days: float = typer.Option(
        None, "--random-within-days", help="Pick a random complete group made within this many days."
    ),
    seed: int = typer.Option(None, "--seed", help="Seed of the random pick (the same seed picks the same group)."),
    scratch_parent: str = typer.Option(
        "/var/tmp/seedvault-drill", "--scratch-parent", help="World-traversable parent of the scratch directories."
    ),
    rto_target: float = typer.Option(3600.0, "--rto-target", help="RTO target in seconds (1 h)."),
    rpo_target: float = typer.Option(900.0, "--rpo-target", help="RPO target in seconds (15 min)."),
    run_as: str = typer.Option(None, "--run-as", help="OS user running the scratch PostgreSQL."),
    no_neo4j: bool = typer.Option(False, "--no-neo4j", help="PostgreSQL only (the narrower drill)."),
    neo4j_setup: str = typer.Option(
        None, "--neo4j-scratch-setup", help="Command creating the scratch Neo4j instance (env SEEDVAULT_DRILL_ID/DIR)."
    ),
    neo4j_teardown: str = typer.Option(
        None, "--neo4j-scratch-teardown", help="Command removing it again (also for a killed drill's leftovers)."
    ),
    database: str = _DB,
    uri: str = _URI,
    user: str = _USER,
    password_file: str = _PWFILE,
    admin_prefix: str = _PREFIX,
    neo4j_home: str = _HOME,
    neo4j_conf: str = _CONF,
    staging_dir: str = _STAGE,
    stop_command: str = _STOP,
    start_command: str = _START,
    edition: str = _EDITION,
    history: bool = typer.Option(False, "--history", help="Print the last 12 drills (from the audit log) and exit."),
    cleanup_only: bool = typer.Option(False, "--cleanup-only", help="Only remove the leftovers of killed drills."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report."),
) -> None:
    """Drill a platform group: scratch PostgreSQL (PITR) + scratch Neo4j, verified, RTO/RPO, removed, recorded."""
    from seedvault.ops import platform_drill as pd

    st = state(ctx)
    if history and cleanup_only:
        raise UsageError("give --history or --cleanup-only, not both")
    if cleanup_only:
        removed, problems = pd.cleanup_only(scratch_parent)
        if json_out:
            print_json({"removed": removed, "problems": problems})
        else:
            sys.stdout.write(f"removed the leftovers of {len(removed)} killed drill(s){': ' if removed else ''}"
                             f"{', '.join(removed)}\n")  # fmt: skip
        if problems:
            raise DrillTargetMissed("; ".join(problems))
        return
    repo = st.repository(fallback=True)
    if history:
        rows = pd.history(repo)
        if json_out:
            print_json({"drills": rows})
        else:
            sys.stdout.write("\n".join(history_lines(rows)) + "\n")
        return
    job = None
    if not no_neo4j:
        job = _job(database, uri, user, password_file, admin_prefix, neo4j_home, neo4j_conf, staging_dir,
                   stop_command, start_command, edition)  # fmt: skip
    options = pd.DrillOptions(
        scratch_parent=scratch_parent, group_id=group_id, label=group_label, random_within_days=random_within_days,
        seed=seed, rto_target=rto_target, rpo_target=rpo_target, run_as=run_as, neo4j_setup=neo4j_setup,
        neo4j_teardown=neo4j_teardown,
    )  # fmt: skip
    report = pd.run_drill(repo, st.settings, job, options)
    _print(report, json_out)
    report.raise_for_result()  # after the event is recorded and the report printed: exit code of what failed


def _print(report: Any, json_out: bool) -> None:
    if json_out:
        print_json(report.as_dict())
        return
    rto, rpo = report.rto, report.rpo
    lines = [
        f"drill {report.drill_id} of group {report.group_id}: {report.result}",
        f"  RTO {_fmt(rto.get('seconds'))} s (target {_fmt(rto.get('target_seconds'))} s; postgres "
        f"{_fmt(rto.get('postgres_seconds'))} s, neo4j {_fmt(rto.get('neo4j_seconds'))} s)",
        f"  RPO {_fmt(rpo.get('seconds'))} s (target {_fmt(rpo.get('target_seconds'))} s; newest recovered commit "
        f"{rpo.get('newest_commit')}, group made {_fmt(rpo.get('group_seconds'))} s before the drill)",
    ]
    lines += [f"  {name:<24} {_fmt(sec)} s" for name, sec in report.steps.items()]
    if report.swept:
        lines.append(f"  removed leftovers of killed drills: {', '.join(report.swept)}")
    lines.append(f"  scratch removed: {'yes' if report.cleanup.get('removed') else 'NO'}")
    sys.stdout.write("\n".join(lines) + "\n")
    for problem in report.problems:
        err(f"seedvault: drill: {problem}")
