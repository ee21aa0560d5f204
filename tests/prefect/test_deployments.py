"""Deployments: the schedules (daily 02:00 UTC backup, monthly DR drill), registered on the API, and prefect.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml

from deployments import definitions
from deployments.serve import main as serve_main

PREFECT_YAML = Path(__file__).parents[2] / "deployments" / "prefect.yaml"


def _cron(deployment) -> tuple[str, str]:
    (schedule,) = deployment.schedules
    return schedule.schedule.cron, schedule.schedule.timezone


def test_build_gives_the_two_schedules_with_block_names_only():
    backup, drill = definitions.build("repo", "key", "pg", database="shop", notify_block="custom-webhook/ops")
    assert (backup.flow_name, backup.name) == ("backup-postgres", "nightly")
    assert _cron(backup) == ("0 2 * * *", "UTC")
    assert (drill.flow_name, drill.name) == ("dr-drill", "monthly")
    assert _cron(drill) == ("0 4 1 * *", "UTC")
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


def test_register_only_creates_the_deployments_on_the_server(prefect_harness):
    from prefect.client.orchestration import get_client

    ids = serve_main(["--repository", "r", "--key", "k", "--target", "t", "--drill-target", "dr", "--register-only"])
    assert len(ids) == 2
    with get_client(sync_client=True) as client:
        backup = client.read_deployment_by_name("backup-postgres/nightly")
        drill = client.read_deployment_by_name("dr-drill/monthly")
    assert _cron(backup) == ("0 2 * * *", "UTC") and backup.schedules[0].active
    assert _cron(drill) == ("0 4 1 * *", "UTC")
    assert backup.parameters["target"] == "t" and drill.parameters["target"] == "dr"


def test_prefect_yaml_matches_the_definitions_and_its_entrypoints_load():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load(PREFECT_YAML.read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    expected = {
        definitions.NIGHTLY_BACKUP: ("backup-postgres", definitions.NIGHTLY_BACKUP_CRON),
        definitions.MONTHLY_DRILL: ("dr-drill", definitions.MONTHLY_DRILL_CRON),
    }
    assert set(by_name) == set(expected)
    root = PREFECT_YAML.parents[1]
    for name, (flow_name, cron) in expected.items():
        d = by_name[name]
        assert d["schedules"] == [{"cron": cron, "timezone": "UTC", "active": True}]
        path, func = d["entrypoint"].split(":")
        assert load_flow_from_entrypoint(f"{root / path}:{func}").name == flow_name
        assert set(d["parameters"]) >= {"repository", "key", "target"}
