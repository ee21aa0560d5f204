"""One message per failure, against a real ``prefect server start`` and a real process worker.

A local HTTP receiver is the webhook. Deployments on a process work pool, run by ``prefect worker start``:

* manual runs (``create_flow_run``, what the UI's "Run" does): a backup whose database is unreachable, a DR
  drill with a tiny RTO target, a WAL freshness check on a server that does not archive;
* runs the *scheduler* creates (no ``Scheduled`` event, the case that held a server automation for 15
  minutes): a backup whose database is unreachable, a backup whose S3 endpoint is down (upload failed), a
  backup that is a size anomaly, and a backup killed with SIGKILL mid-dump (the worker marks it Crashed and
  runs the crash hook itself);
* a deployment whose schedule never runs: the proactive "missed backup" automation;
* the failed manual deployment fixed and run again: one "recovered" message, and none for the next success.

Each failure delivers exactly one message within a minute of the run's end, with its kind, the deployment,
the reason, the run's link and the RUNBOOK section, and no secret.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from seedvault import process
from tests.helpers import run_cli
from tests.prefect.real_server import ROOT, api_post, free_port, prefect_server, process_worker
from tests.prefect.receiver import Receiver

POOL = "sv-notify"
S3_SECRET = "s3-notify-" + "x" * 20
MISSED_WITHIN = 40.0  # seconds: the missed-backup automation's period + margin in this test


@dataclass
class Env:
    url: str
    receiver: Receiver
    ids: dict[str, str]  # "flow/deployment" -> deployment id
    raw_key: str
    pg_server: Any
    home: Path
    missed_created: float

    def run(self, deployment: str, **parameters: Any) -> str:
        """What the UI's "Run" does; a 503 (SQLite busy) is retried, as Prefect's own client does."""
        r = api_post(self.url, f"/deployments/{self.ids[deployment]}/create_flow_run", {"parameters": parameters})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def flow_run(self, run_id: str) -> dict:
        return httpx.get(f"{self.url}/flow_runs/{run_id}", timeout=30).json()

    def wait_final(self, run_id: str, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(0.5)
        raise AssertionError(f"flow run {run_id} did not finish in {timeout:.0f} s: {self.flow_run(run_id)['state']}")

    def scheduled_run(self, deployment: str, timeout: float = 60) -> str:
        """The run the scheduler created for ``deployment`` (never created by this test)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = httpx.post(f"{self.url}/flow_runs/filter", timeout=30, json={
                "deployments": {"id": {"any_": [self.ids[deployment]]}}}).json()  # fmt: skip
            if runs:
                assert all(r["auto_scheduled"] for r in runs)
                return sorted(runs, key=lambda r: r["expected_start_time"])[0]["id"]
            time.sleep(0.5)
        raise AssertionError(f"the scheduler created no run of {deployment} in {timeout:.0f} s")

    def messages(self, needle: str) -> list[tuple[float, dict]]:
        return [(t, body) for t, _, body in self.receiver.received if needle in body["subject"]]

    def one_message(self, needle: str, run: dict | None = None, timeout: float = 60, settle: float = 3) -> dict:
        """Exactly one message whose subject holds ``needle``, within a minute of ``run``'s end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.messages(needle):
            time.sleep(0.2)
        time.sleep(settle)  # a second message (a duplicate path) would arrive by now
        got = self.messages(needle)
        assert len(got) == 1, f"{len(got)} messages for {needle}: {[b['subject'] for _, b in got]}"
        at, body = got[0]
        if run is not None:
            ended = datetime.fromisoformat(run["end_time"]).timestamp()
            assert at - ended < 60, f"the message for {needle} came {at - ended:.0f} s after the run ended"
            assert f"/runs/flow-run/{run['id']}" in body["text"]  # the link to the run
        return body


def _deploy(flow: Any, name: str, parameters: dict[str, Any], schedules: list | None = None) -> str:
    d = flow.to_deployment(name=name, parameters=parameters, schedules=schedules or [])
    d._path = str(ROOT)  # a process worker runs the flow from this checkout (as deployments.setup does)
    return str(d.apply(work_pool_name=POOL))


@pytest.fixture(scope="module")
def env(pg_server, tmp_path_factory) -> Iterator[Env]:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.schedules import Interval
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from blocks import PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository
    from deployments.setup import register_missed_run_automations
    from flows.backup_postgres import backup_postgres_flow
    from flows.check_wal_freshness import check_wal_freshness_flow
    from flows.dr_drill import dr_drill_flow
    from tests.fixtures.repo import make_local_repo

    base = tmp_path_factory.mktemp("notify")
    repo = make_local_repo(base)
    raw_key = repo.key_file.read_text().strip()
    for db in ("nt_src", "nt_big", "nt_lock"):
        pg_server.drop_database(db)
        pg_server.create_database(db)
    with pg_server.connect("nt_src") as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200) g")
    with pg_server.connect("nt_big") as conn:  # ~20 times the stored size of nt_src: a size anomaly
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        conn.execute(
            "INSERT INTO t SELECT g, md5(random()::text) || md5(random()::text) FROM generate_series(1, 40000) g"
        )
    with pg_server.connect("nt_lock") as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    cli_env = {**repo.env, **pg_server.env()}
    dsn = f"postgresql://{pg_server.user}@{pg_server.host}:{pg_server.port}"
    for label in ("nt_src", "sizes", "sizes", "sizes"):  # the drill's backup, and the size history
        run_cli(["backup", "postgres", "--dsn", f"{dsn}/nt_src", "--label", label, "--no-globals"], cli_env, check=True)

    receiver = Receiver()
    home = base / "prefect"
    home.mkdir()
    with prefect_server(home) as url, temporary_settings(updates={PREFECT_API_URL: url}):
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        SeedvaultRepository(local_path=str(repo.root)).save("nt-repo", overwrite=True)
        down = AwsClientParameters(endpoint_url=f"http://127.0.0.1:{free_port()}")
        creds = AwsCredentials(aws_access_key_id="AKIANOTIFY", aws_secret_access_key=S3_SECRET,
                               region_name="us-east-1", aws_client_parameters=down)  # fmt: skip
        bucket = S3Bucket(bucket_name="down", credentials=creds)
        SeedvaultRepository(s3_bucket=bucket).save("nt-s3-down", overwrite=True)
        SeedvaultEncryptionKey(kind="raw", value=raw_key).save("nt-key", overwrite=True)
        good = {"host": pg_server.host, "port": pg_server.port, "user": pg_server.user, "password": pg_server.password}
        PostgresTarget(**good, database="nt_src").save("nt-pg", overwrite=True)
        PostgresTarget(**{**good, "port": free_port()}, database="nt_src").save("nt-pg-down", overwrite=True)
        CustomWebhookNotificationBlock(
            name="sv", url=f"{receiver.url}/hook", json_data={"subject": "{{subject}}", "text": "{{body}}"}
        ).save("nt-notify")
        common = {"repository": "nt-repo", "key": "nt-key", "notify_block": "custom-webhook/nt-notify"}
        backup = {**common, "retries": 0, "retry_delay_seconds": 0, "prune": False}
        soon = datetime.now(UTC) + timedelta(seconds=25)
        never = datetime.now(UTC) + timedelta(days=1)
        ids = {
            "backup-postgres/manual": _deploy(backup_postgres_flow, "manual", {**backup, "target": "nt-pg-down"}),
            "backup-postgres/upload": _deploy(backup_postgres_flow, "upload", {
                **backup, "repository": "nt-s3-down", "target": "nt-pg"}, [Interval(3600, anchor_date=soon)]),
            "backup-postgres/size": _deploy(backup_postgres_flow, "size", {
                **backup, "target": "nt-pg", "database": "nt_big", "label": "sizes"},
                [Interval(3600, anchor_date=soon)]),
            "dr-drill/tiny-rto": _deploy(dr_drill_flow, "tiny-rto", {
                **common, "target": "nt-pg", "database": "nt_src", "rto_target": 0.001}),
            "check-wal-freshness/stale": _deploy(check_wal_freshness_flow, "stale", {**common, "target": "nt-pg"}),
            "backup-postgres/scheduled-fail": _deploy(backup_postgres_flow, "scheduled-fail", {
                **backup, "target": "nt-pg-down"}, [Interval(3600, anchor_date=soon)]),
            "backup-postgres/scheduled-crash": _deploy(backup_postgres_flow, "scheduled-crash", {
                **backup, "target": "nt-pg", "database": "nt_lock"}, [Interval(3600, anchor_date=soon)]),
            "backup-postgres/missed": _deploy(backup_postgres_flow, "missed", {
                **backup, "target": "nt-pg"}, [Interval(3600, anchor_date=never)]),
        }  # fmt: skip
        from deployments import definitions

        definitions.WATCHED["backup-postgres/missed"] = (MISSED_WITHIN - 10, 10.0)
        missed = backup_postgres_flow.to_deployment(name="missed", schedules=[Interval(3600, anchor_date=never)])
        try:
            register_missed_run_automations("custom-webhook/nt-notify", [missed])
        finally:
            del definitions.WATCHED["backup-postgres/missed"]
        created = time.time()
        with process_worker(url, POOL, home):
            yield Env(url, receiver, ids, raw_key, pg_server, home, created)
    receiver.server.shutdown()


def test_one_message_per_failure_kind_for_manual_and_scheduled_runs(env: Env) -> None:
    # Hold a lock the scheduled crash run's dump will wait on, so that it can be killed mid-dump.
    lock = env.pg_server.connect("nt_lock", autocommit=False)
    lock.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
    try:
        # Started as the UI's "Run" does: a backup, a drill, a freshness check.
        ids = {name: env.run(name) for name in ("backup-postgres/manual", "dr-drill/tiny-rto",
                                                 "check-wal-freshness/stale")}  # fmt: skip
        # Created by the scheduler (no Scheduled event): a backup, an upload, a size anomaly, a kill -9.
        for name in ("backup-postgres/scheduled-fail", "backup-postgres/upload", "backup-postgres/size",
                     "backup-postgres/scheduled-crash"):  # fmt: skip
            ids[name] = env.scheduled_run(name)
        _kill_when_waiting(env, ids["backup-postgres/scheduled-crash"])
        runs = {name: env.wait_final(run_id) for name, run_id in ids.items()}
    finally:
        lock.rollback()
        lock.close()
    expected = {
        "backup-postgres/manual": ("backup-failed", "FAILED", "cannot connect to PostgreSQL", "27.1"),
        "backup-postgres/upload": ("upload-failed", "FAILED", "127.0.0.1", "27.2"),
        "backup-postgres/size": ("size-anomaly", "FAILED", "SizeAnomaly: backup ", "27.3"),
        "dr-drill/tiny-rto": ("drill-target-missed", "FAILED", "DrillTargetMissed: ", "27.6"),
        "check-wal-freshness/stale": ("wal-stale", "FAILED", "archive_mode", "27.7"),
        "backup-postgres/scheduled-fail": ("backup-failed", "FAILED", "cannot connect to PostgreSQL", "27.1"),
        "backup-postgres/scheduled-crash": ("crashed", "CRASHED", "Process exited with status code: -9", "27.10"),
    }
    time.sleep(3)  # every run is final: a second message for any of them (a duplicate path) would be here now
    for name, (kind, state, reason, section) in expected.items():
        run = runs[name]
        assert run["state"]["type"] == state, (name, run["state"])
        body = env.one_message(f"seedvault {kind}: {name} ", run, settle=0)
        assert reason in body["text"].split("Reason: ", 1)[1].split("\n", 1)[0], body
        assert f"Runbook: RUNBOOK.md section {section} " in body["text"]
        assert f"deployment {name}" in body["text"] and "Where: store postgres" in body["text"]

    # The deployment whose schedule never ran: one message from the proactive automation, within a minute of
    # the moment the backup was due (period + margin after the automation was made); it repeats once per empty
    # window (a reminder), never twice in one.
    deadline = time.monotonic() + MISSED_WITHIN + 60
    while not env.messages("missed-backup") and time.monotonic() < deadline:
        time.sleep(0.2)
    missed = env.messages("seedvault missed-backup: backup-postgres/missed")
    assert missed, "no missed-backup message"
    first_at, body = missed[0]
    assert first_at - (env.missed_created + MISSED_WITHIN) < 60
    assert all(b - a > MISSED_WITHIN * 0.8 for (a, _), (b, _) in zip(missed, missed[1:], strict=False))
    assert "no completed run of backup-postgres/missed within 30 s + 10 s margin" in body["text"]
    assert "RUNBOOK.md section 27.9" in body["text"] and "/deployments/deployment/" in body["text"]

    # The failed manual deployment, fixed: one "recovered" message; the next success sends nothing.
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from blocks import PostgresTarget

    with temporary_settings(updates={PREFECT_API_URL: env.url}):
        good = env.pg_server
        PostgresTarget(host=good.host, port=good.port, user=good.user, password=good.password,
                       database="nt_src").save("nt-pg-down", overwrite=True)  # fmt: skip
    recovered = env.wait_final(env.run("backup-postgres/manual"))
    assert recovered["state"]["type"] == "COMPLETED", recovered["state"]["message"]
    body = env.one_message("seedvault recovered: backup-postgres/manual ", recovered)
    assert f"after run {runs['backup-postgres/manual']['name']} had failed" in body["text"]
    again = env.wait_final(env.run("backup-postgres/manual"))
    assert again["state"]["type"] == "COMPLETED"
    time.sleep(3)
    assert len(env.messages("recovered")) == 1

    sent = json.dumps([body for _, _, body in env.receiver.received])
    logs = (env.home / "worker.log").read_text()
    for secret in (env.raw_key, env.pg_server.password, S3_SECRET):
        assert not any(form in sent or form in logs for form in process.secret_forms(secret))


def _kill_when_waiting(env: Env, run_id: str, timeout: float = 240) -> None:
    """SIGKILL the run's flow process once its dump waits on the test's lock (the worker then sees it die)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with env.pg_server.connect() as conn:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'nt_lock' AND wait_event_type = 'Lock'"
            ).fetchone()[0]
        if waiting:
            pids = _flow_processes(run_id)
            assert pids, f"no process of flow run {run_id} found"
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.3)
    raise AssertionError(f"flow run {run_id} never waited on the lock: {env.flow_run(run_id)['state']}")


def _flow_processes(run_id: str) -> list[int]:
    """The Python processes whose environment names the flow run (the engine the worker started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"PREFECT__FLOW_RUN_ID={run_id}".encode() in environ and b"python" in cmdline:
            found.append(int(entry.name))
    return found
