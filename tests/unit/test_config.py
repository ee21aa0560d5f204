"""Settings files that cannot be read are configuration errors (exit 3), in one line, never internal errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from seedvault import config
from seedvault.errors import ConfigError


def _load_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        config.load(env={"SEEDVAULT_CONFIG": str(path)})
    assert caught.value.exit_code == ConfigError.exit_code == 3
    line = caught.value.one_line()
    assert "\n" not in line and str(path) in line
    return caught.value


def test_unreadable_config_file_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "seedvault.toml"
    cfg.write_text('repository = "file:///x"\n')
    original = Path.read_text

    def denied(self: Path, *args, **kwargs) -> str:
        if self == cfg:
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    assert "is not readable (permission denied)" in _load_error(cfg).one_line()


def test_config_path_that_is_a_directory(tmp_path: Path) -> None:
    assert "cannot be read: is a directory" in _load_error(tmp_path).one_line()


def test_missing_config_file_still_says_so(tmp_path: Path) -> None:
    assert "does not exist" in _load_error(tmp_path / "nope.toml").one_line()


def test_the_replica_inherits_tuning_but_never_where_or_how_the_primary_stores():
    import json

    from seedvault.config import load
    from seedvault.errors import ConfigError

    env = {"SEEDVAULT_REPOSITORY": "s3://a/p", "SEEDVAULT_S3_ENDPOINT": "http://127.0.0.1:1",
           "SEEDVAULT_KEY_FILE": "/k", "SEEDVAULT_OBJECT_LOCK": "compliance", "SEEDVAULT_CHUNK_SIZE": "65536",
           "SEEDVAULT_RETENTION": '{"keep_within": "7d"}',
           "SEEDVAULT_REPLICA": json.dumps({"repository": "s3://b/q", "object_lock_days": 90})}  # fmt: skip
    primary = load(env=env)
    replica = primary.replica_settings()
    assert replica is not None and replica.is_replica and not primary.is_replica
    assert replica.repository == "s3://b/q" and replica.key_file == "/k" and replica.chunk_size == 65536
    assert replica.s3_endpoint is None and replica.object_lock == "off" and replica.retention is None
    assert replica.object_lock_days == 90
    assert primary.replica_settings("file:///x").repository == "file:///x"  # --to
    assert load(env={k: v for k, v in env.items() if k != "SEEDVAULT_REPLICA"}).replica_settings() is None
    for bad in ({"repository": "s3://b", "key_file": "/other"}, {"repository": "s3://b", "nonsense": 1}):
        with pytest.raises(ConfigError, match=r"\[replica\]: setting"):
            load(env={**env, "SEEDVAULT_REPLICA": json.dumps(bad)}).replica_settings()
    with pytest.raises(ConfigError, match="not valid JSON"):
        load(env={**env, "SEEDVAULT_REPLICA": "{"}).replica_settings()
    with pytest.raises(ConfigError, match="no \\[replica\\] repository"):
        load(env={k: v for k, v in env.items() if k != "SEEDVAULT_REPLICA"} | {"SEEDVAULT_USE_REPLICA": "on"})
    assert load(env={**env, "SEEDVAULT_USE_REPLICA": "on"}).repository == "s3://b/q"
