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
