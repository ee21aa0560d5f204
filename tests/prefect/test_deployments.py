"""Deployments: the schedules (daily base backup 01:00 and logical backup 02:00 UTC, WAL freshness every 5
minutes, monthly DR drill, Neo4j nightly 02:00 and, on request, every 15 minutes), registered on the API, and
prefect.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments import definitions
from deployments.serve import main as serve_main

PREFECT_YAML = Path(__file__).parents[2] / "deployments" / "prefect.yaml"


def _cron(deployment) -> tuple[str, str]:
    (schedule,) = deployment.schedules
    return schedule.schedule.cron, schedule.schedule.timezone


def _scheduled(deployments: list) -> list:
    return [d for d in deployments if d.schedules]


def test_on_demand_restores_with_block_names_filled_and_only_for_the_stores_there_are():
    """The UI's restore forms: no schedule, blocks filled in, what only the operator knows left to the form."""
    scratch = {"neo4j_scratch_target": "s", "neo4j_scratch_setup": "a", "neo4j_scratch_teardown": "b"}
    every = definitions.build("repo", "key", "pg", database="shop", neo4j_target="graph", platform=True, **scratch)
    on_demand = {d.flow_name: d for d in every if not d.schedules}
    assert set(on_demand) == {"restore-postgres", "restore-postgres-pitr", "restore-neo4j", "restore-platform"}
    assert all(d.name == "on-demand" for d in on_demand.values())
    common = {"repository": "repo", "key": "key", "notify_block": None}
    assert on_demand["restore-postgres"].parameters == {**common, "target": "pg", "source_database": "shop"}
    assert on_demand["restore-neo4j"].parameters == {**common, "target": "graph", "database": None}
    assert on_demand["restore-platform"].parameters == {
        **common,
        "target": "pg",
        "neo4j_target": "graph",
        "neo4j_database": None,
    }
    assert on_demand["restore-postgres-pitr"].parameters == {**common, "target": "pg"}
    assert (
        "replace" in on_demand["restore-postgres"].description and "latest" in on_demand["restore-postgres"].description
    )
    names = [(d.flow_name, d.name) for d in every]
    assert len(names) == len(set(names))  # every deployment distinct; every scheduled name says its UTC time
    assert all("utc" in n or n.startswith("every-") for f, n in names if n != "on-demand")
    pg_only = {d.flow_name for d in definitions.build("repo", "key", "pg", wal=False) if not d.schedules}
    assert pg_only == {"restore-postgres"}  # no PITR without WAL archiving, no Neo4j or platform restore
    graph_only = {d.flow_name for d in definitions.build("repo", "key", None, neo4j_target="g") if not d.schedules}
    assert graph_only == {"restore-neo4j"}


def test_build_gives_the_four_schedules_with_block_names_only():
    backup, drill, base, freshness, *maintenance = _scheduled(
        definitions.build("repo", "key", "pg", database="shop", notify_block="custom-webhook/ops")
    )
    assert [(d.flow_name, d.name, _cron(d)[0]) for d in maintenance] == [
        ("prune", "daily-0330-utc", "30 3 * * *"),
        ("verify-repository", "weekly-sample-sun-0500-utc", "0 5 * * 0"),
        ("verify-repository", "monthly-all-2nd-0500-utc", "0 5 2 * *"),
        ("verify-repository", "daily-wal-0600-utc", "0 6 * * *"),
    ]
    prune, sample, every_byte, wal = maintenance
    repo_only = {"repository": "repo", "key": "key", "notify_block": "custom-webhook/ops"}
    assert prune.parameters == repo_only
    assert sample.parameters == {**repo_only, "scope": "sample", "percent": 25}
    assert every_byte.parameters == {**repo_only, "scope": "all"} and wal.parameters == {**repo_only, "scope": "wal"}
    assert (backup.flow_name, backup.name) == ("backup-postgres", "nightly-0200-utc")
    assert _cron(backup) == ("0 2 * * *", "UTC")
    assert (drill.flow_name, drill.name) == ("dr-drill", "monthly-1st-0400-utc")
    assert _cron(drill) == ("0 4 1 * *", "UTC")
    assert (base.flow_name, base.name) == ("backup-postgres-base", "daily-0100-utc")
    assert _cron(base) == ("0 1 * * *", "UTC")
    assert (freshness.flow_name, freshness.name) == ("check-wal-freshness", "every-5-minutes")
    assert _cron(freshness) == ("*/5 * * * *", "UTC")
    assert backup.parameters == {
        "repository": "repo",
        "key": "key",
        "target": "pg",
        "database": "shop",
        "notify_block": "custom-webhook/ops",
        "checksums": True,
        "verify": True,
    }
    assert drill.parameters["target"] == "pg" and drill.parameters["database"] == "shop"
    common = {"repository": "repo", "key": "key", "target": "pg", "notify_block": "custom-webhook/ops"}
    assert base.parameters == {**common, "verify": True}
    assert freshness.parameters == common  # max_lag: the flow's default, 300 s


