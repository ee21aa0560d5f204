"""Bad input gives one clear line and the catalogued exit code, from the real CLI process."""

from __future__ import annotations

from seedvault.errors import BackupNotFound, ConfigError, KeyMissing, StorageUnreachable, UsageError
from tests.helpers import base_env, run_cli


def _one_line(proc) -> str:
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("seedvault: error: ")
    return lines[0]


def test_missing_backup(local_repo):
    run_cli(["put", "--label", "x"], local_repo.env, input=b"a", check=True)
    proc = run_cli(["get", "20250101T000000Z-000000"], local_repo.env)
    assert proc.returncode == BackupNotFound.exit_code and "not found" in _one_line(proc)


def test_no_repository_and_no_key(tmp_path):
    proc = run_cli(["list"], base_env())
    assert proc.returncode == ConfigError.exit_code and "SEEDVAULT_REPOSITORY" in _one_line(proc)
    proc = run_cli(["put", "--label", "x"], base_env(SEEDVAULT_REPOSITORY=f"file://{tmp_path}/r"), input=b"a")
    assert proc.returncode == KeyMissing.exit_code and "SEEDVAULT_KEY_FILE" in _one_line(proc)
    proc = run_cli(["list"], base_env(SEEDVAULT_REPOSITORY=f"file://{tmp_path}/nothing-here"))
    assert proc.returncode == StorageUnreachable.exit_code and "does not exist" in _one_line(proc)


def test_unreachable_s3_endpoint_is_quick_and_clear(tmp_path, s3_credentials):
    key = tmp_path / "k"
    env = base_env(
        SEEDVAULT_REPOSITORY="s3://bucket/p",
        SEEDVAULT_S3_ENDPOINT="http://127.0.0.1:9",
        SEEDVAULT_KEY_FILE=str(key),
        SEEDVAULT_S3_MAX_ATTEMPTS="1",
    )
    run_cli(["key", "generate", "-o", str(key)], env, check=True)
    proc = run_cli(["put", "--label", "x"], env, input=b"abc", timeout=60)
    assert proc.returncode == StorageUnreachable.exit_code and "127.0.0.1:9" in _one_line(proc)


def test_usage_errors(local_repo):
    proc = run_cli(["verify"], local_repo.env)
    assert proc.returncode == UsageError.exit_code
    proc = run_cli(["key", "generate", "-o", str(local_repo.key_file)], local_repo.env)
    assert proc.returncode == ConfigError.exit_code and "never overwrites" in _one_line(proc)


def test_config_file_and_precedence(tmp_path, local_repo):
    cfg = tmp_path / "seedvault.toml"
    cfg.write_text(f'repository = "file://{tmp_path}/from-toml"\nkey_file = "{local_repo.key_file}"\n')
    env = base_env(SEEDVAULT_CONFIG=str(cfg))
    run_cli(["put", "--label", "t"], env, input=b"toml", check=True)
    assert (tmp_path / "from-toml" / "v1" / "repository.json").exists()
    # The environment beats the file; an option beats the environment.
    run_cli(
        ["put", "--label", "t"], dict(env, SEEDVAULT_REPOSITORY=f"file://{tmp_path}/from-env"), input=b"e", check=True
    )
    assert (tmp_path / "from-env" / "v1" / "repository.json").exists()
    run_cli(
        ["--repository", f"file://{tmp_path}/from-opt", "put", "--label", "t"],
        dict(env, SEEDVAULT_REPOSITORY=f"file://{tmp_path}/from-env"),
        input=b"o",
        check=True,
    )
    assert (tmp_path / "from-opt" / "v1" / "repository.json").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text("bogus_setting = 1\n")
    proc = run_cli(["list"], base_env(SEEDVAULT_CONFIG=str(bad)))
    assert proc.returncode == ConfigError.exit_code and "bogus_setting" in _one_line(proc)


def test_unreadable_config_file_is_exit_3_in_one_line(tmp_path):
    proc = run_cli(["list"], base_env(SEEDVAULT_CONFIG=str(tmp_path)))  # a directory: read_text raises OSError
    line = _one_line(proc)
    assert proc.returncode == ConfigError.exit_code, proc.stderr
    assert f"config file {tmp_path} cannot be read" in line and "internal error" not in line
