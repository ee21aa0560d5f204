"""One-command set-up: ``python -m deployments.setup --config seedvault-deploy.toml [--serve]``.

From one TOML file (secrets from the environment or files it names, never from the TOML itself) it

1. creates or updates the blocks: the repository (local or S3 through prefect-aws), the master key, the
   PostgreSQL and Neo4j targets, and a webhook notification block;
2. writes the files the database host needs for ``archive_command`` (``seedvault.toml``, the S3 credentials
   file, both mode 0600/0644 as fits) from the same source, so blocks and host can never disagree;
3. registers the deployments of :func:`deployments.definitions.build` for the stores the file configures
   (no ``[neo4j]``: no Neo4j deployment), on a process work pool (default) or, with ``--serve``, served by this
   process; a deployment that another mode registered is replaced, not patched, so switching between
   ``prefect deploy``/work pool and ``serve`` never leaves a work pool without a path behind;
4. with ``[notify]``, passes the webhook block to every deployment (the flows' hooks send the one message per
   failure and the "recovered" message; no failure automation is added on top, which would send a second one)
   and creates one proactive automation per scheduled backup deployment for the one alert no hook can send:
   the backup that did not happen (:data:`deployments.definitions.WATCHED`); automations of deployments no
   longer configured are deleted.

Running it again with the same file changes nothing but what the file changed (idempotent). ``--dry-run``
prints what it would do. ``--prefect-yaml PATH`` writes, instead, a ``prefect.yaml`` with exactly these deployments
(for ``prefect deploy --all``; nothing is created): ``deployments/prefect.yaml`` is that file for the example.
Example file: ``deployments/seedvault-deploy.example.toml``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seedvault.errors import ConfigError

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_POOL = "seedvault"


@dataclass
class Plan:
    """What the TOML file asks for, validated before anything is created."""

    raw: dict[str, Any]
    blocks: dict[str, str] = field(default_factory=dict)  # role -> block name
    work_pool: str | None = DEFAULT_POOL

    def section(self, name: str) -> dict[str, Any] | None:
        value = self.raw.get(name)
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"[{name}] must be a table")
        return value


def secret(table: dict[str, Any], name: str, where: str) -> str | None:
    """``<name>_env`` (an environment variable) or ``<name>_file`` (first line of a file); never the TOML itself."""
    if name in table:
        raise ConfigError(f"{where}.{name} is a secret: give {name}_env or {name}_file, not the value in the file")
    if env := table.get(f"{name}_env"):
        value = os.environ.get(str(env))
        if not value:
            raise ConfigError(f"{where}.{name}_env names {env}, which is not set")
        return value
    if path := table.get(f"{name}_file"):
        try:
            lines = Path(str(path)).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read {where}.{name}_file {path}: {exc.strerror}") from None
        if not lines or not lines[0].strip():
            raise ConfigError(f"{where}.{name}_file {path} is empty")
        return lines[0].strip()
    return None


def load_plan(path: Path) -> Plan:
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    plan = Plan(raw)
    for need in ("repository", "key"):
        if plan.section(need) is None:
            raise ConfigError(f"{path} has no [{need}] table")
    if plan.section("postgres") is None and plan.section("neo4j") is None:
        raise ConfigError(f"{path} configures no store: give [postgres], [neo4j] or both")
    prefect = plan.section("prefect") or {}
    plan.work_pool = prefect.get("work_pool", DEFAULT_POOL)
    for role, default in (("repository", "seedvault-repository"), ("key", "seedvault-key"),
                          ("postgres", "seedvault-postgres"), ("neo4j", "seedvault-neo4j"),
                          ("notify", "seedvault-notify"), ("replica", "seedvault-replica")):  # fmt: skip
        table = plan.section(role)
        if table is not None:
            plan.blocks[role] = str(table.get("block", default))
    return plan


# --- blocks -------------------------------------------------------------------------------------------------
def save_blocks(plan: Plan) -> dict[str, str]:
    """Create or update every block the file describes; returns role -> block name."""
    from blocks import Neo4jTarget, PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository

    for role in ("repository", "replica"):  # the replica: a second repository with its own credentials and policy
        if (table := plan.section(role)) is not None:
            _repository_block(SeedvaultRepository, table, role).save(plan.blocks[role], overwrite=True)
    key = plan.section("key") or {}
    value = secret(key, "value", "key")
    if value is None:
        raise ConfigError("[key] needs value_file (the master key file) or value_env")
    SeedvaultEncryptionKey(kind=str(key.get("kind", "raw")), value=value).save(plan.blocks["key"], overwrite=True)
    if (pg := plan.section("postgres")) is not None:
        fields = {k: pg[k] for k in ("host", "port", "database", "user", "sslmode") if k in pg}
        if "database" not in fields:
            raise ConfigError("[postgres] needs database")
        PostgresTarget(**fields, password=secret(pg, "password", "postgres")).save(plan.blocks["postgres"],
                                                                                   overwrite=True)  # fmt: skip
    if (n4 := plan.section("neo4j")) is not None:
        keys = ("uri", "user", "database", "command_prefix", "staging_dir", "stop_command", "start_command",
                "edition", "backup_from", "neo4j_home", "neo4j_conf")  # fmt: skip
        fields = {k: n4[k] for k in keys if k in n4 and k in Neo4jTarget.model_fields}
        Neo4jTarget(**fields, password=secret(n4, "password", "neo4j")).save(plan.blocks["neo4j"], overwrite=True)
    if (notify := plan.section("notify")) is not None:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        if "url" not in notify:
            raise ConfigError("[notify] needs url (the webhook receiving one message per failure)")
        CustomWebhookNotificationBlock(
            name="seedvault",
            url=str(notify["url"]),
            json_data={"subject": "{{subject}}", "text": "{{body}}"},
            allow_private_urls=True,
        ).save(plan.blocks["notify"], overwrite=True)
    return plan.blocks


REPOSITORY_KEYS = ("retention", "storage_class", "compression", "object_lock", "object_lock_days", "s3_storage_class",
                   "status", "pushgateway_url")  # fmt: skip


def _repository_block(cls: Any, table: dict[str, Any], where: str) -> Any:
    kwargs: dict[str, Any] = {k: table[k] for k in REPOSITORY_KEYS if k in table}
    if "local_path" in table:
        return cls(local_path=str(table["local_path"]), **kwargs)
    return cls(s3_bucket=_s3_bucket(table, where), **kwargs)


def _s3_bucket(repo: dict[str, Any], where: str = "repository") -> Any:
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    url = str(repo.get("url", ""))
    if not url.startswith("s3://"):
        raise ConfigError(f'[{where}] needs url = "s3://bucket/prefix" or local_path')
    bucket, _, prefix = url[len("s3://") :].partition("/")
    params = AwsClientParameters(endpoint_url=repo["s3_endpoint"]) if repo.get("s3_endpoint") else AwsClientParameters()
    creds = AwsCredentials(
        aws_access_key_id=repo.get("aws_access_key_id"),
        aws_secret_access_key=secret(repo, "aws_secret_access_key", where),
        region_name=repo.get("s3_region"),
        aws_client_parameters=params,
    )
    return S3Bucket(bucket_name=bucket, bucket_folder=prefix.rstrip("/"), credentials=creds)


# --- the database host's files --------------------------------------------------------------------------------
def write_host_files(plan: Plan) -> list[Path]:
    """``[archive] dir``: the seedvault.toml and S3 credentials file that ``archive_command`` reads on the host."""
    archive = plan.section("archive")
    if archive is None:
        return []
    repo, key = plan.section("repository") or {}, plan.section("key") or {}
    out = Path(str(archive["dir"]))
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    lines = _location_lines(repo, "repository", out / "aws-credentials", written)
    if not key.get("value_file"):
        raise ConfigError("[archive] needs [key] value_file: archive_command reads the key from a file")
    lines.append(f'key_file = "{key["value_file"]}"')
    if archive.get("wal_state_dir"):
        lines.append(f'wal_state_dir = "{archive["wal_state_dir"]}"')
    if (replica := plan.section("replica")) is not None:
        # What wal-fetch reads when the repository is unreachable, and what a PITR from the replica sets.
        lines += ["", "[replica]", *_location_lines(replica, "replica", out / "aws-credentials-replica", written)]
    config = out / "seedvault.toml"
    tmp = config.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, config)
    return [config, *written]


def _location_lines(table: dict[str, Any], where: str, creds: Path, written: list[Path]) -> list[str]:
    """The settings lines of one repository location (and its credentials file, written 0600)."""
    if "local_path" in table:
        return [f'repository = "file://{table["local_path"]}"']
    lines = [f'repository = "{table["url"]}"']
    for name in ("s3_endpoint", "s3_region"):
        if table.get(name):
            lines.append(f'{name} = "{table[name]}"')
    body = (f"[default]\naws_access_key_id = {table.get('aws_access_key_id', '')}\n"
            f"aws_secret_access_key = {secret(table, 'aws_secret_access_key', where) or ''}\n")  # fmt: skip
    _write_private(creds, body)
    written.append(creds)
    lines.append(f's3_credentials_file = "{creds}"')
    return lines


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


# --- deployments ----------------------------------------------------------------------------------------------
def deployments_for(plan: Plan) -> list[Any]:
    from deployments.definitions import build

    pg, n4 = plan.section("postgres"), plan.section("neo4j")
    platform = plan.section("platform") or {}
    notify = f"custom-webhook/{plan.blocks['notify']}" if "notify" in plan.blocks else None
    scratch = {k: platform.get(k) for k in ("neo4j_scratch_target", "neo4j_scratch_setup", "neo4j_scratch_teardown",
                                            "scratch_parent")}  # fmt: skip
    return build(
        plan.blocks["repository"],
        plan.blocks["key"],
        plan.blocks.get("postgres"),
        database=(pg or {}).get("database"),
        notify_block=notify,
        wal=bool((pg or {}).get("wal", True)) if pg is not None else False,
        neo4j_target=plan.blocks.get("neo4j"),
        neo4j_database=(n4 or {}).get("database"),
        neo4j_incremental=bool((n4 or {}).get("incremental", False)),
        platform=bool(platform.get("enabled", False)),
        replica=plan.blocks.get("replica"),
        **scratch,
    )


YAML_HEADER = """\
# GENERATED by `python -m deployments.setup --config {config} --prefect-yaml {out}`: do not edit by hand,
# change the TOML file (or deployments/definitions.py) and generate it again. It holds exactly the deployments of
# the stores that file configures (no [neo4j]: no Neo4j deployment), on demand ones included.
#
#   prefect work-pool create {pool} --type process
#   SEEDVAULT_HOME=/path/to/seedvault prefect --no-prompt deploy --all --prefect-file {out}
#   prefect worker start --pool {pool}        # with SEEDVAULT_NOTIFY_BLOCK set if no notify_block parameter
#
# Parameters are block NAMES (the set-up creates the blocks); no secret belongs in this file. Missed-run alerts
# are automations, which `prefect deploy` does not create: run the set-up (or deployments.serve --automation).
# Deployment names repeat across flows (backup-postgres/nightly-0200-utc, backup-neo4j/nightly-0200-utc): with
# --name, give FLOW/DEPLOYMENT.
"""


def prefect_yaml(plan: Plan, deployments: list[Any], *, config: str, out: str) -> str:
    """The ``prefect.yaml`` registering ``deployments`` on the plan's work pool (for ``prefect deploy --all``)."""
    import yaml

    pool = plan.work_pool or DEFAULT_POOL
    entries = []
    for d in deployments:
        path, func = d.entrypoint.split(":")
        if Path(path).is_absolute():
            path = str(Path(path).resolve().relative_to(PROJECT_DIR))
        params = {k: v for k, v in (d.parameters or {}).items() if v is not None}
        entry: dict[str, Any] = {"name": d.name, "entrypoint": f"{path}:{func}", "description": d.description,
                                 "tags": list(d.tags or []), "parameters": params}  # fmt: skip
        if d.concurrency_options is not None:
            strategy = d.concurrency_options.collision_strategy.value
            entry["concurrency_limit"] = {"limit": d.concurrency_limit, "collision_strategy": strategy}
        entry["work_pool"] = {"name": pool}
        entry["schedules"] = [{"cron": sch.schedule.cron, "timezone": sch.schedule.timezone, "active": sch.active}
                              for sch in d.schedules or []]  # fmt: skip
        entries.append(entry)
    spec = {"name": "seedvault", "prefect-version": "3.9.1",
            "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $SEEDVAULT_HOME }}"}}],
            "deployments": entries}  # fmt: skip
    body = yaml.safe_dump(spec, sort_keys=False, width=110, default_flow_style=False)
    return YAML_HEADER.format(config=config, out=out, pool=pool) + body