def test_build_with_a_replication_target_or_without_wal():
    _, _, base, freshness, *_ = _scheduled(definitions.build("repo", "key", "pg", base_target="pg-replication"))
    assert base.parameters["target"] == freshness.parameters["target"] == "pg-replication"
    without = [(d.flow_name, d.name) for d in _scheduled(definitions.build("repo", "key", "pg", wal=False))]
    assert without == [
        ("backup-postgres", "nightly-0200-utc"),
        ("dr-drill", "monthly-1st-0400-utc"),
        ("prune", "daily-0330-utc"),
        ("verify-repository", "weekly-sample-sun-0500-utc"),
        ("verify-repository", "monthly-all-2nd-0500-utc"),
    ]


def test_build_adds_the_neo4j_nightly_dump_and_only_on_request_the_15_minute_online_backup():
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy

    *pg, nightly, _, _, _, _ = _scheduled(
        definitions.build("repo", "key", "pg", neo4j_target="graph", notify_block="custom-webhook/ops")
    )
    assert [d.flow_name for d in pg] == ["backup-postgres", "dr-drill", "backup-postgres-base", "check-wal-freshness"]
    assert (nightly.flow_name, nightly.name) == ("backup-neo4j", "nightly-0200-utc")
    assert _cron(nightly) == ("0 2 * * *", "UTC")
    common = {"repository": "repo", "key": "key", "target": "graph", "notify_block": "custom-webhook/ops"}
    assert nightly.parameters == {**common, "database": None, "verify": True, "mode": "dump", "backup_type": "FULL"}

    # Enterprise: the nightly is an online FULL (a new chain each night), the 15-minute one an online AUTO.
    nightly, every, *maintenance = _scheduled(definitions.build("repo", "key", None, neo4j_target="graph",
                                              neo4j_database="movies", neo4j_incremental=True))  # fmt: skip
    # no WAL verification without PostgreSQL
    assert [d.name for d in maintenance] == ["daily-0330-utc", "weekly-sample-sun-0500-utc", "monthly-all-2nd-0500-utc"]
    assert nightly.parameters["mode"] == "online" and nightly.parameters["backup_type"] == "FULL"
    assert (every.flow_name, every.name) == ("backup-neo4j", "every-15-minutes")
    assert _cron(every) == ("5-59/15 * * * *", "UTC")
    assert every.parameters["mode"] == "online" and every.parameters["backup_type"] == "AUTO"
    assert every.parameters["database"] == nightly.parameters["database"] == "movies"
    assert every.concurrency_limit == 1
    assert every.concurrency_options.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    with pytest.raises(ValueError, match="nothing to deploy"):
        definitions.build("repo", "key", None)


