"""The ``seedvault-status`` artifact and failure artifacts under the test harness.

* two different flows (verify-repository, prune) refresh the one markdown artifact under the same key;
* a failing backup leaves the success artifact of the same database the latest under its key, and publishes
  its own ``seedvault-failure-backup-<db>``; the status is refreshed after the failure too.
"""

from __future__ import annotations

import json
import os

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from seedvault import process
from tasks.status import STATUS_KEY
from tests.cli_runner import invoke
from tests.fixtures.repo import make_local_repo
from tests.prefect.api import as_fields, latest_table


def artifacts(key: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC
        )


def test_two_flows_refresh_the_status_artifact_under_one_key(prefect_harness, tmp_path):
    from blocks import SeedvaultEncryptionKey, SeedvaultRepository
    from flows.prune import prune_flow
    from flows.verify_repository import verify_repository_flow

    repo = make_local_repo(tmp_path)
    for i, size in enumerate((40_000, 41_000, 42_000)):
        (tmp_path / f"p{i}").write_bytes(os.urandom(size))
        assert invoke(["put", "--label", "status-demo", "--input", str(tmp_path / f"p{i}")], repo.env).exit_code == 0
    SeedvaultRepository(local_path=str(repo.root)).save("status-repo", overwrite=True)
    SeedvaultEncryptionKey(kind="raw", value=repo.key_file.read_text().strip()).save("status-key", overwrite=True)
    before = len(artifacts(STATUS_KEY))

    verify_repository_flow(repository="status-repo", key="status-key", scope="all")
    after_verify = artifacts(STATUS_KEY)
    assert len(after_verify) == before + 1 and after_verify[0].type == "markdown"
    md = after_verify[0].data
    assert md.startswith("# seedvault status: OK") and "| put | status-demo |" in md
    assert "KiB" in md and f"file://{repo.root}" in md
    assert repo.key_file.read_text().strip() not in md

    prune_flow(repository="status-repo", key="status-key", dry_run=True)
    after_prune = artifacts(STATUS_KEY)
    assert len(after_prune) == before + 2 and after_prune[0].type == "markdown"
    assert after_prune[0].key == after_prune[1].key == STATUS_KEY
    assert after_prune[0].flow_run_id != after_prune[1].flow_run_id  # one version per run, same key


def test_failed_backup_keeps_the_success_artifact_and_publishes_its_own(saved_blocks, source_db, pg_server):
    from blocks import PostgresTarget
    from flows.backup_postgres import backup_postgres_flow
    from seedvault.errors import SeedvaultError

    success_key = f"seedvault-backup-{source_db.name.replace('_', '-')}"
    failure_key = f"seedvault-failure-backup-{source_db.name.replace('_', '-')}"
    summary = backup_postgres_flow(**saved_blocks.params(), prune=False, checksums=False)
    good = as_fields(latest_table(success_key)[0])
    assert good["id"] == summary["id"] and good["status"] == "completed, verified"
    statuses = len(artifacts(STATUS_KEY))

    # The same database through a role that does not exist: refused before anything is written.
    PostgresTarget(host=pg_server.host, port=pg_server.port, user="no_such_role", password=pg_server.password,
                   database=source_db.name).save("no-role-pg", overwrite=True)  # fmt: skip
    with pytest.raises(SeedvaultError) as info:
        backup_postgres_flow(**dict(saved_blocks.params(), target="no-role-pg"), retries=0, prune=False)
    assert as_fields(latest_table(success_key)[0]) == good  # the last good backup is still the latest there
    failed = as_fields(latest_table(failure_key)[0])
    assert failed == {"status": "failed", "database": source_db.name, "reason": str(info.value)}
    status = artifacts(STATUS_KEY)
    assert len(status) == statuses + 1  # refreshed after the failure too, from the repository
    assert summary["id"] in status[0].data
    text = json.dumps([a.model_dump(mode="json") for a in status[:2]], default=str) + json.dumps(failed)
    for secret in (saved_blocks.raw_key, pg_server.password):
        assert not any(form in text for form in process.secret_forms(secret))


def test_daily_prune_reminds_once_of_a_master_key_past_its_rotation_age(receiver, tmp_path):
    import time

    from blocks import SeedvaultEncryptionKey, SeedvaultRepository
    from flows.prune import prune_flow

    repo = make_local_repo(tmp_path)
    (tmp_path / "p").write_bytes(os.urandom(1000))
    assert invoke(["put", "--label", "key-age", "--input", str(tmp_path / "p")], repo.env).exit_code == 0
    SeedvaultEncryptionKey(kind="raw", value=repo.key_file.read_text().strip()).save("age-key", overwrite=True)
    SeedvaultRepository(local_path=str(repo.root)).save("age-repo", overwrite=True)
    params = {"repository": "age-repo", "key": "age-key", "notify_block": "custom-webhook/sv-hook"}
    assert prune_flow(**params)["reminders"] == 0  # a new key: nothing to say
    time.sleep(1.2)
    SeedvaultRepository(local_path=str(repo.root), status={"key_max_age": "1s"}).save("age-repo", overwrite=True)
    assert prune_flow(**params)["reminders"] == 1
    (body,) = receiver.wait("/hook")
    subject, text = body["text"].split(" | ", 1)
    assert subject.startswith("seedvault key-age: key k-") and f"[file://{repo.root}]" in subject
    assert "older than" in text and "RUNBOOK.md section 27.8" in text and "/runs/flow-run/" in text
    assert repo.key_file.read_text().strip() not in json.dumps(receiver.bodies)
