"""The write policy (storage class per kind/label/WAL, Object Lock dates) and the manifest's ``object_lock`` field."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest

from seedvault.errors import AuthenticationFailed
from seedvault.format import manifest as mf
from seedvault.storage.base import ObjectLock
from seedvault.storagecost import WritePolicy, locked, manifest_lock, policy_of
from tests.fixtures.repo import LocalRepo


def test_most_specific_class_wins_and_lock_dates() -> None:
    policy = WritePolicy("STANDARD_IA", {"neo4j": "STANDARD", "label:monthly": "GLACIER_IR"}, "compliance", 30)
    assert policy.storage_class("neo4j", {"name": "monthly"}) == "GLACIER_IR"
    assert policy.storage_class("neo4j", {"name": "daily"}) == "STANDARD"
    assert policy.storage_class("put", {}) == "STANDARD_IA"
    assert policy.storage_class(None) == "STANDARD_IA"  # WAL without its own override: the default
    start = datetime(2026, 12, 3, 8, 0, 0, 123456, tzinfo=UTC)
    assert policy.lock(start) == ObjectLock("COMPLIANCE", datetime(2027, 1, 2, 8, 0, 0, tzinfo=UTC))
    assert WritePolicy().lock(start) is None and WritePolicy().backup("put", None, start).storage_class is None
    assert policy_of(object()) == WritePolicy()


def test_manifest_records_the_lock_and_checks_its_shape(local_repo: LocalRepo) -> None:
    repo = local_repo.repository()
    with repo.begin(kind="put", labels={"name": "x"}) as writer:
        writer.write_object("data", io.BytesIO(b"abc"))
    assert "object_lock" not in repo.manifest(writer.backup_id)  # no lock: the body is as before
    body = dict(repo.manifest(writer.backup_id))
    key = repo.data_key(writer.backup_id)
    for good in ({"mode": "GOVERNANCE", "retain_until": "2027-01-02T08:00:00Z"}, None):
        body["object_lock"] = good
        assert mf.open_(mf.seal(body, key), key, body["id"])["object_lock"] == good
    until = datetime(2027, 1, 2, 8, tzinfo=UTC)
    body["object_lock"] = {"mode": "GOVERNANCE", "retain_until": "2027-01-02T08:00:00Z"}
    assert manifest_lock(body) == ("GOVERNANCE", until)
    assert locked(manifest_lock(body), until - timedelta(seconds=1)) and not locked(manifest_lock(body), until)
    for bad in (
        {"mode": "governance", "retain_until": "2027-01-02T08:00:00Z"},
        {"mode": "GOVERNANCE", "retain_until": "2027-13-02T08:00:00Z"},
        {"mode": "GOVERNANCE", "retain_until": 1798185600},
        {"mode": "GOVERNANCE"},
        "GOVERNANCE",
    ):
        body["object_lock"] = bad
        with pytest.raises(AuthenticationFailed, match="object_lock"):
            mf.parse(mf.seal(body, key), body["id"])


def test_lock_longer_than_the_policy_is_reported() -> None:
    from seedvault.storagecost import lock_policy_conflict

    assert lock_policy_conflict("off", 90, timedelta(days=30)) is None
    assert lock_policy_conflict("governance", 30, timedelta(days=30)) is None
    assert "longer than keep_within (30 days)" in str(lock_policy_conflict("compliance", 90, timedelta(days=30)))