def test_every_15_minutes_never_meets_the_nightly_full():
    minute, hour, *rest = definitions.NEO4J_INCREMENTAL_CRON.split()
    span, step = minute.split("/")
    first, last = map(int, span.split("-"))
    minutes = list(range(first, last + 1, int(step)))
    assert minutes == [5, 20, 35, 50] and hour == "*" and rest == ["*", "*", "*"], "every 15 minutes, 96 a day"
    n_minute, n_hour, *_ = definitions.NEO4J_NIGHTLY_CRON.split()
    assert (int(n_hour), int(n_minute)) == (2, 0) and int(n_minute) not in minutes  # the platform's 02:00 full


def test_register_only_creates_the_deployments_on_the_server(prefect_harness):
    from prefect.client.orchestration import get_client

    args = ["--repository", "r", "--key", "k", "--target", "t", "--drill-target", "dr"]
    ids = serve_main([*args, "--neo4j-target", "g", "--neo4j-incremental", "--register-only"])
    assert len(ids) == 13  # 10 scheduled, 3 on demand (restore-postgres, restore-postgres-pitr, restore-neo4j)
    with get_client(sync_client=True) as client:
        backup = client.read_deployment_by_name("backup-postgres/nightly-0200-utc")
        drill = client.read_deployment_by_name("dr-drill/monthly-1st-0400-utc")
        base = client.read_deployment_by_name("backup-postgres-base/daily-0100-utc")
        freshness = client.read_deployment_by_name("check-wal-freshness/every-5-minutes")
        neo4j = client.read_deployment_by_name("backup-neo4j/nightly-0200-utc")
        every = client.read_deployment_by_name("backup-neo4j/every-15-minutes")
        restore = client.read_deployment_by_name("restore-postgres/on-demand")
    assert restore.schedules == [] and restore.parameters["target"] == "t"
    assert _cron(backup) == ("0 2 * * *", "UTC") and backup.schedules[0].active
    assert _cron(drill) == ("0 4 1 * *", "UTC")
    assert _cron(base) == ("0 1 * * *", "UTC") and base.schedules[0].active
    assert _cron(freshness) == ("*/5 * * * *", "UTC") and freshness.schedules[0].active
    assert backup.parameters["target"] == "t" and drill.parameters["target"] == "dr"
    assert base.parameters["target"] == freshness.parameters["target"] == "t"
    assert _cron(neo4j) == ("0 2 * * *", "UTC") and neo4j.parameters["mode"] == "online"
    assert _cron(every) == ("5-59/15 * * * *", "UTC") and every.schedules[0].active
    assert every.parameters["target"] == "g" and every.parameters["backup_type"] == "AUTO"
    assert every.global_concurrency_limit.limit == 1
    assert every.concurrency_options.collision_strategy.value == "CANCEL_NEW"


def test_serve_needs_a_target_and_incremental_needs_neo4j(capsys):
    with pytest.raises(SystemExit):
        serve_main(["--repository", "r", "--key", "k", "--register-only"])
    assert "give --target (PostgreSQL), --neo4j-target, or both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve_main(["--repository", "r", "--key", "k", "--target", "t", "--neo4j-incremental"])
    assert "--neo4j-incremental needs --neo4j-target" in capsys.readouterr().err


