"""Acceptance: transient faults are retried as designed and the backup restores identical to a fault-free one.

Two faults are injected into one backup-postgres run against S3 (moto over HTTP, behind a loopback proxy):

* the dump connection is dropped midway: ``pg_terminate_backend()`` on pg_dump's backend while it copies
  ``public.blobs`` (the repository block uses zstd level 9 there, slow enough that the copy is seen in
  ``pg_stat_activity`` for about a second, because the bounded pipes hold pg_dump back);
* an S3 part upload fails once: the proxy answers the first ``UploadPart`` of each multipart upload created
  after the dump was dropped with ``500 InternalError``.

Expected: the stream subflow ran twice (a pipe-fed stage is never retried alone), the lost part was retried
by botocore inside the second attempt (which therefore did not restart), exactly one backup is listed and no
leftover of the failed attempt remains, and the backup's dump yields exactly the same SQL (``pg_restore -f -``)
as a fault-free backup of the same database, and restores to identical table contents.
"""

from __future__ import annotations

import threading
import time

import pytest

from flows.backup_postgres import backup_postgres_flow
from flows.restore_postgres import restore_postgres_flow
from seedvault import process
from seedvault.format import layout
from seedvault.sources.postgres.binaries import find_client_binaries
from tests.fixtures.faulty_s3 import ProxyServer
from tests.fixtures.s3 import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET
from tests.prefect.api import as_fields, child_flow_runs, everything_stored, latest_table, task_runs
from tests.prefect.conftest import table_hashes

MiB = 1024 * 1024


class DumpKiller(threading.Thread):
    """Terminates pg_dump's backend once, while it streams ``public.blobs``; then calls ``then()``."""

    def __init__(self, pg_server, database: str, then) -> None:
        super().__init__(name="dump-killer", daemon=True)
        self.pg_server, self.database, self.then = pg_server, database, then
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        with self.pg_server.connect() as conn:
            while not self.stop.is_set():
                row = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_dump' AND datname = %s"
                    " AND state = 'active' AND query ILIKE 'COPY public.blobs %%'",
                    (self.database,),
                ).fetchone()
                if row:
                    conn.execute("SELECT pg_terminate_backend(%s)", row)
                    self.killed = row[0]
                    self.then()
                    return
                time.sleep(0.002)


def _dump_sql(repo, backup_id: str, major: int) -> bytes:
    """The SQL script pg_restore makes of the backup's dump object: what a restore would execute."""
    archive = b"".join(repo.read_object(backup_id, "dump"))
    pg_restore = find_client_binaries(major).tool("pg_restore")
    proc = process.run([pg_restore, "--file=-"], input=archive, capture_output=True, check=True)
    # Newer pg_dump versions add a random \restrict key to scripts; it is not content.
    return b"\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith((b"\\restrict", b"\\unrestrict")))


@pytest.fixture
def faulty_s3_repo(saved_blocks, moto_server, s3_bucket):
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from blocks import SeedvaultRepository

    proxy_server = ProxyServer(moto_server.endpoint_url)
    with proxy_server as proxy:
        credentials = AwsCredentials(
            aws_access_key_id=S3_ACCESS_KEY_ID,
            aws_secret_access_key=S3_SECRET,
            region_name=S3_REGION,
            aws_client_parameters=AwsClientParameters(endpoint_url=proxy_server.endpoint_url),
        )
        SeedvaultRepository(
            s3_bucket=S3Bucket(bucket_name=s3_bucket, bucket_folder="backups", credentials=credentials),
            s3_part_size=5 * MiB,
            s3_max_concurrency=2,
            zstd_level=9,
        ).save("faulty-s3-repo", overwrite=True)
        yield "faulty-s3-repo", proxy


