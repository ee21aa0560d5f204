"""Known key, passphrase and S3 secret never appear in any output, stored object or exception text.

Every CLI run below (successes and each error path) has its stdout and stderr searched for every
encoding of every secret (raw, hex, base64, URL-quoted); so are all objects the runs stored, locally
and in the S3 bucket, and the spawn audit of child command lines.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from seedvault import process
from seedvault.errors import ConfigError
from seedvault.format import layout
from tests.fixtures.s3 import S3_SECRET
from tests.helpers import base_env, run_cli

RAW_KEY = base64.b64encode(bytes(range(100, 132))).decode()
PASSPHRASE = "Tr0ub4dor&3-horse-staple-secret"
LEGACY_PASS = "legacy-pass/with+special=chars"


def _forms(secret: str | bytes) -> set[str]:
    return process.secret_forms(secret)


ALL_FORMS = set().union(
    _forms(RAW_KEY), _forms(base64.b64decode(RAW_KEY)), _forms(PASSPHRASE), _forms(S3_SECRET), _forms(LEGACY_PASS)
)


def _assert_clean(text: bytes | str, where: str) -> None:
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    for form in ALL_FORMS:
        assert form not in text, f"a secret leaked into {where}"


@pytest.fixture
def secret_files(tmp_path):
    key = tmp_path / "master.key"
    key.write_text(RAW_KEY + "\n")
    pw = tmp_path / "pass"
    pw.write_text(PASSPHRASE + "\n")
    legacy = tmp_path / "legacy.pass"
    legacy.write_text(LEGACY_PASS + "\n")
    return key, pw, legacy


def _run_all(env: dict[str, str], tmp_path: Path, storage_root: Path | None, legacy_pass: Path) -> list[bytes]:
    outputs: list[bytes] = []

    def run(args, input=None, env_=None):
        proc = run_cli(args, env_ or env, input=input)
        outputs.extend([proc.stdout if args[0] != "get" else b"", proc.stderr])
        return proc

    bid = run(["put", "--label", "secret-test"], input=b"payload" * 5000).stdout.decode().strip()
    assert bid, "put must succeed"
    for args in (
        ["list"],
        ["list", "--json"],
        ["show", bid],
        ["show", bid, "--json"],
        ["verify", "--all"],
        ["get", bid],
        ["cleanup", "--grace", "0"],
        ["key", "id"],
    ):
        assert run(args).returncode == 0
    # Error paths: missing backup, bad id, wrong key, corrupt key file, empty passphrase, legacy errors.
    assert run(["get", "20200101T000000Z-abcdef"]).returncode != 0
    assert run(["show", "nope"]).returncode != 0
    wrong = tmp_path / "wrong.key"
    wrong.write_text(base64.b64encode(b"\x01" * 32).decode())
    assert run(["get", bid], env_=dict(env, SEEDVAULT_KEY_FILE=str(wrong))).returncode != 0
    broken = tmp_path / "broken.key"
    broken.write_text(RAW_KEY[:-6] + "!!")  # invalid base64 that contains most of the real key
    assert run(["get", bid], env_=dict(env, SEEDVAULT_KEY_FILE=str(broken))).returncode != 0
    short = tmp_path / "short.key"
    short.write_text(base64.b64encode(base64.b64decode(RAW_KEY)[:31]).decode())
    assert run(["get", bid], env_=dict(env, SEEDVAULT_KEY_FILE=str(short))).returncode != 0
    empty = tmp_path / "empty.pass"
    empty.write_text("\n")
    penv = {k: v for k, v in env.items() if k != "SEEDVAULT_KEY_FILE"}
    assert run(["get", bid], env_=dict(penv, SEEDVAULT_PASSPHRASE_FILE=str(empty))).returncode != 0
    legacy_file = tmp_path / "old.enc"
    with open(legacy_file, "wb") as out:
        subprocess.run(
            ["openssl", "enc", "-aes-256-cbc", "-salt", "-pbkdf2", "-iter", "100000", "-pass", f"file:{legacy_pass}"],
            input=b"\x1f\x8b not gzip",
            stdout=out,
            check=True,
        )
    assert run(["legacy", "decrypt", str(legacy_file), "--passphrase-file", str(legacy_pass)]).returncode != 0
    assert run(["legacy", "decrypt", str(legacy_file), "--passphrase-file", str(wrong)]).returncode != 0
    if storage_root is not None:
        data = storage_root / layout.data_key(bid, "data")
        blob = data.read_bytes()
        data.write_bytes(blob[:-10])
        assert run(["verify", bid]).returncode != 0
        assert run(["get", bid]).returncode != 0
    return outputs


def test_no_secret_in_outputs_or_local_repository(secret_files, tmp_path):
    key, pw, legacy = secret_files
    audit = tmp_path / "spawn-audit.jsonl"
    root = tmp_path / "repo"
    env = base_env(SEEDVAULT_REPOSITORY=f"file://{root}", SEEDVAULT_KEY_FILE=str(key), SEEDVAULT_SPAWN_AUDIT=str(audit))
    for i, out in enumerate(_run_all(env, tmp_path, root, legacy)):
        _assert_clean(out, f"output #{i}")
    for path in root.rglob("*"):
        if path.is_file():
            _assert_clean(path.read_bytes(), f"stored object {path.name}")
    if audit.exists():
        _assert_clean(audit.read_text(), "child command lines")
    # The passphrase flavour: the scrypt-derived key never shows either.
    penv = base_env(SEEDVAULT_REPOSITORY=f"file://{tmp_path / 'prepo'}", SEEDVAULT_PASSPHRASE_FILE=str(pw))
    proc = run_cli(["put", "--label", "p"], penv, input=b"x" * 100, check=True)
    _assert_clean(proc.stdout + proc.stderr, "passphrase put output")
    for path in (tmp_path / "prepo").rglob("*"):
        if path.is_file():
            _assert_clean(path.read_bytes(), f"stored object {path.name}")


def test_no_secret_with_s3(secret_files, tmp_path, moto_server, s3_bucket):
    key, _, legacy = secret_files
    env = base_env(
        SEEDVAULT_REPOSITORY=f"s3://{s3_bucket}/sec",
        SEEDVAULT_S3_ENDPOINT=moto_server.endpoint_url,
        SEEDVAULT_KEY_FILE=str(key),
    )
    for i, out in enumerate(_run_all(env, tmp_path, None, legacy)):
        _assert_clean(out, f"output #{i}")
    # Unreachable endpoint and missing bucket: one clean line, no secret.
    for bad_env in (
        dict(env, SEEDVAULT_S3_ENDPOINT="http://127.0.0.1:9", SEEDVAULT_S3_MAX_ATTEMPTS="1"),
        dict(env, SEEDVAULT_REPOSITORY="s3://no-such-bucket-here/x"),
    ):
        proc = run_cli(["put", "--label", "x"], bad_env, input=b"abc")
        assert proc.returncode != 0 and proc.stderr.decode().count("\n") == 1, proc.stderr
        _assert_clean(proc.stdout + proc.stderr, "S3 error output")
    client = moto_server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket):
        for obj in page.get("Contents", []):
            _assert_clean(client.get_object(Bucket=s3_bucket, Key=obj["Key"])["Body"].read(), obj["Key"])


def test_exception_texts_carry_no_key_material(secret_files, tmp_path):
    from seedvault.crypto.keys import KeySource, parse_raw_key

    with pytest.raises(Exception) as info:
        parse_raw_key(RAW_KEY[:-4] + "****", "test file")
    _assert_clean(str(info.value) + repr(info.value), "exception")
    master = KeySource("raw", origin="t", value=RAW_KEY.encode()).resolve(None)
    _assert_clean(repr(master) + str(master), "MasterKey repr")


def test_spawn_refuses_secret_in_arguments_and_audits(tmp_path, monkeypatch):
    audit = tmp_path / "audit"
    monkeypatch.setenv(process.AUDIT_ENV, str(audit))
    process.register_secret(PASSPHRASE)
    for leaked in (PASSPHRASE, PASSPHRASE.encode().hex(), base64.b64encode(PASSPHRASE.encode()).decode()):
        with pytest.raises(ConfigError) as info:
            process.run(["echo", f"--password={leaked}"])
        _assert_clean(str(info.value), "refusal message")
    proc = process.run(["sh", "-c", 'test "$PGPASSWORD" = "$0"', PASSPHRASE[:3]], extra_env={"PGPASSWORD": "x"})
    assert proc.returncode != 0  # ran: argv clean, secret passed by environment only
    rows = [json.loads(line) for line in audit.read_text().splitlines()]
    assert rows and rows[-1]["env"] == ["PGPASSWORD"]
    _assert_clean(audit.read_text(), "audit")