def test_prefect_yaml_is_generated_from_the_example_and_its_entrypoints_load(tmp_path):
    from prefect.flows import load_flow_from_entrypoint

    from deployments.setup import main as setup_main

    example = "deployments/seedvault-deploy.example.toml"
    out = tmp_path / "prefect.yaml"
    assert setup_main(["--config", str(PREFECT_YAML.parent / "seedvault-deploy.example.toml"), "--prefect-yaml",
                       str(out)]) == 0  # fmt: skip
    committed = PREFECT_YAML.read_text()
    regenerated = out.read_text().replace(str(PREFECT_YAML.parent / "seedvault-deploy.example.toml"), example)
    assert committed == regenerated.replace(str(out), "deployments/prefect.yaml"), "regenerate deployments/prefect.yaml"
    spec = yaml.safe_load(committed)
    root = PREFECT_YAML.parents[1]
    by_name = {}
    for d in spec["deployments"]:
        path, func = d["entrypoint"].split(":")
        by_name[(load_flow_from_entrypoint(f"{root / path}:{func}").name, d["name"])] = d
    expected = {
        ("backup-postgres", definitions.NIGHTLY_BACKUP): definitions.NIGHTLY_BACKUP_CRON,
        ("dr-drill", definitions.MONTHLY_DRILL): definitions.MONTHLY_DRILL_CRON,
        ("backup-platform", definitions.DAILY_PLATFORM): definitions.DAILY_PLATFORM_CRON,
        ("backup-postgres-base", definitions.DAILY_BASE_BACKUP): definitions.DAILY_BASE_BACKUP_CRON,
        ("check-wal-freshness", definitions.WAL_FRESHNESS): definitions.WAL_FRESHNESS_CRON,
        ("backup-neo4j", definitions.NEO4J_NIGHTLY): definitions.NEO4J_NIGHTLY_CRON,
        ("prune", definitions.DAILY_PRUNE): definitions.DAILY_PRUNE_CRON,
        ("verify-repository", definitions.WEEKLY_SAMPLE): definitions.WEEKLY_SAMPLE_CRON,
        ("verify-repository", definitions.MONTHLY_ALL): definitions.MONTHLY_ALL_CRON,
        ("verify-repository", definitions.DAILY_WAL): definitions.DAILY_WAL_CRON,
        ("restore-postgres", "on-demand"): None, ("restore-postgres-pitr", "on-demand"): None,
        ("restore-neo4j", "on-demand"): None, ("restore-platform", "on-demand"): None,
    }  # fmt: skip
    # The example's Neo4j is Community (incremental = false): no 15-minute deployment at all, not a paused one.
    assert set(by_name) == set(expected) and len(spec["deployments"]) == len(expected)
    for name, cron in expected.items():
        d = by_name[name]
        assert d["schedules"] == ([{"cron": cron, "timezone": "UTC", "active": True}] if cron else [])
        assert d["parameters"]["notify_block"] == "custom-webhook/seedvault-notify"
        assert d["work_pool"] == {"name": "seedvault"}
        assert set(d["parameters"]) >= (
            {"repository", "key"}
            if name[0] in ("prune", "verify-repository", "dr-drill", "restore-postgres-pitr")
            else {"repository", "key", "target"}
        )
    drill = by_name[("dr-drill", "monthly-1st-0400-utc")]["parameters"]
    assert drill["mode"] == "platform" and drill["neo4j_scratch_setup"] and drill["neo4j_scratch_teardown"]
    assert by_name[("backup-platform", "daily-0300-utc")]["parameters"]["neo4j_target"] == "seedvault-neo4j"
    assert by_name[("backup-neo4j", "nightly-0200-utc")]["parameters"]["mode"] == "dump"