def test_faults_are_retried_and_restore_matches_fault_free_backup(
    saved_blocks, source_db, pg_server, faulty_s3_repo, scratch_db, monkeypatch, tmp_path
):
    from blocks import SeedvaultEncryptionKey, SeedvaultRepository

    audit = tmp_path / "spawn-audit.jsonl"
    monkeypatch.setenv(process.AUDIT_ENV, str(audit))
    repo_name, proxy = faulty_s3_repo
    reference = backup_postgres_flow(**saved_blocks.params(), verify=False)

    params = {**saved_blocks.params(), "repository": repo_name}
    for _ in range(4):  # the injection is timing-bound (public.blobs streams for a fraction of a second)
        killer = DumpKiller(pg_server, source_db.name, then=proxy.fail_next_part)
        killer.start()
        try:
            state = backup_postgres_flow(**params, retry_delay_seconds=0, return_state=True)
        finally:
            killer.stop.set()
            killer.join(10)
        summary = state.result()
        if killer.killed:
            break
        # Missed: this run saw no fault and is an ordinary good backup; remove it and inject again.
        missed = SeedvaultRepository.load(repo_name).open(SeedvaultEncryptionKey.load(saved_blocks.key).key_source())
        missed.delete_backup(summary["id"])
    assert killer.killed, "pg_dump was never seen streaming public.blobs (4 tries), so the dump was not dropped"

    # The dump drop failed attempt 1 of the whole stream; attempt 2 streamed from scratch and completed.
    (child,) = child_flow_runs(state.state_details.flow_run_id)
    assert child.run_count == 2 and summary["attempt"] == 2
    reads = sorted((t for t in task_runs(child.id) if t.name == "read-dump"), key=lambda t: t.start_time)
    assert [t.state.type.value for t in reads] == ["FAILED", "COMPLETED"]
    assert "pg_dump failed" in reads[0].state.message
    assert all(t.run_count == 1 for t in task_runs(child.id)), "no streaming stage may retry on its own"

    # The S3 part failed once and was retried by the client alone, within attempt 2.
    (failed,) = proxy.injected()
    retried = [r for r in proxy.requests if r.part == failed.part and r.status == 200]
    assert len(retried) == 1, "botocore must retry the failed part by itself"
    assert failed.part[0] in proxy.armed_uploads

    # Only the good backup is listed; the failed attempt left nothing behind (objects or multipart uploads).
    repo = SeedvaultRepository.load(repo_name).open(SeedvaultEncryptionKey.load(saved_blocks.key).key_source())
    assert [e.backup_id for e in repo.entries()] == [summary["id"]]
    assert {layout.backup_id_of(o.key) for o in repo.storage.list("v1/")} - {None} == {summary["id"]}
    assert list(repo.storage.list_partial()) == []
    assert summary["objects"]["dump"]["stored_size"] > 5 * MiB, "the dump must be a multipart upload"

    # Byte-identical restore: the same SQL as the fault-free backup, and the same table contents.
    ref_repo = SeedvaultRepository.load(saved_blocks.repository).open(
        SeedvaultEncryptionKey.load(saved_blocks.key).key_source()
    )
    assert _dump_sql(repo, summary["id"], pg_server.major) == _dump_sql(ref_repo, reference["id"], pg_server.major)
    assert summary["table_rows"] == reference["table_rows"]
    report = restore_postgres_flow(**params, database=scratch_db)
    assert report["backup_id"] == summary["id"] and report["checksums_verified"] == len(summary["table_rows"])
    assert table_hashes(pg_server, scratch_db) == table_hashes(pg_server, source_db.name)

    # The artifact exists and holds the counts, and shows the retried stream.
    fields = as_fields(latest_table(f"seedvault-backup-{source_db.name.replace('_', '-')}")[0])
    assert fields["id"] == summary["id"] and fields["stream attempts"] == 2
    assert fields["rows public.blobs"] == source_db.counts["blobs"]
    assert fields["rows public.orders"] == source_db.counts["orders"]

    # No secret in anything Prefect stored (parameters, states, logs, artifacts) nor in any child's argv.
    stored = everything_stored() + audit.read_text()
    for secret in (saved_blocks.raw_key, pg_server.password, S3_SECRET):
        assert not any(form in stored for form in process.secret_forms(secret))
    assert "pg_dump" in audit.read_text()
