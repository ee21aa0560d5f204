"""kill -9 of `seedvault put` in every phase: never a complete backup listed; cleanup restores the repository.

The engine marks phases with seedvault.faults.reached(); SEEDVAULT_FAULT_KILL_AT makes the process SIGKILL
itself at exactly that point, and SEEDVAULT_FAULT_TRACE records the phases reached, so each test asserts
which phase its kill hit.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from seedvault.format import layout
from tests.helpers import base_env, repo_files, run_cli

LOCAL_PHASES = ["backup-start", "key-object-written", "data-streaming", "data-complete", "manifest-writing"]
S3_PHASES = LOCAL_PHASES + ["s3-part-uploaded"]
PAYLOAD = os.urandom(12 << 20)  # incompressible: 12 MiB stored, more than two 5 MiB parts


def _crash_put(env: dict[str, str], phase: str, trace: Path) -> None:
    crash_env = dict(env, SEEDVAULT_FAULT_KILL_AT=phase, SEEDVAULT_FAULT_TRACE=str(trace))
    proc = run_cli(["put", "--label", "crash"], crash_env, input=PAYLOAD)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    reached = trace.read_text().split()
    assert reached[-1] == phase, f"killed at {reached[-1]}, wanted {phase}"


def _listed(env: dict[str, str]) -> list[str]:
    proc = run_cli(["list", "--json"], env, check=True)
    return [row["id"] for row in json.loads(proc.stdout)]


@pytest.mark.parametrize("phase", LOCAL_PHASES)
def test_kill_during_local_put(local_repo, tmp_path, phase):
    good = run_cli(["put", "--label", "good"], local_repo.env, input=b"keep me" * 1000, check=True)
    good_id = good.stdout.decode().strip()
    before = repo_files(local_repo.root)

    _crash_put(local_repo.env, phase, tmp_path / "trace")

    assert _listed(local_repo.env) == [good_id]
    after_crash = repo_files(local_repo.root)
    if phase not in ("backup-start",):
        assert after_crash != before, "the kill should have left something behind to clean up"
    report = json.loads(run_cli(["cleanup", "--grace", "0", "--json"], local_repo.env, check=True).stdout)
    assert repo_files(local_repo.root) == before
    if phase != "backup-start":
        assert report["incomplete_backups"] or report["partial_writes_aborted"]
    assert run_cli(["verify", "--all"], local_repo.env).returncode == 0


def test_cleanup_grace_period_protects_recent_leftovers(local_repo, tmp_path):
    run_cli(["put", "--label", "good"], local_repo.env, input=b"x", check=True)
    _crash_put(local_repo.env, "data-complete", tmp_path / "trace")
    before = repo_files(local_repo.root)
    report = json.loads(run_cli(["cleanup", "--json"], local_repo.env, check=True).stdout)  # default 24h
    assert report["kept_young"] and not report["objects_removed"]
    # Only the killed put's lease is gone: stale (its process is gone), reported and removed.
    assert len(report["stale_leases"]) == 1
    assert repo_files(local_repo.root) == {k: v for k, v in before.items() if not k.startswith(layout.LEASES)}


@pytest.fixture
def s3_env(moto_server, s3_bucket):
    return base_env(
        SEEDVAULT_REPOSITORY=f"s3://{s3_bucket}/crash",
        SEEDVAULT_S3_ENDPOINT=moto_server.endpoint_url,
        SEEDVAULT_S3_PART_SIZE=str(5 << 20),
        SEEDVAULT_S3_MAX_ATTEMPTS="2",
    )


def _s3_state(moto_server, bucket: str) -> tuple[dict[str, int], list[str]]:
    client = moto_server.client()
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            if "/v1/audit/" not in o["Key"]:  # the audit log only grows (tests/faults/test_audit.py)
                objects[o["Key"]] = o["Size"]
    uploads = [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return objects, uploads


@pytest.mark.parametrize("phase", S3_PHASES)
def test_kill_during_s3_put(s3_env, moto_server, s3_bucket, tmp_path, phase):
    key = tmp_path / "k"
    run_cli(["key", "generate", "-o", str(key)], s3_env, check=True)
    env = dict(s3_env, SEEDVAULT_KEY_FILE=str(key))
    good_id = run_cli(["put", "--label", "good"], env, input=b"keep" * 100, check=True).stdout.decode().strip()
    before = _s3_state(moto_server, s3_bucket)

    _crash_put(env, phase, tmp_path / "trace")

    assert _listed(env) == [good_id]
    objects, uploads = _s3_state(moto_server, s3_bucket)
    if phase == "s3-part-uploaded":
        assert uploads, "a kill mid-multipart leaves an unfinished upload"
    run_cli(["cleanup", "--grace", "0"], env, check=True)
    assert _s3_state(moto_server, s3_bucket) == before
    assert run_cli(["verify", "--all"], env).returncode == 0
