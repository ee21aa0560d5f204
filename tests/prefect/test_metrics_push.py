"""Flows push the repository's metrics to the block's Pushgateway at their end: on success, on failure, and a
gateway that is down is a warning, never a failed run (tasks/metrics.py)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from flows.dr_drill import dr_drill_flow
from flows.prune import prune_flow
from flows.verify_repository import verify_repository_flow
from seedvault.crypto.keys import generate_raw_key
from tests.cli_runner import invoke
from tests.fixtures.s3 import free_loopback_port
from tests.helpers import base_env


def _groups(gateway: str) -> dict[tuple[str, str], set[str]]:
    with urllib.request.urlopen(f"{gateway}/api/v1/metrics", timeout=10) as resp:
        data = json.load(resp)["data"]
    return {(g["labels"].get("store"), g["labels"].get("database")): set(g) for g in data}


def _delete_all(gateway: str) -> None:
    for store, database in _groups(gateway):
        req = urllib.request.Request(f"{gateway}/metrics/job/seedvault/store/{store}/database/{database}",
                                     method="DELETE")  # fmt: skip
        urllib.request.urlopen(req, timeout=10).close()


def test_flows_push_on_success_and_failure_and_a_dead_gateway_is_a_warning(prefect_harness, prom_stack, tmp_path):
    from blocks import SeedvaultEncryptionKey, SeedvaultRepository

    raw = generate_raw_key()
    key_file = tmp_path / "master.key"
    key_file.write_text(raw + "\n")
    key_file.chmod(0o600)
    root = tmp_path / "repo"
    env = base_env(SEEDVAULT_REPOSITORY=f"file://{root}", SEEDVAULT_KEY_FILE=str(key_file))
    assert invoke(["init"], env).exit_code == 0
    assert invoke(["put", "--label", "orders"], env, input=b"x" * 100).exit_code == 0
    gateway = prom_stack.pushgateway_url
    SeedvaultRepository(local_path=str(root), pushgateway_url=gateway).save("metrics-repo", overwrite=True)
    SeedvaultRepository(local_path=str(root), pushgateway_url=f"http://127.0.0.1:{free_loopback_port()}").save(
        "metrics-repo-dead-gateway", overwrite=True
    )
    SeedvaultEncryptionKey(kind="raw", value=raw).save("metrics-key", overwrite=True)

    verify_repository_flow(repository="metrics-repo", key="metrics-key", scope="all")
    assert ("stream", "orders") in _groups(gateway) and ("repository", "all") in _groups(gateway)
    scraped = prom_stack.wait_for('seedvault_backup_last_verified_timestamp_seconds{job="seedvault",database="orders"}')
    assert scraped, "Prometheus did not scrape what the flow pushed"

    _delete_all(gateway)
    with pytest.raises(Exception, match="dr-drill mode must be"):  # fails in the flow itself: no task retry delay
        dr_drill_flow(repository="metrics-repo", key="metrics-key", mode="nonsense")
    assert ("stream", "orders") in _groups(gateway), "a failed run must push too"

    _delete_all(gateway)
    state = prune_flow(repository="metrics-repo-dead-gateway", key="metrics-key", dry_run=True, return_state=True)
    assert state.is_completed(), state
    assert _groups(gateway) == {}
