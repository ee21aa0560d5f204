"""1 GiB mixed streams through the real CLI, local and S3 (multipart with parts smaller than the stream)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import base_env, pipe_through, run_cli

GIB = 1 << 30


@pytest.mark.slow
def test_one_gib_local_round_trip(local_repo):
    backup_id, sha_in, sha_out = pipe_through(["put", "--label", "big"], ["get"], local_repo.env, GIB)
    assert sha_in == sha_out
    body = json.loads(run_cli(["show", backup_id, "--json"], local_repo.env, check=True).stdout)
    assert body["raw_size"] == GIB and body["stored_size"] < GIB  # the compressible half shrank


@pytest.mark.slow
def test_one_gib_s3_round_trip_multipart(moto_server, s3_bucket, tmp_path):
    key = tmp_path / "k"
    env = base_env(
        SEEDVAULT_REPOSITORY=f"s3://{s3_bucket}/big",
        SEEDVAULT_S3_ENDPOINT=moto_server.endpoint_url,
        SEEDVAULT_KEY_FILE=str(key),
        SEEDVAULT_S3_PART_SIZE=str(16 << 20),
        SEEDVAULT_FAULT_TRACE=str(tmp_path / "trace"),
    )
    run_cli(["key", "generate", "-o", str(key)], env, check=True)
    backup_id, sha_in, sha_out = pipe_through(["put", "--label", "big"], ["get"], env, GIB)
    assert sha_in == sha_out
    parts = (tmp_path / "trace").read_text().split().count("s3-part-uploaded")
    assert parts >= 10, f"expected a multipart upload, saw {parts} parts"
    assert run_cli(["verify", backup_id], env).returncode == 0
