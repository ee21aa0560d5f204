"""``seedvault verify wal`` against a real archiving PostgreSQL (``wal_env``: archive_command = ``seedvault wal-push``
into a moto S3 bucket): every segment from the base backup's start is read back and authenticated; a missing and a
corrupted segment are each named, and the command exits 24.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.walenv import WalEnv, boto3_client, list_all


@pytest.fixture(scope="module")
def archived(wal_env: WalEnv) -> dict:
    """A base backup, then enough writes and switches that several segments follow it."""
    env = wal_env
    base = json.loads(env.cli("backup", "postgres-base", "--dsn", env.dsn(), "--json").stdout)
    for i in range(3):
        with env.connect() as conn:
            conn.execute(
                "INSERT INTO ev (ts, note) SELECT clock_timestamp(), %s FROM generate_series(1, 200)", (str(i),)
            )
        last = env.wait_archived()
    return {"base": base, "last": last}


def _segments(env: WalEnv) -> dict[str, str]:
    """Segment name -> S3 key (full segments only)."""
    out = {}
    for item in list_all(boto3_client(env), env.bucket, "repo/v1/wal/"):
        name = item["Key"].rsplit("/", 1)[-1]
        if len(name) == 24 and "/keys/" not in item["Key"] and "/history/" not in item["Key"]:
            out[name] = item["Key"]
    return out


def test_verify_wal_reads_every_segment_from_the_base_backup(wal_env: WalEnv, archived: dict) -> None:
    env = wal_env
    proc = env.cli("verify", "wal", "--json", check=False)
    assert proc.returncode == 0, proc.stderr
    (report,) = json.loads(proc.stdout)
    base = archived["base"]
    assert report["ok"] and report["problems"] == []
    assert report["system_id"] == base["system_id"] and report["base_backup"] == base["id"]
    assert report["first_segment"] == base["wal"][0] and report["last_segment"] >= archived["last"]
    assert report["timelines"] == [1]
    in_range = [n for n in _segments(env) if report["first_segment"] <= n <= report["last_segment"]]
    assert report["files"] >= len(in_range) >= 4  # every segment in range read (plus backup history files)
    assert report["raw_bytes"] >= len(in_range) * 16 * 1024 * 1024
    plain = env.cli("verify", "wal")
    assert f"system {base['system_id']}: ok" in plain.stdout


def test_verify_wal_names_a_missing_and_a_corrupted_segment(wal_env: WalEnv, archived: dict) -> None:
    env = wal_env
    client = boto3_client(env)
    first = archived["base"]["wal"][0]
    names = sorted(n for n in _segments(env) if first <= n <= archived["last"])
    missing, corrupted = names[1], names[2]
    keys = _segments(env)
    body = bytearray(client.get_object(Bucket=env.bucket, Key=keys[corrupted])["Body"].read())
    body[len(body) // 2] ^= 0x01  # one bit, in the middle of the chunk data
    client.put_object(Bucket=env.bucket, Key=keys[corrupted], Body=bytes(body))
    client.delete_object(Bucket=env.bucket, Key=keys[missing])
    proc = env.cli("verify", "wal", "--json", check=False)
    assert proc.returncode == 24, proc.stderr
    (report,) = json.loads(proc.stdout)
    problems = {p["name"]: p["problem"] for p in report["problems"]}
    assert set(problems) == {missing, corrupted}
    assert problems[missing] == "missing from the archive"
    assert "authentication" in problems[corrupted] or "corrupt" in problems[corrupted]
    assert not report["ok"]
    assert missing in proc.stderr and corrupted in proc.stderr and proc.stderr.count("\n") == 1
    plain = env.cli("verify", "wal", check=False)
    assert plain.returncode == 24 and f"  {missing}: missing from the archive" in plain.stdout
