"""A manifest write that fails on every try has one outcome: committed and said so, or not listed at all.

Real HTTP to moto through a loopback proxy (``tests/fixtures/faulty_s3.py``) that answers 500 to the manifest
PUT, either after passing it on (the write landed, every answer was lost: botocore's retries then meet the
stored object) or instead of passing it on. Before the fix ``put`` exited 15 while its backup was listed and
verified.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.faulty_s3 import proxied_repository
from tests.helpers import run_cli

MANIFEST = r"/backups/[^/]+/manifest\.json$"


@pytest.fixture
def proxied(moto_server, s3_bucket, tmp_path):
    repo = proxied_repository(moto_server.endpoint_url, s3_bucket, "commit", tmp_path, SEEDVAULT_S3_MAX_ATTEMPTS="3")
    with repo as (proxy, _, env):
        good = run_cli(["put", "--label", "good"], env, input=b"kept" * 100, check=True).stdout.decode().strip()
        yield proxy, env, good


def _listed(env) -> list[str]:
    return [row["id"] for row in json.loads(run_cli(["list", "--json"], env, check=True).stdout)]


def _stored(moto_server, bucket: str) -> list[str]:
    pages = moto_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="commit/")
    keys = (o["Key"] for page in pages for o in page.get("Contents", []))
    return sorted(k for k in keys if not k.startswith("commit/v1/audit/"))  # the audit log only grows


def test_a_manifest_that_lands_while_every_answer_fails_is_committed_and_said_so(proxied):
    proxy, env, good = proxied
    rule = proxy.add_rule("PUT", MANIFEST, forward=True)
    proc = run_cli(["put", "--label", "lost-answer", "--json"], env, input=b"payload" * 1000)
    assert proc.returncode == 0, proc.stderr.decode()
    assert rule.hits >= 2, "botocore retried the PUT"
    backup = json.loads(proc.stdout)["id"]
    assert "stored intact" in proc.stderr.decode()
    assert _listed(env) == [good, backup]
    proxy.rules.clear()
    run_cli(["verify", backup], env, check=True)
    assert run_cli(["get", backup], env, check=True).stdout == b"payload" * 1000


def test_a_manifest_that_never_lands_leaves_no_trace(proxied, moto_server, s3_bucket):
    proxy, env, good = proxied
    before = _stored(moto_server, s3_bucket)
    proxy.add_rule("PUT", MANIFEST, forward=False)
    proc = run_cli(["put", "--label", "never"], env, input=b"payload" * 1000)
    assert proc.returncode == 15, proc.stderr.decode()
    assert proc.stderr.decode().count("seedvault: error:") == 1
    proxy.rules.clear()
    assert _listed(env) == [good]
    assert _stored(moto_server, s3_bucket) == before, "data and key objects of the failed backup are removed"


def test_when_the_outcome_cannot_be_checked_the_error_says_the_backup_may_be_listed(proxied):
    proxy, env, good = proxied
    proxy.add_rule("PUT", MANIFEST, forward=True)
    proxy.add_rule("GET", MANIFEST, forward=False)  # the read-back fails too ...
    proxy.add_rule("DELETE", r"/commit/", forward=False)  # ... and so does removing it
    proxy.add_rule("POST", r"^/[^/]+/?$", forward=False)  # DeleteObjects: POST /<bucket>?delete
    proc = run_cli(["put", "--label", "unknown"], env, input=b"payload" * 1000)
    err = proc.stderr.decode()
    assert proc.returncode == 15, err
    assert "could not be checked" in err and "may be listed" in err and "seedvault verify" in err


def test_when_the_read_back_fails_but_removal_works_the_backup_is_not_listed(proxied):
    proxy, env, good = proxied
    proxy.add_rule("PUT", MANIFEST, forward=True)
    proxy.add_rule("GET", MANIFEST, forward=False)
    proc = run_cli(["put", "--label", "removed"], env, input=b"payload" * 1000)
    assert proc.returncode == 15, proc.stderr.decode()
    proxy.rules.clear()
    assert _listed(env) == [good]
