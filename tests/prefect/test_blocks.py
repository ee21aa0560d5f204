"""Blocks: secrets stay masked, reach the engine in memory only, and hand out working engine objects."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from seedvault import process
from seedvault.crypto.keys import generate_raw_key
from seedvault.errors import ConfigError, DatabaseUnreachable
from tests.fixtures.s3 import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET


def test_key_block_masks_the_key_and_registers_it_against_argv(prefect_harness):
    from blocks import SeedvaultEncryptionKey

    raw = generate_raw_key()
    SeedvaultEncryptionKey(kind="raw", value=raw).save("test-key", overwrite=True)
    block = SeedvaultEncryptionKey.load("test-key")
    assert raw not in repr(block) and raw not in str(block)
    source = block.key_source()
    assert source.value == raw.encode() and source.kind == "raw" and source.origin == "prefect block test-key"
    assert raw not in repr(source)
    with pytest.raises(ConfigError, match="a secret would appear in its arguments"):
        process.run(["echo", raw])


def test_key_block_rejects_a_bad_raw_key_without_echoing_it():
    from blocks import SeedvaultEncryptionKey

    with pytest.raises(ValidationError) as info:
        SeedvaultEncryptionKey(kind="raw", value="not-a-key-but-a-secret-phrase")
    assert "not valid base64" in str(info.value) and "secret-phrase" not in str(info.value)
    assert SeedvaultEncryptionKey(kind="passphrase", value="any passphrase will do").kind == "passphrase"


def test_passphrase_key_opens_a_repository(tmp_path):
    from blocks import SeedvaultEncryptionKey, SeedvaultRepository

    key = SeedvaultEncryptionKey(kind="passphrase", value="correct horse battery staple")
    repo = SeedvaultRepository(local_path=str(tmp_path / "repo")).open(key.key_source(), create=True)
    repo.config(create=True)
    assert repo.master.kind == "passphrase" and repo.master.key_id.startswith("k-")


def test_postgres_block_password_goes_to_libpq_not_conninfo(pg_server):
    from blocks import PostgresTarget

    block = PostgresTarget(host=pg_server.host, port=pg_server.port, password=pg_server.password, database="postgres")
    target = block.pg_target()
    assert pg_server.password not in repr(block) + repr(target) + target.conninfo()
    assert target.child_env()["PGPASSWORD"] == pg_server.password
    with target.connect() as conn:  # no PGPASSFILE in our environment: the block's password is what works
        assert conn.execute("SELECT 1").fetchone() == (1,)
    wrong = PostgresTarget(host=pg_server.host, port=pg_server.port, password="wrong-password-x1", database="postgres")
    with pytest.raises(DatabaseUnreachable) as info:
        wrong.pg_target().connect()
    assert "password authentication failed" in str(info.value) and "wrong-password-x1" not in str(info.value)


def test_repository_block_needs_exactly_one_location(tmp_path):
    from blocks import SeedvaultRepository

    with pytest.raises(ValidationError, match="exactly one of local_path or s3_bucket"):
        SeedvaultRepository()
    assert SeedvaultRepository(local_path=str(tmp_path)).url == f"file://{tmp_path}"


def test_s3_repository_block_uses_the_prefect_aws_client(prefect_harness, moto_server, s3_bucket):
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from blocks import SeedvaultRepository

    credentials = AwsCredentials(
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET,
        region_name=S3_REGION,
        aws_client_parameters=AwsClientParameters(endpoint_url=moto_server.endpoint_url),
    )
    bucket = S3Bucket(bucket_name=s3_bucket, bucket_folder="team/backups", credentials=credentials)
    SeedvaultRepository(s3_bucket=bucket, s3_part_size=5 * 1024 * 1024).save("test-s3-repo", overwrite=True)
    block = SeedvaultRepository.load("test-s3-repo")
    assert S3_SECRET not in repr(block) and block.url == f"s3://{s3_bucket}/team/backups"
    storage = block.storage()
    storage.put_bytes("probe/object", b"hello")
    assert storage.get_bytes("probe/object") == b"hello"
    keys = [o["Key"] for o in moto_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["team/backups/probe/object"]


def test_neo4j_block_masks_the_password_and_hands_it_to_bolt_only(prefect_harness, monkeypatch):
    import sys

    from blocks import Neo4jTarget

    password = "n30-graph-pw-" + generate_raw_key()[:8]
    Neo4jTarget(
        uri="neo4j://graph.internal:7687",
        password=password,
        command_prefix="kubectl exec -n data neo4j-0 --",
        neo4j_home="/var/lib/neo4j",
        stop_command="systemctl stop neo4j",
        start_command="systemctl start neo4j",
        edition="enterprise",
        backup_from="graph.internal:6362",
    ).save("test-neo4j", overwrite=True)
    block = Neo4jTarget.load("test-neo4j")
    job = block.neo4j_job("movies")
    assert password not in repr(block) + str(block) + repr(job) + block.display()
    assert job.database == "movies" and job.edition == "enterprise" and job.backup_from == "graph.internal:6362"
    assert type(job.graph).__name__ == "BoltGraph" and job.graph.database == "movies"  # connects on first use
    assert job.admin.admin(["--version"]) == [
        "kubectl", "exec", "-i", "-n", "data", "neo4j-0", "--",
        "env", "NEO4J_HOME=/var/lib/neo4j", "/var/lib/neo4j/bin/neo4j-admin", "--version",
    ]  # fmt: skip
    assert job.admin.config.stop_command == ["systemctl", "stop", "neo4j"]
    with pytest.raises(ConfigError, match="a secret would appear in its arguments"):
        process.run(["echo", password])

    # Without a URI there is no Bolt side at all: no counts, and the driver module is never needed.
    monkeypatch.delitem(sys.modules, "seedvault.sources.neo4j.bolt", raising=False)
    plain = Neo4jTarget(stop_command="fake-neo4j stop neo4j", start_command="fake-neo4j start neo4j")
    with plain.open_job() as bare:
        assert bare.graph is None and bare.edition is None and bare.database == "neo4j"
    assert "seedvault.sources.neo4j.bolt" not in sys.modules


def test_neo4j_block_rejects_bad_settings_without_echoing_secrets():
    from blocks import Neo4jTarget

    with pytest.raises(ValidationError) as info:
        Neo4jTarget(uri="neo4j://neo4j:hunter2-secret@graph:7687", password="x")
    assert "contains credentials" in str(info.value) and "hunter2" not in str(info.value)
    with pytest.raises(ValidationError, match="needs the password"):
        Neo4jTarget(uri="bolt://graph:7687")
    with pytest.raises(ValidationError, match="must start with one of"):
        Neo4jTarget(uri="http://graph:7474", password="x")
    with pytest.raises(ValidationError, match="docker exec"):
        Neo4jTarget(command_prefix="docker graph1")
    with pytest.raises(ValidationError, match="kubectl exec"):
        Neo4jTarget(command_prefix="kubectl exec -n data neo4j-0")
    with pytest.raises(ValidationError, match="both stop_command and start_command"):
        Neo4jTarget(stop_command="systemctl stop neo4j")
    with pytest.raises(ValidationError, match="not a valid command line"):
        Neo4jTarget(stop_command="sh -c 'unterminated", start_command="true")
    assert Neo4jTarget(command_prefix="ssh graph@db1").admin_config().prefix == ["ssh", "graph@db1"]
