"""``verify --latest`` and ``verify --sample P`` (issue 14.5): scopes, rotating slices, every failure named."""

from __future__ import annotations

import json

from seedvault.errors import UsageError, VerificationFailed
from seedvault.format import layout
from seedvault.ops.verify import Sample, object_group
from tests.fixtures.repo import LocalRepo
from tests.helpers import run_cli


def _put(local_repo: LocalRepo, label: str, data: bytes) -> str:
    return run_cli(["put", "--label", label], local_repo.env, input=data, check=True).stdout.decode().strip()


def _objects(local_repo: LocalRepo, backup_id: str) -> list[str]:
    repo = local_repo.repository()
    return [o["name"] for o in repo.manifest(backup_id)["objects"]]


def _corrupt(local_repo: LocalRepo, backup_id: str, name: str) -> None:
    path = local_repo.root / layout.data_key(backup_id, name)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x55
    path.write_bytes(bytes(raw))


def test_latest_verifies_the_newest_of_each_kind_and_label(local_repo):
    a1 = _put(local_repo, "a", b"first a" * 100)
    b1 = _put(local_repo, "b", b"first b" * 100)
    a2 = _put(local_repo, "a", b"second a" * 100)
    _corrupt(local_repo, a1, _objects(local_repo, a1)[0])
    proc = run_cli(["verify", "--latest", "--json"], local_repo.env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [r["id"] for r in report["backups"]] == [b1, a2] and report["total"]["failed"] == 0
    human = run_cli(["verify", "--latest"], local_repo.env, check=True).stdout.decode()
    assert f"{a2}: ok" in human and f"{b1}: ok" in human and a1 not in human and "total: 2 of 2" in human
    _corrupt(local_repo, a2, _objects(local_repo, a2)[0])
    proc = run_cli(["verify", "--latest"], local_repo.env)
    assert proc.returncode == VerificationFailed.exit_code
    out, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert f"{a2}: FAILED" in out and f"{b1}: ok" in out
    assert f"1 of 2 backups failed verification; {a2}: " in stderr and b1 not in stderr


def test_sample_slices_partition_all_objects_and_find_corruption(local_repo):
    ids = [_put(local_repo, f"l{i % 3}", bytes([i]) * 5000 + b"x" * i) for i in range(10)]
    every = {(bid, name) for bid in ids for name in _objects(local_repo, bid)}
    slices = {}
    for k in range(1, 5):
        proc = run_cli(["verify", "--sample", "25", "--sample-group", str(k), "--json"], local_repo.env)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["sample"] == {"percent": 25, "group": k, "groups": 4}
        assert len(report["backups"]) == 10  # every manifest and key is still authenticated
        slices[k] = {(bid, name) for bid, name in every if object_group(bid, name, 4) == k}
        assert report["total"]["objects"] == len(slices[k])
        assert report["total"]["objects"] + report["total"]["skipped"] == len(every)
        again = json.loads(
            run_cli(["verify", "--sample", "25", "--sample-group", str(k), "--json"], local_repo.env).stdout
        )
        assert again == report  # deterministic for a given group
    assert set().union(*slices.values()) == every
    assert sum(len(s) for s in slices.values()) == len(every)  # disjoint
    human = run_cli(["verify", "--sample", "25", "--sample-group", "2"], local_repo.env, check=True).stdout.decode()
    assert "slice 2 of 4" in human and f"{len(slices[2])} objects" in human
    victim_id, victim_name = sorted(every)[3]
    _corrupt(local_repo, victim_id, victim_name)
    holder = object_group(victim_id, victim_name, 4)
    for k in range(1, 5):
        proc = run_cli(["verify", "--sample", "25", "--sample-group", str(k)], local_repo.env)
        if k == holder:
            assert proc.returncode == VerificationFailed.exit_code
            assert f"1 of 10 backups failed verification; {victim_id}: " in proc.stderr.decode()
        else:
            assert proc.returncode == 0, proc.stderr


def test_sample_group_rotates_with_the_utc_day():
    from datetime import UTC, datetime, timedelta

    day = datetime(2026, 1, 1, tzinfo=UTC)
    groups = [Sample.make(25, today=day + timedelta(days=n)).group for n in range(8)]
    assert sorted(groups[:4]) == [1, 2, 3, 4] and groups[4:] == groups[:4]
    assert Sample.make(30).groups == 4 and Sample.make(100).groups == 1 and Sample.make(1).groups == 100


def test_scopes_are_mutually_exclusive(local_repo):
    bid = _put(local_repo, "a", b"x")
    for args in (
        [bid, "--latest"],
        ["--all", "--latest"],
        ["--all", "--sample", "10"],
        [bid, "--sample", "10"],
        ["--sample", "0"],
        ["--sample", "101"],
        ["--sample-group", "1"],
        ["--sample", "50", "--sample-group", "3"],
        [],
    ):
        proc = run_cli(["verify", *args], local_repo.env)
        assert proc.returncode == UsageError.exit_code, args
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("seedvault: error:"), (args, lines)
