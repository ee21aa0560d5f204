"""Failures that came out as the wrong error (issue 13.7).

* a key file that is a directory: an internal IsADirectoryError, now a configuration error (exit 3);
* a backup id with a trailing newline: "invalid object name" (exit 10), now not found (12); ``$`` in the
  patterns matched before a final newline, so every pattern that validates input is anchored with ``\\Z``;
* a mistyped endpoint ``http//KEY:SECRET@host``: echoed with its credentials, now with user-info removed;
* an S3 body cut short with a Content-Length to match: a truncated backup (23), now resumed (the stored
  object is intact), and a storage error (15) when the cut repeats.
"""

from __future__ import annotations

import os

import pytest

from seedvault.errors import BackupNotFound, ConfigError, TransientStorageError, UsageError
from seedvault.format import layout
from seedvault.sources.postgres.wal import names as wn
from seedvault.storage.s3 import S3Storage
from tests.faults.catalogued import invoke_checked
from tests.fixtures.faulty_s3 import proxied_repository
from tests.fixtures.s3 import S3_ACCESS_KEY_ID, S3_SECRET
from tests.helpers import base_env, run_cli


# --- a key file that is a directory ----------------------------------------------------------------------
@pytest.mark.parametrize("variable", ["SEEDVAULT_KEY_FILE", "SEEDVAULT_PASSPHRASE_FILE"])
def test_a_key_file_that_is_a_directory_is_a_config_error(local_repo, tmp_path, variable):
    env = {k: v for k, v in local_repo.env.items() if k != "SEEDVAULT_KEY_FILE"}
    env[variable] = str(tmp_path)
    invoke_checked(["put", "--label", "x"], local_repo.env, input=b"x", expect=0)
    for args in (["list"], ["put", "--label", "x"], ["key", "id"]):
        proc = run_cli(args, env, input=b"data")
        assert proc.returncode == ConfigError.exit_code, proc.stderr
        assert f"key file {tmp_path} is a directory" in proc.stderr.decode()


# --- ids and names with a trailing newline ---------------------------------------------------------------
def test_a_backup_id_with_a_trailing_newline_is_not_found(local_repo):
    good = invoke_checked(["put", "--label", "x"], local_repo.env, input=b"x", expect=0).stdout.decode().strip()
    for bad in (good + "\n", good + "\r\n", "\n" + good, good + " "):
        for args in (["get", bad], ["show", bad], ["verify", bad], ["delete", "--yes", bad]):
            res = invoke_checked(args, local_repo.env, expect=BackupNotFound.exit_code)
            assert "is not a backup id" in res.stderr or "not found" in res.stderr
    invoke_checked(["get", good], local_repo.env, expect=0)


def test_validating_patterns_refuse_a_final_newline():
    assert layout.is_backup_id("20261125T020000Z-3f9a1c")
    assert not layout.is_backup_id("20261125T020000Z-3f9a1c\n")
    assert not layout.OBJECT_NAME_RE.match("data\n") and layout.OBJECT_NAME_RE.match("data")
    assert not layout.KEY_ID_RE.match("k-0123456789abcdef\n") and layout.KEY_ID_RE.match("k-0123456789abcdef")
    with pytest.raises(UsageError):
        wn.classify("000000010000000000000001\n")
    with pytest.raises(UsageError):
        wn.classify("00000002.history\n")
    with pytest.raises(UsageError):
        wn.segno_of("000000010000000000000001\n", 16 << 20)


