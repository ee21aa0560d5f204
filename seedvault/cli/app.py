"""The ``seedvault`` command: global options, then one sub-command per operation.

Configuration (options override environment, which overrides the TOML file named by SEEDVAULT_CONFIG):

\b
  SEEDVAULT_REPOSITORY       file:///path or s3://bucket/prefix
  SEEDVAULT_S3_ENDPOINT      S3 endpoint URL (MinIO, Ceph, ...); AWS when unset
  SEEDVAULT_KEY_FILE         file holding the base64 master key (seedvault key generate)
  SEEDVAULT_PASSPHRASE_FILE  file holding a passphrase (stretched with scrypt)
  SEEDVAULT_CONFIG           TOML file with the same settings in lower case
                             (also s3_region, s3_storage_class, s3_sse, s3_sse_kms_key_id,
                             s3_part_size, compression, zstd_level, zstd_threads, chunk_size,
                             cleanup_grace, s3_credentials_file, wal_state_dir,
                             wal_socket, catalog_cache, object_lock, object_lock_days and the
                             tables storage_class and prices: see 'seedvault usage'; retention: see
                             'seedvault prune --help')
S3 credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
shared config files, instance roles). Keys and passwords are never accepted as command-line values.
"""

from __future__ import annotations

import sys

import typer

from seedvault import __version__
from seedvault.cli import (
    audit_cmds,
    catalog_cmds,
    check_cmds,
    cost_cmds,
    drill_cmds,
    key_cmds,
    legacy_cmds,
    metrics_cmds,
    neo4j_cmds,
    pg_cmds,
    platform_cmds,
    prune_cmds,
    replicate_cmds,
    repo_cmds,
    status_cmds,
    wal_cmds,
)
from seedvault.cli.runtime import state

app = typer.Typer(
    name="seedvault",
    help=__doc__,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"seedvault {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def root(
    ctx: typer.Context,
    repository: str = typer.Option(None, "--repository", "-r", help="Repository URL [env SEEDVAULT_REPOSITORY]."),
    s3_endpoint: str = typer.Option(None, "--s3-endpoint", help="S3 endpoint URL [env SEEDVAULT_S3_ENDPOINT]."),
    key_file: str = typer.Option(None, "--key-file", help="Master key file [env SEEDVAULT_KEY_FILE]."),
    passphrase_file: str = typer.Option(
        None, "--passphrase-file", help="Passphrase file [env SEEDVAULT_PASSPHRASE_FILE]."
    ),
    config: str = typer.Option(None, "--config", help="TOML settings file [env SEEDVAULT_CONFIG]."),
    replica: bool = typer.Option(
        False, "--replica", help="Work on the second repository ([replica]) instead [env SEEDVAULT_USE_REPLICA=on]."
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Streaming, encrypted, tamper-evident backups for PostgreSQL/TimescaleDB and Neo4j."""
    st = state(ctx)
    st.overrides.update(
        {
            "repository": repository,
            "s3_endpoint": s3_endpoint,
            "key_file": key_file,
            "passphrase_file": passphrase_file,
            "config": config,
            "use_replica": "on" if replica else None,
        }
    )


assert neo4j_cmds and platform_cmds  # register backup/restore neo4j and platform on pg_cmds' sub-apps
repo_cmds.register(app)
prune_cmds.register(app)
replicate_cmds.register(app)
wal_cmds.register(app)
cost_cmds.register(app)
audit_cmds.register(app)
metrics_cmds.register(app)
status_cmds.register(app)
app.add_typer(key_cmds.app, name="key", help="Generate, rotate and retire master keys.")
app.add_typer(legacy_cmds.app, name="legacy", help="Read the old openssl-encrypted backup files.")
app.add_typer(pg_cmds.backup_app, name="backup", help="Back up a database (postgres, postgres-base, neo4j).")
app.add_typer(
    pg_cmds.restore_app, name="restore", help="Restore a database from a backup (postgres, postgres-pitr, neo4j)."
)
app.add_typer(catalog_cmds.app, name="catalog", help="The catalog of backups: status, rebuild.")
app.add_typer(check_cmds.app, name="check", help="Health checks for monitoring (wal-freshness).")
app.add_typer(drill_cmds.app, name="drill", help="DR drills into scratch targets: RTO and RPO measured, recorded.")


def main() -> None:
    app(prog_name="seedvault")


if __name__ == "__main__":
    main()