def test_prefect_yaml_of_a_postgres_only_platform_has_no_neo4j_and_an_enterprise_one_the_15_minute_backup(tmp_path):
    from deployments.setup import main as setup_main

    example = (PREFECT_YAML.parent / "seedvault-deploy.example.toml").read_text()
    pg_only = tmp_path / "pg.toml"
    pg_only.write_text(example.split("[neo4j]")[0] + "[notify]" + example.split("[notify]")[1])
    assert setup_main(["--config", str(pg_only), "--prefect-yaml", str(tmp_path / "pg.yaml")]) == 0
    names = {(d["entrypoint"].split(":")[1], d["name"]) for d in
             yaml.safe_load((tmp_path / "pg.yaml").read_text())["deployments"]}  # fmt: skip
    assert not any("neo4j" in flow or "platform" in flow for flow, _ in names)
    assert ("restore_postgres_flow", "on-demand") in names and ("backup_postgres_flow", "nightly-0200-utc") in names
    enterprise = tmp_path / "ee.toml"
    enterprise.write_text(example.replace("incremental = false", "incremental = true"))
    assert setup_main(["--config", str(enterprise), "--prefect-yaml", str(tmp_path / "ee.yaml")]) == 0
    every = [d for d in yaml.safe_load((tmp_path / "ee.yaml").read_text())["deployments"]
             if d["name"] == definitions.NEO4J_INCREMENTAL]  # fmt: skip
    assert len(every) == 1 and every[0]["schedules"][0]["active"] is True
    assert every[0]["parameters"]["mode"] == "online" and every[0]["parameters"]["backup_type"] == "AUTO"
    assert every[0]["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}


def test_a_replica_adds_the_hourly_replicate_its_own_prune_and_the_fallback_of_every_restore(tmp_path):
    from deployments.setup import main as setup_main

    example = (PREFECT_YAML.parent / "seedvault-deploy.example.toml").read_text()
    with_replica = tmp_path / "replica.toml"
    with_replica.write_text(example.replace("# [replica]", "[replica]").replace('# url = "s3://platform-backups-dr',
                            'url = "s3://platform-backups-dr'))  # fmt: skip
    assert setup_main(["--config", str(with_replica), "--prefect-yaml", str(tmp_path / "r.yaml")]) == 0
    spec = yaml.safe_load((tmp_path / "r.yaml").read_text())["deployments"]
    by = {(d["entrypoint"].split(":")[1], d["name"]): d for d in spec}
    copy = by[("replicate_flow", definitions.HOURLY_REPLICATE)]
    assert copy["schedules"] == [{"cron": definitions.HOURLY_REPLICATE_CRON, "timezone": "UTC", "active": True}]
    assert (
        copy["parameters"]["replica"] == "seedvault-replica" and copy["parameters"]["repository"] != "seedvault-replica"
    )
    prune = by[("prune_flow", definitions.REPLICA_PRUNE)]
    assert prune["parameters"]["repository"] == "seedvault-replica"
    for (flow, _name), d in by.items():  # every restore and the drill read the replica when the first is down
        if flow.startswith("restore_") or flow == "dr_drill_flow":
            assert d["parameters"]["replica"] == "seedvault-replica", flow
        elif flow.startswith("backup_"):
            assert "replica" not in d["parameters"], flow  # writers never switch repositories
    # Without [replica] (the example as committed): neither deployment, no replica parameter anywhere.
    committed = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    assert not any("replicate" in d["entrypoint"] or "replica" in d["parameters"] for d in committed)


def test_prefect_yaml_scopes_of_the_verification_deployments():
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    params = {d["name"]: d["parameters"] for d in spec["deployments"] if "verify_repository" in d["entrypoint"]}
    weekly, monthly = params["weekly-sample-sun-0500-utc"], params["monthly-all-2nd-0500-utc"]
    assert weekly["scope"] == "sample" and weekly["percent"] == 25
    assert monthly["scope"] == "all" and params["daily-wal-0600-utc"]["scope"] == "wal"


def test_build_with_a_platform_adds_the_daily_group_and_makes_the_monthly_drill_a_platform_drill():
    scratch = {"neo4j_scratch_setup": "mk", "neo4j_scratch_teardown": "rm", "scratch_parent": "/var/tmp/d"}
    out = definitions.build("repo", "key", "pg", neo4j_target="graph", platform=True, neo4j_scratch_target="scratch",
                            **scratch)  # fmt: skip
    names = [(d.flow_name, d.name) for d in out]
    assert names[:6] == [("backup-postgres", "nightly-0200-utc"), ("dr-drill", "monthly-1st-0400-utc"),
                         ("backup-postgres-base", "daily-0100-utc"), ("check-wal-freshness", "every-5-minutes"),
                         ("backup-platform", "daily-0300-utc"), ("backup-neo4j", "nightly-0200-utc")]  # fmt: skip
    drill, group = out[1], out[4]
    assert _cron(drill) == ("0 4 1 * *", "UTC") and _cron(group) == ("0 3 * * *", "UTC")
    assert drill.parameters == {"repository": "repo", "key": "key", "notify_block": None, "mode": "platform",
                                "rpo_target": 25 * 3600.0, "neo4j_target": "scratch", "neo4j_scratch_setup": "mk",
                                "neo4j_scratch_teardown": "rm", "scratch_parent": "/var/tmp/d"}  # fmt: skip
    assert group.parameters["target"] == "pg" and group.parameters["neo4j_target"] == "graph"
    assert group.parameters["mode"] == "dump" and group.parameters["verify"] is True
    # 03:00: after the 01:00 base backup (a group needs one before its restore point), clear of the nightlies.
    hours = {int(c.split()[1]) for c in (definitions.DAILY_BASE_BACKUP_CRON, definitions.NIGHTLY_BACKUP_CRON)}
    assert int(definitions.DAILY_PLATFORM_CRON.split()[1]) > max(hours)
    with pytest.raises(ValueError, match="platform needs"):
        definitions.build("repo", "key", "pg", platform=True)
    with pytest.raises(ValueError, match="setup and the teardown"):
        definitions.build("repo", "key", "pg", neo4j_target="g", platform=True, neo4j_scratch_target="s")


def test_the_host_files_carry_the_replica_with_its_own_credentials_file(tmp_path, monkeypatch):
    """What wal-fetch and a PITR from the replica read on the database host: a [replica] table of its own."""
    from deployments.setup import load_plan, write_host_files
    from seedvault.config import load

    key = tmp_path / "master.key"
    key.write_text("x\n")
    monkeypatch.setenv("T_S3", "primary-secret-1")
    monkeypatch.setenv("T_DR", "replica-secret-2")
    config = tmp_path / "deploy.toml"
    config.write_text(f"""
[repository]
url = "s3://primary/sv"
s3_endpoint = "http://127.0.0.1:9000"
aws_access_key_id = "AKIAPRIMARY"
aws_secret_access_key_env = "T_S3"
[replica]
url = "s3://dr/sv"
s3_endpoint = "http://127.0.0.1:9001"
s3_region = "eu-west-1"
aws_access_key_id = "AKIAREPLICA"
aws_secret_access_key_env = "T_DR"
retention = {{ keep_within = "90d" }}
[key]
value_file = "{key}"
[postgres]
database = "tsdb"
[archive]
dir = "{tmp_path / "host"}"
""")
    written = write_host_files(load_plan(config))
    host = tmp_path / "host"
    assert set(written) == {host / "seedvault.toml", host / "aws-credentials", host / "aws-credentials-replica"}
    settings = load(env={"SEEDVAULT_CONFIG": str(host / "seedvault.toml")})
    assert settings.repository == "s3://primary/sv" and settings.s3_endpoint == "http://127.0.0.1:9000"
    replica = settings.replica_settings()
    assert replica is not None and replica.repository == "s3://dr/sv" and replica.s3_region == "eu-west-1"
    assert replica.s3_endpoint == "http://127.0.0.1:9001" and replica.key_file == str(key)
    assert replica.s3_credentials_file == str(host / "aws-credentials-replica")
    creds = (host / "aws-credentials-replica").read_text()
    assert "replica-secret-2" in creds and "primary-secret-1" not in creds
    assert oct((host / "aws-credentials-replica").stat().st_mode & 0o777) == "0o600"
    assert "secret" not in (host / "seedvault.toml").read_text()
    # SEEDVAULT_USE_REPLICA=on (what a PITR from the replica puts in restore_command) selects it.
    chosen = load(env={"SEEDVAULT_CONFIG": str(host / "seedvault.toml"), "SEEDVAULT_USE_REPLICA": "on"})
    assert chosen.repository == "s3://dr/sv" and chosen.is_replica