def register(plan: Plan, deployments: list[Any], *, serve: bool) -> list[Any]:
    """Create or update each deployment; one registered by the other mode is deleted first (see the docstring)."""
    from prefect.client.orchestration import get_client

    pool = None if serve else plan.work_pool
    ids = []
    with get_client(sync_client=True) as client:
        if pool is not None:
            _ensure_pool(client, pool)
        for d in deployments:
            try:
                existing = client.read_deployment_by_name(f"{d.flow_name}/{d.name}")
            except Exception:  # noqa: BLE001 - prefect raises ObjectNotFound; none yet
                existing = None
            if existing is not None and (existing.work_pool_name or None) != pool:
                client.delete_deployment(existing.id)
            if pool is not None:
                d._path = str(PROJECT_DIR)  # a process worker runs the flow from this checkout
                ids.append(d.apply(work_pool_name=pool))
            else:
                ids.append(d.apply())
    return ids


def register_missed_run_automations(notify_block: str, deployments: list[Any]) -> list[str]:
    """One proactive "no completed run within period + margin" automation per watched deployment; stale ones go."""
    from deployments.definitions import watched
    from flows.failures import create_missed_backup_automation, delete_missed_backup_automations, missed_automation_name

    wanted = watched(deployments)
    names = []
    for deployment, (period, margin) in wanted.items():
        create_missed_backup_automation(notify_block, deployment, period_s=period, margin_s=margin)
        names.append(missed_automation_name(deployment))
    delete_missed_backup_automations(keep=set(names))
    return names


