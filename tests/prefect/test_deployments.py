"""Deployments: the schedules (daily base backup 01:00 and logical backup 02:00 UTC, WAL freshness every 5
minutes, monthly DR drill), registered on the API, and prefect.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from deployments import definitions
from deployments.serve import main as serve_main

PREFECT_YAML = Path(__file__).parents[2] / "deployments" / "prefect.yaml"


def _cron(deployment) -> tuple[str, str]:
    (schedule,) = deployment.schedules
    return schedule.schedule.cron, schedule.schedule.timezone


def test_build_gives_the_four_schedules_with_block_names_only():
    backup, drill, base, freshness = definitions.build(
        "repo", "key", "pg", database="shop", notify_block="custom-webhook/ops"
    )
    assert (backup.flow_name, backup.name) == ("backup-postgres", "nightly")
    assert _cron(backup) == ("0 2 * * *", "UTC")
    assert (drill.flow_name, drill.name) == ("dr-drill", "monthly")
    assert _cron(drill) == ("0 4 1 * *", "UTC")
    assert (base.flow_name, base.name) == ("backup-postgres-base", "daily")
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
    *_, base, freshness = definitions.build("repo", "key", "pg", base_target="pg-replication")
    assert base.parameters["target"] == freshness.parameters["target"] == "pg-replication"
    assert [d.flow_name for d in definitions.build("repo", "key", "pg", wal=False)] == ["backup-postgres", "dr-drill"]


def test_register_only_creates_the_deployments_on_the_server(prefect_harness):
    from prefect.client.orchestration import get_client

    ids = serve_main(["--repository", "r", "--key", "k", "--target", "t", "--drill-target", "dr", "--register-only"])
    assert len(ids) == 4
    with get_client(sync_client=True) as client:
        backup = client.read_deployment_by_name("backup-postgres/nightly")
        drill = client.read_deployment_by_name("dr-drill/monthly")
        base = client.read_deployment_by_name("backup-postgres-base/daily")
        freshness = client.read_deployment_by_name("check-wal-freshness/every-5-minutes")
    assert _cron(backup) == ("0 2 * * *", "UTC") and backup.schedules[0].active
    assert _cron(drill) == ("0 4 1 * *", "UTC")
    assert _cron(base) == ("0 1 * * *", "UTC") and base.schedules[0].active
    assert _cron(freshness) == ("*/5 * * * *", "UTC") and freshness.schedules[0].active
    assert backup.parameters["target"] == "t" and drill.parameters["target"] == "dr"
    assert base.parameters["target"] == freshness.parameters["target"] == "t"


def test_prefect_yaml_matches_the_definitions_and_its_entrypoints_load():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load(PREFECT_YAML.read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    expected = {
        definitions.NIGHTLY_BACKUP: ("backup-postgres", definitions.NIGHTLY_BACKUP_CRON),
        definitions.MONTHLY_DRILL: ("dr-drill", definitions.MONTHLY_DRILL_CRON),
        definitions.DAILY_BASE_BACKUP: ("backup-postgres-base", definitions.DAILY_BASE_BACKUP_CRON),
        definitions.WAL_FRESHNESS: ("check-wal-freshness", definitions.WAL_FRESHNESS_CRON),
    }
    assert set(by_name) == set(expected)
    root = PREFECT_YAML.parents[1]
    for name, (flow_name, cron) in expected.items():
        d = by_name[name]
        assert d["schedules"] == [{"cron": cron, "timezone": "UTC", "active": True}]
        path, func = d["entrypoint"].split(":")
        assert load_flow_from_entrypoint(f"{root / path}:{func}").name == flow_name
        assert set(d["parameters"]) >= {"repository", "key", "target"}