# --- credentials in mistyped URLs ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http//KEY:SECRET@host:9000", "http//***@host:9000"),
        ("http:/KEY:SECRET@host", "http:/***@host"),
        ("KEY:SECRET@host", "***@host"),
        ("https://KEY:SE/CR@ET@host/path?X-Amz-Signature=SECRET#SECRET", "https://***@host/path"),
        ("http://host:9000/path", "http://host:9000/path"),
    ],
)
def test_redact_url_drops_user_info_whatever_the_shape(url, shown):
    from seedvault.storage.base import redact_url

    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "endpoint", ["http//KEYID:SECRETKEY@host", "KEYID:SECRETKEY@host", "http//KEYID:SECRETKEY@[::1"]
)
def test_a_mistyped_endpoint_is_never_echoed_with_its_credentials(tmp_path, endpoint, s3_credentials):
    env = base_env(
        SEEDVAULT_REPOSITORY="s3://some-bucket/prefix",
        SEEDVAULT_S3_ENDPOINT=endpoint,
        SEEDVAULT_KEY_FILE=str(tmp_path / "no.key"),
    )
    proc = run_cli(["list"], env)
    text = proc.stderr.decode()
    assert proc.returncode == ConfigError.exit_code, text
    assert "SECRETKEY" not in text and "KEYID" not in text, text
    assert "***@" in text


@pytest.mark.parametrize(
    "repository",
    ["file://KEYID:SECRETKEY@host/srv/repo", "s3://[KEYID:SECRETKEY@bucket", "s3//KEYID:SECRETKEY@bucket/x"],
)
def test_a_mistyped_repository_url_is_never_echoed_with_its_credentials(tmp_path, repository):
    env = base_env(SEEDVAULT_REPOSITORY=repository, SEEDVAULT_KEY_FILE=str(tmp_path / "no.key"))
    proc = run_cli(["list"], env)
    text = proc.stderr.decode()
    assert proc.returncode == ConfigError.exit_code, text
    assert "SECRETKEY" not in text and "KEYID" not in text, text


# --- a short S3 body with a matching Content-Length --------------------------------------------------------
DATA_OBJECT = r"/backups/[^/]+/data/data$"


@pytest.fixture
def proxied(moto_server, s3_bucket, tmp_path):
    settings = {"SEEDVAULT_S3_MAX_ATTEMPTS": "2", "SEEDVAULT_CHUNK_SIZE": "16384"}
    with proxied_repository(moto_server.endpoint_url, s3_bucket, "short", tmp_path, **settings) as repo:
        yield repo


def test_a_body_cut_short_once_is_resumed_and_the_backup_restores(proxied):
    proxy, _, env = proxied
    data = os.urandom(200_000)
    backup = run_cli(["put", "--label", "short"], env, input=data, check=True).stdout.decode().strip()
    cut = proxy.cut_body(DATA_OBJECT, keep=50_000, times=1)
    proc = run_cli(["get", backup], env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == data and cut.hits == 1
    proxy.cut_body(DATA_OBJECT, keep=70_000, times=1)
    assert run_cli(["verify", backup], env).returncode == 0


def test_a_body_cut_short_every_time_is_a_storage_error_not_a_truncated_backup(proxied):
    proxy, _, env = proxied
    backup = run_cli(["put", "--label", "short"], env, input=os.urandom(100_000), check=True).stdout.decode().strip()
    proxy.cut_body(DATA_OBJECT, keep=0, times=-1)  # every answer, the resumes' too, ends at once
    proc = run_cli(["get", backup], env)
    assert proc.returncode == TransientStorageError.exit_code, proc.stderr.decode()
    assert "broke off" in proc.stderr.decode() and proc.stdout == b""


def test_the_s3_reader_knows_the_size_of_the_object_not_only_of_the_answer(proxied, s3_bucket):
    proxy, endpoint, _ = proxied
    storage = S3Storage(s3_bucket, "reader", endpoint_url=endpoint, region="us-east-1")
    data = os.urandom(300_000)
    storage.put_bytes("blob", data)
    storage.put_bytes("empty", b"")
    proxy.cut_body(r"/reader/blob$", keep=1000, times=2)
    with storage.open_read("blob") as fh:
        assert fh.read() == data
        assert fh.resumes == 2
    assert storage.get_bytes("empty") == b""  # no byte 0 to range over: one plain GET


def test_no_credential_of_the_s3_client_in_errors(proxied, s3_bucket):
    proxy, _, env = proxied
    proxy.cut_body(r"/short/", keep=0, times=-1)
    proc = run_cli(["list"], env)
    assert S3_SECRET.encode() not in proc.stderr and S3_ACCESS_KEY_ID.encode() not in proc.stderr