def _ensure_pool(client: Any, name: str) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate

    try:
        client.read_work_pool(name)
    except Exception:  # noqa: BLE001 - ObjectNotFound: create it
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deployments.setup", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path, help="the TOML file (see the example in deployments/)")
    p.add_argument("--serve", action="store_true", help="register for this process and serve them (no work pool)")
    p.add_argument("--dry-run", action="store_true", help="print what would be created, change nothing")
    p.add_argument("--prefect-yaml", type=Path, help="write a prefect.yaml of these deployments, create nothing")
    args = p.parse_args(argv)
    try:
        plan = load_plan(args.config)
        deployments = deployments_for(plan)
        if args.prefect_yaml is not None:
            args.prefect_yaml.write_text(prefect_yaml(plan, deployments, config=str(args.config),
                                                      out=str(args.prefect_yaml)))  # fmt: skip
            print(f"wrote {args.prefect_yaml}: {len(deployments)} deployments")
            return 0
        if args.dry_run:
            for role, name in plan.blocks.items():
                print(f"block {role}: {name}")
            for d in deployments:
                sched = d.schedules[0].schedule.cron if d.schedules else "on demand"
                print(f"deployment {d.flow_name}/{d.name}: {sched}")
            return 0
        save_blocks(plan)
        for path in write_host_files(plan):
            print(f"wrote {path}")
        ids = register(plan, deployments, serve=args.serve)
        if "notify" in plan.blocks:
            for name in register_missed_run_automations(f"custom-webhook/{plan.blocks['notify']}", deployments):
                print(f"automation {name}")
        where = "served by this process" if args.serve else f"on work pool {plan.work_pool}"
        print(f"{len(ids)} deployments registered {where}; blocks: {', '.join(plan.blocks.values())}")
    except ConfigError as exc:
        print(f"seedvault-deploy: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    if args.serve:
        from prefect import serve

        serve(*deployments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
