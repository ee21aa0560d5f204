"""``seedvault usage`` and ``seedvault lifecycle`` (issue 14.7), on a local repository and on a moto S3 bucket."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from seedvault.config import load
from seedvault.errors import ConfigError, UsageError
from seedvault.format import layout
from seedvault.ops.usage import GB, monthly_cost
from seedvault.repository import Repository
from seedvault.sources.postgres.wal.store import WalStore
from seedvault.storage.open import open_storage
from tests.cli_runner import invoke
from tests.fixtures.repo import LocalRepo, new_key_file
from tests.fixtures.s3 import MotoServer
from tests.helpers import base_env
from tests.unit.test_wal_store import SYSID, write_seg


def _put(env: dict[str, str], label: str, data: bytes) -> str:
    res = invoke(["put", "--label", label], env, input=data)
    assert res.exit_code == 0, res.stderr
    return res.stdout.decode().strip()


def _usage(env: dict[str, str]) -> dict:
    res = invoke(["usage", "--json"], env)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_usage_on_a_local_repository_counts_every_object_once(local_repo: LocalRepo) -> None:
    a = _put(local_repo.env, "orders", os.urandom(300_000))
    _put(local_repo.env, "orders", b"small")
    c = _put(local_repo.env, "monthly", b"x" * 1000)
    stray = local_repo.root / layout.data_key("20200101T000000Z-000aaa", "data")  # an interrupted backup
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left behind")
    report = _usage(local_repo.env)
    files = {
        p.relative_to(local_repo.root).as_posix(): p.stat().st_size for p in local_repo.root.rglob("*") if p.is_file()
    }
    assert report["total"]["objects"] == len(files) and report["total"]["bytes"] == sum(files.values())
    kinds, labels = report["kinds"], report["labels"]
    assert list(kinds) == ["put"] and kinds["put"]["objects"] == 9  # data, manifest, key object per backup
    size_of = lambda bid: sum(v for k, v in files.items() if layout.backup_id_of(k) == bid)  # noqa: E731
    assert labels["monthly"]["bytes"] == size_of(c)
    assert labels["orders"]["bytes"] > size_of(a) > 300_000
    assert report["incomplete_backups"] == {"objects": 1, "bytes": 11, "unpriced_bytes": 11, "usd_month": 0.0}
    assert report["other"]["objects"] == len([k for k in files if layout.backup_id_of(k) is None])
    assert report["storage_classes"]["(none)"]["unpriced_bytes"] == report["total"]["bytes"]  # file://: no cost
    assert report["authenticated"] is True and report["estimate"] is True
    keyless = {k: v for k, v in local_repo.env.items() if k != "SEEDVAULT_KEY_FILE"}
    plain = _usage(keyless)  # without a key: the manifests as stored, said so
    assert plain["authenticated"] is False and plain["kinds"] == kinds and plain["labels"] == labels
    assert "unauthenticated manifests" in invoke(["usage"], keyless).stdout.decode()
    manifest = local_repo.root / layout.manifest_key(c)
    manifest.write_bytes(manifest.read_bytes().replace(b"monthly", b"MONTHLY"))  # fails authentication
    damaged = _usage(local_repo.env)
    assert damaged["unreadable_backups"]["objects"] == 3 and "monthly" not in damaged["labels"]
    assert len(damaged["problems"]) == 1 and c in damaged["problems"][0]
    text = invoke(["usage"], local_repo.env)
    out = text.stdout.decode()
    assert text.exit_code == 0 and "no storage classes, so no cost estimate" in out and "orders" in out
    assert "incomplete backups (cleanup)" in out and "estimates" in out


def test_usage_on_s3_prices_each_storage_class(moto_server: MotoServer, s3_bucket: str, tmp_path: Path) -> None:
    env = base_env(
        SEEDVAULT_REPOSITORY=f"s3://{s3_bucket}/repo",
        SEEDVAULT_S3_ENDPOINT=moto_server.endpoint_url,
        SEEDVAULT_KEY_FILE=str(new_key_file(tmp_path)),
        SEEDVAULT_STORAGE_CLASS="label:monthly=GLACIER_IR,put=STANDARD_IA,wal=ONEZONE_IA",
        SEEDVAULT_PRICES="STANDARD_IA=0.5,GLACIER_IR=0.25",
    )
    daily = _put(env, "daily", os.urandom(200_000))
    monthly = _put(env, "monthly", b"tiny")
    settings = load(env=env)
    repo = Repository(open_storage(settings), settings.key_source())
    WalStore(repo, SYSID).push(write_seg(tmp_path, 1, 5))
    listing = list(repo.storage.list(""))
    report = _usage(env)

    assert report["total"]["objects"] == len(listing)
    classes = report["storage_classes"]
    by_class: dict[str, list[int]] = {}
    for info in listing:
        by_class.setdefault(info.storage_class, []).append(info.size)
    assert {c: v["bytes"] for c, v in classes.items()} == {c: sum(s) for c, s in by_class.items()}
    assert set(classes) == {"STANDARD", "STANDARD_IA", "GLACIER_IR", "ONEZONE_IA"}  # key objects: STANDARD
    prices = {"STANDARD": 0.023, "STANDARD_IA": 0.5, "GLACIER_IR": 0.25, "ONEZONE_IA": 0.01}
    for cls, sizes in by_class.items():  # 128 KiB minimum per object in the IA classes
        expected = sum(max(s, 128 * 1024 if cls != "STANDARD" else 0) for s in sizes) / GB * prices[cls]
        assert classes[cls]["usd_month"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert report["total"]["usd_month"] == pytest.approx(sum(v["usd_month"] for v in classes.values()), abs=1e-5)
    assert list(report["wal"]) == [str(SYSID)] and report["wal"][str(SYSID)]["objects"] >= 2  # segment + epoch key
    assert set(report["labels"]) == {"daily", "monthly"} and report["kinds"]["put"]["objects"] == 6
    monthly_objects = [o for o in listing if layout.backup_id_of(o.key) == monthly]
    assert report["labels"]["monthly"]["bytes"] == sum(o.size for o in monthly_objects)
    assert daily in {layout.backup_id_of(o.key) for o in listing if o.storage_class == "STANDARD_IA"}
    out = invoke(["usage"], env).stdout.decode()
    assert "estimated" in out and "USD/month" in out and "GLACIER_IR" in out and str(SYSID) in out


def test_monthly_cost_minimum_sizes() -> None:
    assert monthly_cost(GB, "STANDARD", {"STANDARD": 0.023}) == pytest.approx(0.023)
    assert monthly_cost(1, "STANDARD_IA", {"STANDARD_IA": 1.0}) == pytest.approx(128 * 1024 / GB)
    assert monthly_cost(1, "STANDARD", {"STANDARD": 1.0}) == pytest.approx(1 / GB)
    assert monthly_cost(10, "SNOW", {"STANDARD": 1.0}) is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SEEDVAULT_S3_STORAGE_CLASS", "DEEP_ARCHIVE", "cannot be read without a restore request"),
        ("SEEDVAULT_S3_STORAGE_CLASS", "FAST", "unknown s3 storage class 'FAST'"),
        ("SEEDVAULT_STORAGE_CLASS", "wal=GLACIER", "storage_class.wal: GLACIER objects cannot be read"),
        ("SEEDVAULT_STORAGE_CLASS", "neo4j", "expected key=value pairs"),
        ("SEEDVAULT_PRICES", "STANDARD=cheap", "is not a number"),
        ("SEEDVAULT_OBJECT_LOCK", "on", "object_lock must be one of off, governance, compliance"),
        ("SEEDVAULT_OBJECT_LOCK_DAYS", "0", "object_lock_days must be"),
    ],
)
def test_bad_storage_cost_settings_are_refused_up_front(
    local_repo: LocalRepo, name: str, value: str, message: str
) -> None:
    res = invoke(["usage"], {**local_repo.env, name: value})
    assert res.exit_code == ConfigError.exit_code and message in res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("seedvault: error: ")


def test_storage_class_table_in_the_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "seedvault.toml"
    config.write_text(
        's3_storage_class = "standard"\nobject_lock = "compliance"\nobject_lock_days = 45\n'
        '[storage_class]\nwal = "STANDARD"\n"postgres-logical" = "STANDARD_IA"\n"label:orders-monthly" = "GLACIER_IR"\n'
        "[prices]\nGLACIER_IR = 0.0036\n"
    )
    settings = load(env={"SEEDVAULT_CONFIG": str(config)})
    assert settings.s3_storage_class == "STANDARD" and settings.object_lock == "compliance"
    assert settings.storage_class["label:orders-monthly"] == "GLACIER_IR" and settings.prices == {"GLACIER_IR": 0.0036}
    from seedvault.storagecost import WritePolicy

    policy = WritePolicy.from_settings(settings)
    assert policy.storage_class("postgres-logical", {"name": "orders-monthly"}) == "GLACIER_IR"
    assert policy.storage_class("postgres-logical", {"name": "orders"}) == "STANDARD_IA"
    assert policy.storage_class("neo4j", {"name": "graph"}) == "STANDARD"
    assert policy.storage_class(None) == "STANDARD"


# --- lifecycle -------------------------------------------------------------------------------------------
def _lifecycle(env: dict[str, str]) -> dict:
    res = invoke(["lifecycle", "--json"], env)
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def test_lifecycle_is_accepted_by_s3_and_never_expires_current_objects(moto_server: MotoServer, s3_bucket: str) -> None:
    env = base_env(
        SEEDVAULT_REPOSITORY=f"s3://{s3_bucket}/team/repo",
        SEEDVAULT_S3_ENDPOINT=moto_server.endpoint_url,
        SEEDVAULT_S3_STORAGE_CLASS="STANDARD_IA",
        SEEDVAULT_STORAGE_CLASS="wal=GLACIER_IR,label:monthly=GLACIER_IR",
        SEEDVAULT_OBJECT_LOCK_DAYS="30",
        SEEDVAULT_CLEANUP_GRACE="36h",
    )
    config = _lifecycle(env)
    client = moto_server.client()
    client.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration=config)
    stored = client.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]
    rules = {r["ID"]: r for r in config["Rules"]}
    assert {r["ID"] for r in stored} == set(rules)
    for rule in config["Rules"]:  # prune alone decides what goes: no age-based expiry of current objects
        assert set(rule.get("Expiration", {})) <= {"ExpiredObjectDeleteMarker"}
        prefix = rule["Filter"].get("Prefix", rule["Filter"].get("And", {}).get("Prefix"))
        assert prefix.startswith("team/repo/")
    assert rules["seedvault-abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}
    assert rules["seedvault-noncurrent-versions"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 37}
    wal = rules["seedvault-wal-storage-class"]
    assert wal["Filter"]["And"]["Prefix"] == "team/repo/v1/wal/"
    assert wal["Transitions"] == [{"Days": 0, "StorageClass": "GLACIER_IR"}]
    backups = rules["seedvault-backups-storage-class"]  # no override is warmer than STANDARD_IA
    assert backups["Transitions"] == [{"Days": 30, "StorageClass": "STANDARD_IA"}]
    text = invoke(["lifecycle"], env).stdout.decode()
    assert "# - no Expiration of current objects" in text and "prune" in text
    assert json.loads(text[text.index("{") :]) == config


def test_lifecycle_leaves_backups_alone_when_an_override_is_warmer(moto_server: MotoServer, s3_bucket: str) -> None:
    env = base_env(
        SEEDVAULT_REPOSITORY=f"s3://{s3_bucket}",
        SEEDVAULT_S3_STORAGE_CLASS="GLACIER_IR",
        SEEDVAULT_STORAGE_CLASS="neo4j=STANDARD",
    )
    config = _lifecycle(env)
    ids = {r["ID"] for r in config["Rules"]}
    assert "seedvault-backups-storage-class" not in ids
    assert "seedvault-wal-storage-class" in ids  # WAL follows the default class, GLACIER_IR
    assert all(
        r["Filter"].get("Prefix", r["Filter"].get("And", {}).get("Prefix", "")).startswith(("", "v1/"))
        for r in config["Rules"]
    )
    text = invoke(["lifecycle"], env).stdout.decode()
    assert "it would also move the backups of neo4j" in text


def test_lifecycle_refuses_a_local_repository(local_repo: LocalRepo) -> None:
    assert invoke(["init"], local_repo.env).exit_code == 0
    res = invoke(["lifecycle"], local_repo.env)
    assert res.exit_code == UsageError.exit_code and "lifecycle rules are for s3:// repositories" in res.stderr
