"""``seedvault backup neo4j`` and ``seedvault restore neo4j``: no Prefect server needed.

The Bolt password never comes from the command line: ``NEO4J_PASSWORD`` in the environment or
``--password-file``. Without ``--uri`` there is no Bolt connection: no counts are recorded or checked,
and the database can only be stopped/started with ``--stop-command``/``--start-command``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from seedvault.cli.pg_cmds import backup_app, restore_app
from seedvault.cli.runtime import handle_errors, print_json, state
from seedvault.errors import ConfigError

PASSWORD_ENV = "NEO4J_PASSWORD"


def _job(
    database: str,
    uri: str | None,
    user: str,
    password_file: str | None,
    prefix: str | None,
    neo4j_home: str | None,
    neo4j_conf: str | None,
    staging_dir: str | None,
    stop_command: str | None,
    start_command: str | None,
    edition: str | None,
    backup_from: str | None = None,
):
    from seedvault.ops.neo4j_backup import Neo4jJob
    from seedvault.sources.neo4j.admin import Admin, AdminConfig

    if edition not in (None, "community", "enterprise"):
        raise ConfigError("--edition must be community or enterprise")
    graph = None
    if uri:
        if "@" in uri.split("://", 1)[-1].split("/", 1)[0]:
            raise ConfigError("the Neo4j URI contains credentials; pass --user and NEO4J_PASSWORD/--password-file")
        password = _password(password_file)
        from seedvault.sources.neo4j.bolt import BoltGraph

        graph = BoltGraph(uri, user, password, database=database)
    cfg = AdminConfig.from_strings(
        prefix or os.environ.get("SEEDVAULT_NEO4J_PREFIX"),
        neo4j_home=neo4j_home or os.environ.get("NEO4J_HOME"),
        neo4j_conf=neo4j_conf or os.environ.get("NEO4J_CONF"),
        staging_dir=staging_dir,
        stop_command=stop_command,
        start_command=start_command,
    )
    return Neo4jJob(database, Admin(cfg), graph=graph, edition=edition, backup_from=backup_from)


def _password(path: str | None) -> str | None:
    """The Bolt password from the file or NEO4J_PASSWORD; None when neither (a server with auth off)."""
    if path:
        try:
            text = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the Neo4j password file {path}: {exc.strerror}") from None
        if not text or not text[0]:
            raise ConfigError(f"the Neo4j password file {path} is empty")
        return text[0]
    return os.environ.get(PASSWORD_ENV) or None


_DB = typer.Option("neo4j", "--database", help="Database name.")
_URI = typer.Option(None, "--uri", help="Bolt URI (neo4j://host:7687) for counts and STOP/START DATABASE.")
_USER = typer.Option("neo4j", "--user", help="Bolt user.")
_PWFILE = typer.Option(None, "--password-file", help=f"File with the Bolt password [env {PASSWORD_ENV}].")
_PREFIX = typer.Option(
    None, "--admin-prefix", help="Run neo4j-admin through e.g. 'docker exec -i CONTAINER' (-i is added when missing)."
)
_HOME = typer.Option(None, "--neo4j-home", help="NEO4J_HOME on the Neo4j side [env NEO4J_HOME].")
_CONF = typer.Option(None, "--neo4j-conf", help="NEO4J_CONF on the Neo4j side [env NEO4J_CONF].")
_STAGE = typer.Option(None, "--staging-dir", help="Parent of staging directories on the Neo4j side (/tmp).")
_STOP = typer.Option(None, "--stop-command", help="Command stopping the database (Community dumps).")
_START = typer.Option(None, "--start-command", help="Command starting it again.")
_EDITION = typer.Option(None, "--edition", help="community or enterprise (default: neo4j-admin --version).")


@backup_app.command("neo4j")
@handle_errors
def backup_neo4j_cmd(
    ctx: typer.Context,
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
    mode: str = typer.Option("dump", "--mode", help="dump (offline), online (Enterprise), export (Bolt)."),
    backup_type: str = typer.Option("FULL", "--type", help="Online backups: FULL, DIFF or AUTO."),
    backup_from: str = typer.Option(None, "--from", help="Online backups: HOST:PORT of the backup server."),
    staging: bool = typer.Option(False, "--staging", help="Dump to a staging file even where stdout works."),
    label: str = typer.Option(None, "--label", help="Name for the backup (default: neo4j-<database>)."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Back up one Neo4j database (dump, online FULL/DIFF, or Bolt export), counts recorded."""
    from seedvault.ops.neo4j_backup import backup_neo4j

    st = state(ctx)
    job = _job(database, uri, user, password_file, admin_prefix, neo4j_home, neo4j_conf, staging_dir,
               stop_command, start_command, edition, backup_from)  # fmt: skip
    report = backup_neo4j(st.repository(create=True), st.settings, job, mode=mode, backup_type=backup_type,
                          label=label, staging=staging)  # fmt: skip
    summary = report.summary()
    if json_out:
        print_json(summary)
    else:
        down = summary["downtime_seconds"]
        sys.stdout.write(
            f"{summary['id']}  neo4j {summary['database']} ({summary['mode']}"
            f"{', ' + summary['backup_type'] if summary['backup_type'] else ''}): {summary['raw_size']} bytes raw -> "
            f"{summary['stored_size']} stored{'' if down is None else f', downtime {down:.1f} s'}\n"
        )


@restore_app.command("neo4j")
@handle_errors
def restore_neo4j_cmd(
    ctx: typer.Context,
    backup_id: str = typer.Argument(..., help="Backup to restore (seedvault list)."),
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
    restore_until: str = typer.Option(None, "--restore-until", help="Online backups, 5.x: a time or transaction id."),
    no_safety_copy: bool = typer.Option(
        False, "--no-safety-copy", help="Do not dump the current database first (it is lost if the restore fails)."
    ),
    staging: bool = typer.Option(False, "--staging", help="Load from a staging file even where stdin works."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON report."),
) -> None:
    """Restore a Neo4j backup over a database, after a verified safety copy; counts verified."""
    from seedvault.ops.neo4j_restore import restore_neo4j

    st = state(ctx)
    job = _job(database, uri, user, password_file, admin_prefix, neo4j_home, neo4j_conf, staging_dir,
               stop_command, start_command, edition)  # fmt: skip
    report = restore_neo4j(st.repository(fallback=True), st.settings, backup_id, job, safety_copy=not no_safety_copy,
                           until=restore_until, staging=staging)  # fmt: skip
    if json_out:
        print_json(report.as_dict())
    else:
        safety = f"; previous database kept as backup {report.safety_copy}" if report.safety_copy else ""
        counts = "counts verified" if report.counts is not None else "counts not checked (no --uri)"
        sys.stdout.write(f"restored backup {backup_id} into neo4j {database}: {counts}{safety}\n")
