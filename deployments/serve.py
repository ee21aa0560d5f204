"""Register and serve the scheduled deployments: ``python -m deployments.serve --repository R --key K --target T``.

``--neo4j-target N`` adds the nightly Neo4j backup; with ``--neo4j-incremental`` (Enterprise) that is an
online FULL and an online backup runs every 15 minutes. A Neo4j-only platform leaves ``--target`` out.

``serve`` needs no work pool: this process polls the Prefect API and runs the flows when due. On SIGTERM it
pauses its deployments' schedules (Prefect's default), so stopping it stops the schedules visibly.
``--register-only`` creates or updates the deployments and exits (for tests, or to inspect them in the UI);
``--automation`` also creates, for ``--notify-block``, the missed-run automations (one per scheduled backup
deployment: no completed run within its period plus a margin). Failures themselves are reported by the flows'
hooks only, so each failure sends one message.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from deployments.definitions import build


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m deployments.serve", description=__doc__.splitlines()[0])
    p.add_argument("--repository", required=True, help="name of the SeedvaultRepository block")
    p.add_argument("--key", required=True, help="name of the SeedvaultEncryptionKey block")
    p.add_argument("--target", help="name of the PostgresTarget block of the source server")
    p.add_argument("--database", help="database to back up (default: the target block's)")
    p.add_argument("--drill-target", help="PostgresTarget block of the server to drill on (default: --target)")
    p.add_argument(
        "--base-target", help="PostgresTarget block for base backups and the WAL freshness check (default: --target)"
    )
    p.add_argument("--no-wal", action="store_true", help="no base backup / freshness deployments (no WAL archiving)")
    p.add_argument("--neo4j-target", help="name of the Neo4jTarget block: adds the nightly Neo4j backup")
    p.add_argument("--neo4j-database", help="Neo4j database to back up (default: the Neo4j block's)")
    p.add_argument(
        "--neo4j-incremental",
        action="store_true",
        help="Enterprise: nightly online FULL, plus an online DIFF/AUTO backup every 15 minutes",
    )
    p.add_argument("--platform", action="store_true", help="daily platform group + the platform DR drill")
    p.add_argument("--neo4j-scratch-target", help="Neo4jTarget block of the drill's scratch Neo4j instance")
    p.add_argument("--neo4j-scratch-setup", help="command creating the scratch Neo4j instance")
    p.add_argument("--neo4j-scratch-teardown", help="command removing it")
    p.add_argument("--scratch-parent", help="parent of the drill's scratch data directories")
    p.add_argument("--replica", help="SeedvaultRepository block of the second repository: hourly replicate + fallback")
    p.add_argument("--notify-block", help="<block-type-slug>/<name> of a notification block for failures")
    p.add_argument("--automation", action="store_true", help="create the missed-run automations for --notify-block")
    p.add_argument("--register-only", action="store_true", help="create/update the deployments, do not serve")
    args = p.parse_args(argv)
    if args.target is None and args.neo4j_target is None:
        p.error("give --target (PostgreSQL), --neo4j-target, or both")
    if args.neo4j_incremental and args.neo4j_target is None:
        p.error("--neo4j-incremental needs --neo4j-target")
    if args.platform and (args.target is None or args.neo4j_target is None or args.no_wal):
        p.error("--platform needs --target (archiving its WAL) and --neo4j-target")
    return args


def main(argv: Sequence[str] | None = None) -> list[object]:
    args = parse_args(argv)
    deployments = build(
        args.repository,
        args.key,
        args.target,
        database=args.database,
        drill_target=args.drill_target,
        base_target=args.base_target,
        notify_block=args.notify_block,
        wal=not args.no_wal,
        neo4j_target=args.neo4j_target,
        neo4j_database=args.neo4j_database,
        neo4j_incremental=args.neo4j_incremental,
        platform=args.platform,
        neo4j_scratch_target=args.neo4j_scratch_target,
        neo4j_scratch_setup=args.neo4j_scratch_setup,
        neo4j_scratch_teardown=args.neo4j_scratch_teardown,
        scratch_parent=args.scratch_parent,
        replica=args.replica,
    )
    if args.automation and not args.notify_block:
        raise SystemExit("--automation needs --notify-block")
    if args.register_only or args.automation:
        ids = [d.apply() for d in deployments]  # the automations name deployments that must exist first
        if args.automation:
            from deployments.setup import register_missed_run_automations

            register_missed_run_automations(args.notify_block, deployments)
        if args.register_only:
            return ids
    from prefect import serve

    serve(*deployments)
    return []


if __name__ == "__main__":
    main()
