"""`seedvault cleanup` racing a `put` that is still being written (issue 14, item 1; pgBackRest #2622).

A cleanup whose grace is shorter than a running backup (``--grace 0``, or a multipart upload that runs
longer than the grace) used to remove that backup's objects. Now every writer holds a lease stored before
its first object, and cleanup lists objects before leases: the running backup is kept (reported as being
written), commits, and restores byte for byte. Should its objects vanish anyway (a cleanup that judged its
lease stale: a writer frozen longer than ``lease_stale``), the writer still refuses to commit with
ObjectVanished (exit 17) and leaves nothing listed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from seedvault.errors import ObjectNotFound, ObjectVanished
from seedvault.format import layout
from seedvault.ops.cleanup import cleanup
from seedvault.storage.s3 import translate_error
from tests.helpers import CLI, base_env, repo_files, run_cli

VANISHED = ObjectVanished.exit_code
BIG = os.urandom(12 << 20)  # incompressible: more than two 5 MiB parts


def _wait(what: str, ready: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _listed(env: dict[str, str]) -> list[str]:
    return [row["id"] for row in json.loads(run_cli(["list", "--json"], env, check=True).stdout)]


def _race(env: dict[str, str], first: bytes, rest: bytes, written: Callable[[], bool]) -> tuple[int, str, dict]:
    """Start a put fed by a pipe, send ``first``, run cleanup --grace 0 once ``written()``, then the rest."""
    proc = subprocess.Popen(
        [*CLI, "put", "--label", "race"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(first)
        proc.stdin.flush()
        _wait("the running put's objects", written)
        report = json.loads(run_cli(["cleanup", "--grace", "0", "--json"], env, check=True).stdout)
        with contextlib.suppress(BrokenPipeError):  # a put that already failed reads no more
            proc.stdin.write(rest)
            proc.stdin.close()
        err = proc.stderr.read()  # type: ignore[union-attr]
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode(), report


def _assert_kept_whole(rc: int, err: str, report: dict, env: dict[str, str], good_id: str, data: bytes) -> None:
    """The racing put was reported as being written, left alone, committed and reads back byte for byte."""
    assert rc == 0, err
    assert report["incomplete_backups"] == [] and report["partial_writes_aborted"] == [], report
    (held,) = report["kept_leased"]
    new_id = held.split(":", 1)[0]
    assert "backup put by" in held and "pid " in held, held
    assert sorted(_listed(env)) == sorted([good_id, new_id])
    out = run_cli(["get", new_id], env, check=True).stdout
    assert out == data
    assert run_cli(["verify", "--all"], env).returncode == 0
    leases = json.loads(run_cli(["leases", "--json"], env, check=True).stdout)
    assert leases["live"] == [] and leases["stale"] == []  # released at the commit (and by get)


# --- local driver -------------------------------------------------------------------------------------------
def test_local_cleanup_during_put_keeps_the_running_backup_whole(local_repo):
    good_id = run_cli(["put", "--label", "good"], local_repo.env, input=b"keep me" * 1000, check=True).stdout
    good_id = good_id.decode().strip()
    before = repo_files(local_repo.root)

    def key_written() -> bool:
        return any(k.startswith(layout.KEYS) and k not in before for k in repo_files(local_repo.root))

    first, rest = b"a" * (256 << 10), b"b" * (256 << 10)
    rc, err, report = _race(local_repo.env, first, rest, key_written)
    _assert_kept_whole(rc, err, report, local_repo.env, good_id, first + rest)


def test_commit_refuses_when_cleanup_removed_the_objects(local_repo):
    """Between the last data object and the manifest: the writer HEADs its objects and does not commit."""
    repo = local_repo.repository()
    writer = repo.begin(kind="stream", labels={"race": "1"})
    writer.write_object("data", io.BytesIO(b"x" * 10000))
    assert cleanup(repo, grace_seconds=0).kept_leased[0].startswith(writer.backup_id)  # its lease protects it
    report = cleanup(repo, grace_seconds=0, now=datetime.now(UTC) + timedelta(hours=1))  # the lease judged stale
    assert report.incomplete_backups == [writer.backup_id] and report.stale_leases
    with pytest.raises(ObjectVanished, match=r"its object v1/.* is gone before the commit") as info:
        writer.commit()
    assert writer.backup_id in str(info.value) and "concurrent 'seedvault cleanup'" in info.value.one_line()
    assert not writer.committed
    assert writer.backup_id not in repo.backup_ids()
    assert list(repo.storage.list(layout.backup_prefix(writer.backup_id))) == []
    assert list(repo.storage.list(layout.keys_prefix(writer.backup_id))) == []


def test_commit_refuses_when_only_the_key_object_is_gone(local_repo):
    repo = local_repo.repository()
    writer = repo.begin(kind="stream")
    writer.write_object("data", io.BytesIO(b"y" * 5000))
    repo.storage.delete([o.key for o in repo.storage.list(layout.keys_prefix(writer.backup_id))])
    with pytest.raises(ObjectVanished, match=r"keys/.* is gone"):
        writer.commit()
    assert writer.backup_id not in repo.backup_ids()
    assert list(repo.storage.list(layout.backup_prefix(writer.backup_id))) == []


def test_commit_refuses_a_data_object_of_another_size(local_repo):
    repo = local_repo.repository()
    writer = repo.begin(kind="stream")
    writer.write_object("data", io.BytesIO(b"z" * 5000))
    path = Path(local_repo.root) / layout.data_key(writer.backup_id, "data")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ObjectVanished, match="bytes, not the"):
        writer.commit()
    assert writer.backup_id not in repo.backup_ids()


def test_an_untouched_backup_still_commits_and_reads(local_repo):
    repo = local_repo.repository()
    with repo.begin(kind="stream") as writer:
        writer.write_object("data", io.BytesIO(b"ok" * 4000))
    assert writer.committed and writer.backup_id in repo.backup_ids()
    out = local_repo.root.parent / "out"
    run_cli(["get", writer.backup_id, "-o", str(out)], local_repo.env, check=True)
    assert out.read_bytes() == b"ok" * 4000


# --- S3 -----------------------------------------------------------------------------------------------------
@pytest.fixture
def s3_env(moto_server, s3_bucket, tmp_path):
    env = base_env(
        SEEDVAULT_REPOSITORY=f"s3://{s3_bucket}/race",
        SEEDVAULT_S3_ENDPOINT=moto_server.endpoint_url,
        SEEDVAULT_S3_PART_SIZE=str(5 << 20),
        SEEDVAULT_S3_MAX_ATTEMPTS="2",
    )
    key = tmp_path / "k"
    run_cli(["key", "generate", "-o", str(key)], env, check=True)
    return dict(env, SEEDVAULT_KEY_FILE=str(key))


def _s3_keys(moto_server, bucket: str) -> list[str]:
    client = moto_server.client()
    return [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]  # fmt: skip


def _s3_uploads(moto_server, bucket: str) -> list[str]:
    return [u["Key"] for u in moto_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def test_s3_cleanup_during_small_put_keeps_the_running_backup_whole(s3_env, moto_server, s3_bucket):
    """Below one part the data object is buffered in memory: cleanup sees only the key object, and its lease."""
    good_id = run_cli(["put", "--label", "good"], s3_env, input=b"keep" * 100, check=True).stdout.decode().strip()
    before = sorted(_s3_keys(moto_server, s3_bucket))

    def key_written() -> bool:
        return len([k for k in _s3_keys(moto_server, s3_bucket) if "/keys/" in k]) > 1

    first, rest = b"a" * (100 << 10), b"b" * (100 << 10)
    rc, err, report = _race(s3_env, first, rest, key_written)
    _assert_kept_whole(rc, err, report, s3_env, good_id, first + rest)
    assert len(_s3_keys(moto_server, s3_bucket)) > len(before)
    assert _s3_uploads(moto_server, s3_bucket) == []


def test_s3_cleanup_keeps_a_running_multipart_upload_and_the_put_commits(s3_env, moto_server, s3_bucket):
    good_id = run_cli(["put", "--label", "good"], s3_env, input=b"keep" * 100, check=True).stdout.decode().strip()

    def upload_running() -> bool:
        return bool(_s3_uploads(moto_server, s3_bucket))

    rc, err, report = _race(s3_env, BIG, BIG, upload_running)
    _assert_kept_whole(rc, err, report, s3_env, good_id, BIG + BIG)
    assert _s3_uploads(moto_server, s3_bucket) == []


@pytest.mark.parametrize("status", [404, 400])
def test_s3_no_such_upload_means_the_upload_vanished(status):
    """S3 answers a part or completion of an aborted multipart upload with NoSuchUpload: never a bare 10."""
    exc = ClientError({"Error": {"Code": "NoSuchUpload"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "UploadPart")
    err = translate_error(exc, bucket="b", key="v1/backups/x/data/data", endpoint="http://s3")
    assert isinstance(err, ObjectNotFound | ObjectVanished)  # the writer turns both into ObjectVanished


def test_s3_cleanup_judges_a_multipart_upload_by_its_newest_part(s3_storage):
    """An upload started before the grace but still receiving parts belongs to a running backup: kept."""
    from seedvault.repository import Repository

    key = layout.data_key(layout.new_backup_id(), "data")
    writer = s3_storage.open_write(key)

    def parts() -> int:
        found = [p for p in s3_storage.list_partial() if p.key == key]  # only this test's upload
        if not found:
            return 0
        answer = s3_storage._client.list_parts(Bucket=s3_storage.bucket, Key=f"repo/{key}", UploadId=found[0].handle)
        return len(answer.get("Parts", ()))

    try:
        writer.write(os.urandom(5 << 20))
        _wait("the first part", lambda: parts() == 1)
        time.sleep(2.5)
        writer.write(os.urandom(5 << 20))
        _wait("the second part", lambda: parts() == 2)
        (partial,) = [p for p in s3_storage.list_partial() if p.key == key]
        assert s3_storage.partial_activity(partial) - partial.started >= timedelta(seconds=2)
        report = cleanup(Repository(s3_storage, None), grace_seconds=2)
        assert report.partial_writes_aborted == []
        assert list(s3_storage.list_partial()) == [partial]
        time.sleep(2.5)  # now idle for longer than the grace: a leftover
        report = cleanup(Repository(s3_storage, None), grace_seconds=2)
        assert report.partial_writes_aborted == [key]
    finally:
        writer.abort()
    assert list(s3_storage.list_partial()) == []
