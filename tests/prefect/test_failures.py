"""Failed runs: the operator-readable reason is raised, the on_failure hook notifies, the automation fires.

Notifications go to a real local HTTP receiver through saved ``CustomWebhookNotificationBlock`` documents;
the automation runs in the harness server's own services. Nothing secret may appear in what is sent.
"""

from __future__ import annotations

import json
import time

import pytest

from flows.backup_postgres import backup_postgres_flow
from flows.restore_postgres import restore_postgres_flow
from seedvault import process
from seedvault.errors import ConfigError, DatabaseUnreachable
from tests.fixtures.s3 import free_loopback_port
from tests.prefect.api import as_fields, child_flow_runs, latest_table, task_runs


def _assert_clean(text: str, saved_blocks, pg_server) -> None:
    for secret in (saved_blocks.raw_key, pg_server.password):
        assert not any(form in text for form in process.secret_forms(secret))


def test_failed_backup_raises_reason_and_sends_one_message(saved_blocks, pg_server, receiver):
    with pytest.raises(DatabaseUnreachable) as info:
        backup_postgres_flow(
            **saved_blocks.params(),
            database="no_such_database",
            retries=1,
            retry_delay_seconds=0,
            notify_block="custom-webhook/sv-hook",
            return_state=False,
        )
    reason = str(info.value)
    assert reason.startswith("PostgreSQL postgres@127.0.0.1:") and "refused the connection" in reason
    assert 'database "no_such_database" does not exist' in reason and "\n" not in reason

    (hook,) = receiver.wait("/hook")
    subject, body = hook["text"].split(" | ", 1)
    assert subject == "seedvault backup-failed: backup-postgres (no deployment) [postgres no_such_database]"
    assert f"Reason: DatabaseRefused: {reason}" in body and "Runbook: RUNBOOK.md section 27.1" in body
    assert "Run: http://127.0.0.1:" in body and "/runs/flow-run/" in body
    time.sleep(2)
    assert len(receiver.bodies["/hook"]) == 1  # one message per failure, after the last retry
    _assert_clean(json.dumps(receiver.bodies), saved_blocks, pg_server)

    # A refused connection is not retried (the database is missing for good); the stream never started.
    fields = as_fields(latest_table("seedvault-failure-backup-no-such-database")[0])
    assert fields == {"status": "failed", "database": "no_such_database", "reason": reason}


def test_flow_run_records_the_preflight_retry_and_no_stream(saved_blocks, pg_server):
    from blocks import PostgresTarget

    # Nothing listens on this port: the server may be restarting, so the preflight is retried.
    PostgresTarget(
        host="127.0.0.1",
        port=free_loopback_port(),
        user=pg_server.user,
        password=pg_server.password,
        database="postgres",
    ).save("down-pg", overwrite=True)
    params = dict(saved_blocks.params(), target="down-pg")
    state = backup_postgres_flow(**params, retries=1, retry_delay_seconds=0, return_state=True)
    assert state.is_failed() and "DatabaseUnreachable: cannot connect to PostgreSQL" in state.message
    run_id = state.state_details.flow_run_id
    (preflight,) = [t for t in task_runs(run_id) if t.name.startswith("preflight")]
    assert preflight.run_count == 2
    assert child_flow_runs(run_id) == []

    # The server answers but the database does not exist: permanent, one attempt only.
    state = backup_postgres_flow(
        **saved_blocks.params(), database="no_such_database", retries=1, retry_delay_seconds=0, return_state=True
    )
    assert state.is_failed() and "DatabaseRefused: PostgreSQL" in state.message
    (preflight,) = [t for t in task_runs(state.state_details.flow_run_id) if t.name.startswith("preflight")]
    assert preflight.run_count == 1


def test_permanent_failure_is_not_retried_and_names_the_fix(saved_blocks, tmp_path, scratch_db):
    from blocks import SeedvaultRepository

    (tmp_path / "empty").mkdir()
    SeedvaultRepository(local_path=str(tmp_path / "empty")).save("empty-repo", overwrite=True)
    state = restore_postgres_flow(
        **{**saved_blocks.params(), "repository": "empty-repo"}, database=scratch_db, return_state=True
    )
    with pytest.raises(ConfigError) as info:
        state.result()
    hint = "(HINT: check SEEDVAULT_REPOSITORY, or run 'seedvault init')"
    assert str(info.value).startswith("no seedvault repository at ") and str(info.value).endswith(hint)
    (preflight,) = [t for t in task_runs(state.state_details.flow_run_id) if t.name.startswith("preflight")]
    assert preflight.run_count == 1, "a configuration error is not worth a retry"


def test_hook_takes_the_block_from_the_environment_and_survives_a_dead_receiver(receiver, monkeypatch, caplog):
    from types import SimpleNamespace

    from flows.failures import NOTIFY_ENV, notify_failure

    flow = SimpleNamespace(name="dr-drill")
    run = SimpleNamespace(name="brave-run", parameters={"notify_block": None})
    state = SimpleNamespace(name="Crashed", message="Execution was cancelled by the runtime environment.")
    monkeypatch.setenv(NOTIFY_ENV, "custom-webhook/sv-hook")
    notify_failure(flow, run, state)
    (body,) = receiver.wait("/hook")
    subject, text = body["text"].split(" | ", 1)
    assert subject == "seedvault crashed: dr-drill (no deployment) [postgres]"
    assert text.startswith("What: run crashed (its process died): dr-drill run brave-run Crashed\n")
    assert f"Reason: {state.message}" in text and "RUNBOOK.md section 27.10" in text
    receiver.server.shutdown()
    receiver.server.server_close()
    notify_failure(flow, run, state)  # delivery fails: logged by type, never raised over the flow's own failure
    assert "could not send the notification through block custom-webhook/sv-hook" in caplog.text
