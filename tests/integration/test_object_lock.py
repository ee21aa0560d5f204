"""Storage classes and S3 Object Lock on write (issue 14.7), on a real moto server over HTTP.

Buckets here are created with ``ObjectLockEnabledForBucket=True`` (versioned, as S3 requires). moto 5 has
no GetObjectRetention, so retention is read with HEAD (``x-amz-object-lock-*``), which AWS answers alike;
and moto ignores the lock given to CreateMultipartUpload, which the driver notices and repairs (the test
shows both: the request carried the lock, and the object ends up locked).
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from seedvault.crypto.keys import KeySource
from seedvault.errors import ConfigError
from seedvault.format import layout
from seedvault.ops.transfer import DATA_OBJECT
from seedvault.repository import Repository
from seedvault.sources.postgres.wal.store import WalStore
from seedvault.storage.base import ObjectLock, WriteOptions
from seedvault.storage.s3 import S3Storage
from seedvault.storagecost import WritePolicy, manifest_lock
from tests.cli_runner import invoke
from tests.fixtures.repo import new_key_file
from tests.fixtures.s3 import TEST_PART_SIZE, MotoServer
from tests.helpers import base_env, run_cli
from tests.unit.test_wal_store import SYSID, write_seg

MiB = 1024 * 1024


@pytest.fixture
def lock_bucket(moto_server: MotoServer) -> Iterator[str]:
    """A fresh bucket with Object Lock enabled; its governance-locked versions are removed with bypass."""
    client = moto_server.client()
    name = f"sv-lock-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    try:
        yield name
    finally:
        try:
            for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
                for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    client.delete_object(
                        Bucket=name, Key=v["Key"], VersionId=v["VersionId"], BypassGovernanceRetention=True
                    )
        except ClientError:  # compliance-locked versions stay until moto exits
            pass
        client.close()


def storage_on(moto_server: MotoServer, bucket: str, policy: WritePolicy, **kw) -> S3Storage:
    storage = S3Storage(bucket, "repo", endpoint_url=moto_server.endpoint_url, part_size=TEST_PART_SIZE, **kw)
    storage.write_policy = policy
    return storage


def repository(storage: S3Storage, tmp_path: Path) -> Repository:
    return Repository(storage, KeySource("raw", origin="test key", path=new_key_file(tmp_path)))


def head(moto_server: MotoServer, bucket: str, key: str) -> dict:
    return moto_server.client().head_object(Bucket=bucket, Key=f"repo/{key}")


def backup(repo: Repository, data: bytes, *, kind: str = "put", name: str = "orders") -> dict:
    with repo.begin(kind=kind, labels={"name": name}) as writer:
        writer.write_object("data", io.BytesIO(data))
    assert writer.body is not None
    return writer.body


GOVERNANCE = WritePolicy(
    default_class="STANDARD",
    classes={"put": "STANDARD_IA", "label:monthly": "GLACIER_IR", "wal": "ONEZONE_IA"},
    lock_mode="governance",
    lock_days=30,
)


def test_locked_backup_carries_retention_and_class_and_reads_back(
    moto_server: MotoServer, lock_bucket: str, tmp_path: Path
) -> None:
    storage = storage_on(moto_server, lock_bucket, GOVERNANCE)
    calls: list[dict] = []
    storage._client.meta.events.register(
        "provide-client-params.s3.CreateMultipartUpload", lambda params, **_: calls.append(dict(params))
    )
    repo = repository(storage, tmp_path)
    small = backup(repo, b"tiny " * 100, name="monthly")
    big_data = os.urandom(11 * MiB)  # incompressible: three parts of 5 MiB, a multipart upload
    big = backup(repo, big_data, name="orders")
    before = datetime.now(UTC) + timedelta(days=29)

    for body, cls in ((small, "GLACIER_IR"), (big, "STANDARD_IA")):  # label beats kind; kind beats default
        recorded = manifest_lock(body)
        assert recorded is not None and recorded[0] == "GOVERNANCE" and recorded[1] > before
        for key in (layout.data_key(body["id"], "data"), layout.manifest_key(body["id"])):
            meta = head(moto_server, lock_bucket, key)
            assert meta["ObjectLockMode"] == "GOVERNANCE"
            assert meta["ObjectLockRetainUntilDate"] >= recorded[1]
            assert meta.get("StorageClass") == cls
            mode, until = storage.retention(key)  # what prune asks for objects without a manifest record
            assert mode == "GOVERNANCE" and until >= recorded[1]
        key_object = layout.key_object(body["id"], repo.master.key_id)
        assert "ObjectLockMode" not in head(moto_server, lock_bucket, key_object)  # key retirement deletes it
        assert storage.retention(key_object) is None
    assert calls and calls[0]["ObjectLockMode"] == "GOVERNANCE" and "ObjectLockRetainUntilDate" in calls[0]
    assert calls[0]["StorageClass"] == "STANDARD_IA"
    # the listing names each object's class (usage needs no HEAD per object)
    listed = {o.key: o.storage_class for o in storage.list(layout.backup_prefix(small["id"]))}
    assert set(listed.values()) == {"GLACIER_IR"}
    # round trip, authenticated
    fresh = Repository(storage_on(moto_server, lock_bucket, GOVERNANCE), repo.key_source)
    assert b"".join(fresh.read_object(big["id"], "data")) == big_data
    assert fresh.manifest(small["id"])["object_lock"] == small["object_lock"]


def test_locked_put_without_request_checksums_sends_content_md5(
    moto_server: MotoServer, lock_bucket: str, tmp_path: Path
) -> None:
    """S3 refuses a PUT with a retention that has neither Content-MD5 nor a checksum (moto too)."""
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint_url,
        region_name="us-east-1",
        config=Config(request_checksum_calculation="when_required", s3={"addressing_style": "path"}),
    )
    storage = storage_on(moto_server, lock_bucket, GOVERNANCE, client=client)
    lock = ObjectLock("GOVERNANCE", (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0))
    storage.put_bytes("v1/x/small", b"abc", options=WriteOptions("STANDARD", lock))
    with storage.open_write("v1/x/big", options=WriteOptions(None, lock)) as writer:
        writer.write(b"z" * (TEST_PART_SIZE + 10))
    for key in ("v1/x/small", "v1/x/big"):
        assert storage.retention(key) == ("GOVERNANCE", lock.retain_until)
    assert storage.get_bytes("v1/x/small") == b"abc"


def test_delete_hides_a_locked_object_but_its_version_stays(moto_server: MotoServer, lock_bucket: str) -> None:
    """Our delete (by key, no version) only adds a delete marker; the locked version cannot be deleted.

    So a delete "succeeds" and frees nothing: prune must skip locked backups (manifest ``object_lock``,
    ``Storage.retention``) instead of counting on an error; the lifecycle rule expires the version later.
    """
    storage = storage_on(moto_server, lock_bucket, GOVERNANCE)
    lock = ObjectLock("GOVERNANCE", (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0))
    storage.put_bytes("v1/backups/x/data/a", b"payload", options=WriteOptions(None, lock))
    storage.delete(["v1/backups/x/data/a"])
    assert list(storage.list("v1/backups/")) == []
    client = moto_server.client()
    versions = client.list_object_versions(Bucket=lock_bucket, Prefix="repo/v1/backups/")["Versions"]
    assert len(versions) == 1
    with pytest.raises(ClientError) as refused:
        client.delete_object(Bucket=lock_bucket, Key=versions[0]["Key"], VersionId=versions[0]["VersionId"])
    assert refused.value.response["Error"]["Code"] in ("AccessDenied", "403")
    got = client.get_object(Bucket=lock_bucket, Key=versions[0]["Key"], VersionId=versions[0]["VersionId"])
    assert got["Body"].read() == b"payload"


def test_wal_files_locked_epoch_keys_not(moto_server: MotoServer, lock_bucket: str, tmp_path: Path) -> None:
    storage = storage_on(moto_server, lock_bucket, GOVERNANCE)
    repo = repository(storage, tmp_path)
    repo.config(create=True)
    pushed = WalStore(repo, SYSID).push(write_seg(tmp_path, 1, 3))
    mode, until = storage.retention(pushed.key)
    assert mode == "GOVERNANCE" and until > datetime.now(UTC) + timedelta(days=29)
    assert head(moto_server, lock_bucket, pushed.key)["StorageClass"] == "ONEZONE_IA"
    epoch_keys = [o.key for o in storage.list(f"v1/wal/{SYSID}/keys/")]
    assert epoch_keys and all(storage.retention(k) is None for k in epoch_keys)
    assert storage.retention(layout.CONFIG) is None


def test_bucket_without_object_lock_is_refused_in_one_line(
    moto_server: MotoServer, s3_bucket: str, tmp_path: Path
) -> None:
    storage = storage_on(moto_server, s3_bucket, GOVERNANCE)
    with pytest.raises(ConfigError, match=f"bucket {s3_bucket} has no Object Lock enabled"):
        backup(repository(storage, tmp_path), b"x")
    assert [o.key for o in storage.list("v1/backups/")] + [o.key for o in storage.list("v1/keys/")] == []
    env = base_env(
        SEEDVAULT_REPOSITORY=f"s3://{s3_bucket}/cli",
        SEEDVAULT_S3_ENDPOINT=moto_server.endpoint_url,
        SEEDVAULT_KEY_FILE=str(new_key_file(tmp_path, "cli.key")),
        SEEDVAULT_OBJECT_LOCK="governance",
    )
    res = run_cli(["put", "--label", "x"], env=env, input=b"data")
    stderr = res.stderr.decode()
    assert res.returncode == ConfigError.exit_code, stderr
    assert stderr.strip().count("\n") == 0 and "has no Object Lock enabled" in stderr


def test_local_repository_refuses_a_lock_and_ignores_a_class(tmp_path: Path) -> None:
    from seedvault.storage.local import LocalStorage

    storage = LocalStorage(tmp_path / "repo")
    storage.put_bytes("v1/a", b"x", options=WriteOptions("GLACIER_IR"))
    assert storage.retention("v1/a") is None and storage.head("v1/a").storage_class is None
    lock = ObjectLock("COMPLIANCE", datetime.now(UTC) + timedelta(days=1))
    with pytest.raises(ConfigError, match="cannot lock objects"):
        storage.open_write("v1/b", options=WriteOptions(None, lock))


def test_cli_backup_under_lock_and_delete_refused(moto_server: MotoServer, lock_bucket: str, tmp_path: Path) -> None:
    """Through the CLI: settings in the environment, the manifest records the lock, `delete` refuses clearly."""
    env = base_env(
        SEEDVAULT_REPOSITORY=f"s3://{lock_bucket}/repo",
        SEEDVAULT_S3_ENDPOINT=moto_server.endpoint_url,
        SEEDVAULT_KEY_FILE=str(new_key_file(tmp_path)),
        SEEDVAULT_OBJECT_LOCK="compliance",
        SEEDVAULT_OBJECT_LOCK_DAYS="2",
        SEEDVAULT_STORAGE_CLASS="label:orders=STANDARD_IA",
    )
    put = invoke(["put", "--label", "orders"], env, input=b"precious" * 100)
    assert put.exit_code == 0, put.stderr
    bid = put.stdout.decode().strip()
    shown = invoke(["show", "--json", bid], env)
    assert shown.exit_code == 0, shown.stderr
    lock = json.loads(shown.stdout)["object_lock"]
    assert lock["mode"] == "COMPLIANCE"
    assert head(moto_server, lock_bucket, layout.data_key(bid, DATA_OBJECT))["StorageClass"] == "STANDARD_IA"
    refused = invoke(["delete", "--yes", bid], env)
    assert refused.exit_code == 2 and refused.stderr.count("\n") == 1
    assert f"backup {bid} is under S3 Object Lock (compliance) until {lock['retain_until']}" in refused.stderr
    listed = invoke(["list", "--json"], env)
    assert bid in listed.stdout.decode()


def test_prune_skips_backups_under_object_lock_and_says_so(
    moto_server: MotoServer, lock_bucket: str, tmp_path: Path
) -> None:
    """Issue 14 acceptance: prune keeps what a lock still protects, names the date, and reports the conflict."""
    from seedvault import retention as rt
    from seedvault.ops.prune import prune
    from seedvault.storagecost import lock_policy_conflict

    repo = repository(storage_on(moto_server, lock_bucket, GOVERNANCE), tmp_path)
    bodies = [backup(repo, f"day {i}".encode() * 100) for i in range(3)]
    policy = rt.Policy(keep_within=timedelta(0), keep_last=1, min_verified=0)
    conflict = lock_policy_conflict("governance", 30, policy.keep_within)
    report = prune(repo, rt.Policies(policy), execute=True, lock_conflict=conflict)
    assert report.deleted_backups == []
    decided = {d.name: d for d in report.plan.backups}
    for body in bodies[:2]:
        until = manifest_lock(body)[1].strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[index]
        assert decided[body["id"]].keep and decided[body["id"]].reasons == [f"Object Lock until {until}"]
        assert any(
            w.startswith(f"backup {body['id']} is outside the policy but under Object Lock until")
            for w in report.plan.warnings
        )
    assert conflict in report.plan.warnings
    assert [e.backup_id for e in repo.entries()] == [b["id"] for b in bodies]  # all still listed and readable
    # Thirty-one days on, the locks have run out: the two older backups go.
    later = prune(repo, rt.Policies(policy), execute=True, now=datetime.now(UTC) + timedelta(days=31))
    assert later.deleted_backups == [b["id"] for b in bodies[:2]]
