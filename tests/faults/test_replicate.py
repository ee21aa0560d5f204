"""``seedvault replicate`` (issue 17) on backups without a database: two moto servers (two regions) and local
repositories. Kill -9 at every phase, copies corrupted on arrival, the destination's own policy and lock,
server-side copy on one endpoint, and restores that fall back to the replica.

PITR and base backups from the copy, on a real PostgreSQL: tests/integration/test_replicate_pitr.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from seedvault import leases
from seedvault.config import load
from seedvault.format import layout
from seedvault.ops import prune as pr
from seedvault.ops.replicate import replicate
from seedvault.repository import Repository
from seedvault.retention import policies_of
from seedvault.storage.open import open_storage
from tests.fixtures.repo import new_key_file
from tests.fixtures.s3 import S3_REGION, free_loopback_port
from tests.helpers import base_env, run_cli

MiB = 1024 * 1024
PAYLOADS = {"small": os.urandom(3000), "multi": os.urandom(12 * MiB + 12345), "tiny": b""}


def _bucket(server, *, lock: bool = False) -> str:
    name = f"sv-rep-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True} if lock else {}))
    return name


def _env(tmp: Path, key: Path, repository: str, endpoint: str | None, replica: dict | None = None, **extra) -> dict:
    env = base_env(SEEDVAULT_REPOSITORY=repository, SEEDVAULT_KEY_FILE=str(key), SEEDVAULT_S3_REGION=S3_REGION,
                   SEEDVAULT_S3_PART_SIZE=str(5 * MiB), XDG_CACHE_HOME=str(tmp / "cache"), **extra)  # fmt: skip
    if endpoint:
        env["SEEDVAULT_S3_ENDPOINT"] = endpoint
    if replica:
        env["SEEDVAULT_REPLICA"] = json.dumps(replica)
    return env


def _ids(env: dict, *args: str) -> list[str]:
    out = run_cli([*args, "list", "--json"], env, check=True).stdout
    return [row["id"] for row in json.loads(out)]


def _sha(env: dict, bid: str, *args: str) -> str:
    out = run_cli([*args, "get", bid], env, check=True).stdout
    return hashlib.sha256(out).hexdigest()


@pytest.fixture(scope="module")
def source(moto_server, tmp_path_factory) -> dict:
    """A source repository in region A with three backups (one multipart), made once."""
    tmp = tmp_path_factory.mktemp("rep-src")
    key = new_key_file(tmp)
    env = _env(tmp, key, f"s3://{_bucket(moto_server)}/src", moto_server.endpoint_url)
    ids = {}
    for label, data in PAYLOADS.items():
        ids[label] = run_cli(["put", "--label", label], env, input=data, check=True).stdout.decode().strip()
    return {"env": env, "key": key, "ids": ids, "tmp": tmp}


def _replica(server, **extra) -> dict:
    return {"repository": f"s3://{_bucket(server)}/copy", "s3_endpoint": server.endpoint_url, "s3_region": S3_REGION,
            **extra}  # fmt: skip


def test_replicate_to_another_region_copies_everything_byte_identical(source, moto_server_b) -> None:
    replica = _replica(moto_server_b)
    env = dict(source["env"], SEEDVAULT_REPLICA=json.dumps(replica))
    status = run_cli(["replicate", "--status", "--json"], env)
    assert status.returncode == 0 or status.returncode == 67, status.stderr  # nothing there yet
    before = json.loads(status.stdout)
    assert len(before["backups_lacking"]) == 3 and before["lag_bytes"] > 12 * MiB
    bucket = replica["repository"][len("s3://") :].split("/")[0]
    assert moto_server_b.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # asking wrote nothing
    out = run_cli(["replicate", "--json"], env, check=True)
    report = json.loads(out.stdout)
    assert report["ok"] and sorted(report["copied_backups"]) == sorted(source["ids"].values())
    assert report["streamed"] > 0 and report["server_side"] == 0  # two endpoints: through this host
    assert _ids(env, "--replica") == _ids(env)
    for bid in source["ids"].values():  # every backup restores byte-identical from the copy
        assert _sha(env, bid, "--replica") == _sha(env, bid)
    assert run_cli(["--replica", "verify", "--all"], env).returncode == 0
    # The destination's own audit log and catalog: a replicate event naming the copies.
    events = json.loads(run_cli(["--replica", "audit", "--json"], env, check=True).stdout)["events"]
    rep = [e for e in events if e["operation"] == "replicate"]
    assert rep and sorted(rep[-1]["backup_ids"]) == sorted(source["ids"].values()) and rep[-1]["result"] == "ok"
    # A second run copies nothing and the status says nothing is lacking.
    again = json.loads(run_cli(["replicate", "--json"], env, check=True).stdout)
    assert again["copied_backups"] == [] and again["present_backups"] == 3 and again["objects"] == 0
    after = json.loads(run_cli(["replicate", "--status", "--json"], env, check=True).stdout)
    assert after["backups_lacking"] == [] and after["lag_seconds"] == 0 and not after["alerting"]
    text = run_cli(["replicate", "--status"], env, check=True).stdout.decode()
    assert "holds everything its policy keeps" in text


def test_server_side_copy_on_one_endpoint_multipart_and_the_destination_lock(source, moto_server, monkeypatch) -> None:
    from seedvault.storage import s3copy

    monkeypatch.setattr(s3copy, "SINGLE_COPY_MAX", 5 * MiB)  # the 12 MiB object takes the UploadPartCopy path
    for name, value in source["env"].items():
        if name.startswith(("SEEDVAULT_", "AWS_", "XDG_")):
            monkeypatch.setenv(name, value)
    settings = load()
    dst_settings = settings.replica_settings(f"s3://{_bucket(moto_server, lock=True)}/same")
    assert dst_settings is not None
    dst_settings.s3_endpoint, dst_settings.s3_region = moto_server.endpoint_url, S3_REGION
    dst_settings.object_lock, dst_settings.object_lock_days = "governance", 90
    dst_settings.s3_storage_class = "STANDARD_IA"  # the replica's own class
    src = Repository(open_storage(settings), settings.key_source())
    dst = Repository(open_storage(dst_settings, create=True), dst_settings.key_source())
    report = replicate(src, dst, policies_of(dst_settings))
    assert report.ok and report.server_side >= 3 and report.streamed >= 1  # data and manifests; key objects put
    big = source["ids"]["multi"]
    for bid in source["ids"].values():
        body = dst.manifest(bid)
        assert b"".join(dst.read_object(bid, body["objects"][0]["name"])) == PAYLOADS[
            next(k for k, v in source["ids"].items() if v == bid)]  # fmt: skip
    for key in (layout.manifest_key(big), layout.data_key(big, "data")):  # put and server-side copies alike
        mode, until = dst.storage.retention(key)  # the destination's own lock, from the backup's start
        assert mode == "GOVERNANCE" and until > datetime.now(UTC) + timedelta(days=80), key
    assert src.storage.retention(layout.manifest_key(big)) is None  # the source has none
    assert dst.storage.head(layout.data_key(big, "data")).storage_class == "STANDARD_IA"
    assert src.storage.head(layout.data_key(big, "data")).storage_class == "STANDARD"
    # Another account on the same endpoint: no server-side copy (its credentials could not read the source).
    import boto3

    other = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=S3_REGION,
                         aws_access_key_id="AKIAOTHERACCOUNT", aws_secret_access_key="other")  # fmt: skip
    assert not open_storage(dst_settings, client=other).can_copy_from(src.storage)
    assert dst.storage.can_copy_from(src.storage)
    # The destination's prune keeps what its lock holds although the manifest records no lock.
    policies = load(env={"SEEDVAULT_RETENTION": json.dumps({"keep_within": "0s", "min_verified": 0})})
    plan = pr.prune(dst, policies_of(policies), now=datetime.now(UTC) + timedelta(days=2))
    assert all(d.keep for d in plan.plan.backups) and any("Object Lock" in " ".join(d.reasons)
                                                           for d in plan.plan.backups)  # fmt: skip


KILL_POINTS = [
    "replicate-keys-copied",
    "replicate-object-streaming",
    "replicate-object-arrived:2",
    "replicate-before-manifest",
    "replicate-manifest-published",
]


def test_kill_9_at_every_phase_never_lists_an_incomplete_backup_and_a_rerun_converges(source, moto_server_b) -> None:
    env = dict(source["env"], SEEDVAULT_REPLICA=json.dumps(_replica(moto_server_b)))
    listed: list[list[str]] = []
    for point in KILL_POINTS:
        killed = run_cli(["replicate"], {**env, "SEEDVAULT_FAULT_KILL_AT": point})
        assert killed.returncode == -9, (point, killed.returncode, killed.stderr)
        ids = _ids(env, "--replica")
        listed.append(ids)
        if point == "replicate-before-manifest":  # the killed run's lease at the destination named its backups
            dst = Repository(open_storage(load(env=dict(env, SEEDVAULT_USE_REPLICA="on"))))
            held = [lease for lease in leases.read_leases(dst).stale if lease.operation == "replicate"]
            assert held and set(held[-1].backup_ids) - set(ids), held
        if ids:  # whatever is listed is complete: every object there and matching its manifest
            assert run_cli(["--replica", "verify", "--all"], env).returncode == 0, point
    assert listed[0] == [] and listed[-1], listed  # nothing before the first manifest; progress by the end
    final = json.loads(run_cli(["replicate", "--json"], env, check=True).stdout)
    assert final["ok"]
    assert _ids(env, "--replica") == _ids(env)
    for bid in source["ids"].values():
        assert _sha(env, bid, "--replica") == _sha(env, bid)
    # What the killed runs left unpublished is cleanup's, after its grace; nothing is listed half-copied.
    assert run_cli(["--replica", "verify", "--all"], env).returncode == 0


def test_a_copy_corrupted_on_arrival_is_retried_once_then_reported_and_never_published(source, moto_server_b) -> None:
    env = dict(source["env"], SEEDVAULT_REPLICA=json.dumps(_replica(moto_server_b)))
    once = run_cli(["replicate", "--json"], {**env, "SEEDVAULT_FAULT_CORRUPT_AT": "replicate-object-arrived:3"})
    assert once.returncode == 0, once.stderr
    report = json.loads(once.stdout)
    assert report["ok"] and len(report["retried"]) == 1  # detected on arrival, copied again, then right
    assert run_cli(["--replica", "verify", "--all"], env).returncode == 0
    # Corrupted every time: each backup is reported, none is published, and the run fails with exit 66.
    env2 = dict(source["env"], SEEDVAULT_REPLICA=json.dumps(_replica(moto_server_b)))
    bad = run_cli(["replicate"], {**env2, "SEEDVAULT_FAULT_CORRUPT_AT": "replicate-object-arrived"})
    assert bad.returncode == 66, bad.stderr
    err = bad.stderr.decode().strip().splitlines()
    assert err[-1].startswith("seedvault: error: ") and "wrong after a retry" in err[-1]
    assert _ids(env2, "--replica") == []
    # A damaged copy left at the destination by an earlier run (unpublished) is found, replaced and checked.
    fixed = json.loads(run_cli(["replicate", "--json"], env2, check=True).stdout)
    assert fixed["ok"] and len(fixed["copied_backups"]) == 3
    assert _ids(env2, "--replica") == _ids(env)


def test_the_destination_keeps_by_its_longer_policy_and_never_regains_what_it_pruned(tmp_path) -> None:
    key = new_key_file(tmp_path)
    src_env = _env(tmp_path, key, f"file://{tmp_path}/src", None)
    ids = [run_cli(["put", "--label", "a"], src_env, input=bytes([i]) * 1000, check=True).stdout.decode().strip()
           for i in range(3)]  # fmt: skip
    settings = load(env=src_env)
    src = Repository(open_storage(settings), settings.key_source())
    later = datetime.now(UTC) + timedelta(days=40)
    long_keep = settings.replica_settings(f"file://{tmp_path}/long")
    short_keep = settings.replica_settings(f"file://{tmp_path}/short")
    assert long_keep is not None and short_keep is not None
    long_keep.retention = {"keep_within": "90d", "min_verified": 0}
    short_keep.retention = {"keep_within": "1d", "keep_last": 1}  # min_verified 1: the copies were verified
    long_repo = Repository(open_storage(long_keep, create=True), long_keep.key_source())
    short_repo = Repository(open_storage(short_keep, create=True), short_keep.key_source())
    for repo, s in ((long_repo, long_keep), (short_repo, short_keep)):
        assert replicate(src, repo, policies_of(s)).copied_backups
    # The source prunes all but the newest (30 days, 40 days later) ...
    src_policy = policies_of(load(env={"SEEDVAULT_RETENTION": json.dumps({"keep_within": "30d", "keep_last": 1,
                                                               "min_verified": 0})}))  # fmt: skip
    assert pr.prune(src, src_policy, execute=True, now=later).deleted_backups == ids[:2]
    # ... the long-keeping destination keeps all three by its own policy, and its prune agrees.
    kept = pr.prune(long_repo, policies_of(long_keep), execute=True, now=later, state=pr.audit_state(long_repo))
    assert kept.deleted_backups == []
    assert long_repo.backup_ids() == ids
    # The short-keeping one prunes to one, and replication does not copy back what it pruned, even while the
    # source still holds it (a source that keeps longer than its replica).
    src2 = Repository(open_storage(load(env=dict(src_env, SEEDVAULT_REPOSITORY=f"file://{tmp_path}/long"))),
                      settings.key_source())  # fmt: skip
    assert (
        pr.prune(
            short_repo, policies_of(short_keep), execute=True, now=later, state=pr.audit_state(short_repo)
        ).deleted_backups
        == ids[:2]
    )
    again = replicate(src2, short_repo, policies_of(short_keep), now=later)
    assert again.copied_backups == [] and sorted(again.not_wanted) == ids[:2] and short_repo.backup_ids() == ids[2:]


def test_a_restore_falls_back_to_the_replica_when_the_first_repository_is_unreachable(source, moto_server_b) -> None:
    replica = _replica(moto_server_b)
    env = dict(source["env"], SEEDVAULT_REPLICA=json.dumps(replica))
    run_cli(["replicate"], env, check=True)
    down = dict(env, SEEDVAULT_S3_ENDPOINT=f"http://127.0.0.1:{free_loopback_port()}", SEEDVAULT_S3_MAX_ATTEMPTS="1")
    bid = source["ids"]["small"]
    got = run_cli(["get", bid], down)
    assert got.returncode == 0, got.stderr
    assert got.stdout == PAYLOADS["small"]
    err = got.stderr.decode()
    assert "is unreachable" in err and f"reading from the replica {replica['repository']}" in err
    # A writer never switches: a backup with the first repository down fails, naming it.
    put = run_cli(["put", "--label", "x"], down, input=b"x")
    assert put.returncode == 14 and "cannot reach" in put.stderr.decode()
    # Without a replica the restore fails as before, with the unreachable repository's one line.
    alone = {k: v for k, v in down.items() if k != "SEEDVAULT_REPLICA"}
    failed = run_cli(["get", bid], alone)
    assert failed.returncode == 14 and len(failed.stderr.decode().strip().splitlines()) == 1
    # Both unreachable: one line naming both.
    both = dict(
        down, SEEDVAULT_REPLICA=json.dumps({**replica, "s3_endpoint": f"http://127.0.0.1:{free_loopback_port()}"})
    )
    neither = run_cli(["get", bid], both)
    assert neither.returncode == 14 and "neither repository can be reached" in neither.stderr.decode()


def test_a_prune_running_at_the_destination_holds_replication_back(source, tmp_path) -> None:
    env = dict(source["env"], SEEDVAULT_REPLICA=json.dumps({"repository": f"file://{tmp_path}/replica"}))
    run_cli(["replicate", "--no-wal"], env, check=True)
    dst = Repository(open_storage(load(env=dict(env, SEEDVAULT_USE_REPLICA="on"))))
    extra = run_cli(["put", "--label", "later"], source["env"], input=b"later", check=True).stdout.decode().strip()
    with leases.HeldLease(dst, "prune", [], exclusive=True):  # a prune deleting only WAL names no backup
        held = run_cli(["replicate"], env)
        assert held.returncode == 60 and "a prune is running at the destination" in held.stderr.decode()
        assert extra not in _ids(env, "--replica")
    assert extra in json.loads(run_cli(["replicate", "--json"], env, check=True).stdout)["copied_backups"]


def test_dependencies_are_copied_first_whatever_the_chain_length() -> None:
    from seedvault.ops.replicate import copy_order

    bodies = {f"b{i:04d}": {"parent": f"b{i - 1:04d}" if i else None} for i in range(3000)}  # a long DIFF chain
    bodies["group"] = {"kind": "platform", "source": {}}
    order = copy_order(["b2999", "group", "b0005"], bodies)
    assert order[:3] == ["b0000", "b0001", "b0002"] and order.index("b2999") == 2999 and len(order) == 3001
    assert len(set(order)) == len(order)


def test_wal_fetch_that_fell_back_stops_recovery_instead_of_ending_it_early(tmp_path, monkeypatch) -> None:
    from seedvault.sources.postgres.wal import direct

    key = new_key_file(tmp_path)
    replica = json.dumps({"repository": f"file://{tmp_path}/replica"})
    for name, value in {"SEEDVAULT_REPOSITORY": f"file://{tmp_path}/gone", "SEEDVAULT_KEY_FILE": str(key),
                        "SEEDVAULT_REPLICA": replica}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    (tmp_path / "replica").mkdir()
    monkeypatch.setattr(direct, "FALLBACK_AFTER_SECONDS", 0.2)
    code = direct.fetch({}, "000000010000000000000003", str(tmp_path / "seg"), pgdata=None, system_id="42")
    assert code == direct.FETCH_FATAL  # not "missing": the replica may only lag
