"""Issue 14.6a: the repository config is not authenticated, so its scrypt parameters have a floor and are pinned."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from seedvault.crypto.keys import KeySource
from seedvault.errors import FormatError, IntegrityError, WrongKey
from seedvault.format import layout
from seedvault.repository import Repository
from seedvault.storage.local import LocalStorage
from tests.helpers import base_env, run_cli

# The floor itself, so each derivation costs ~0.1 s rather than the default's ~0.3 s.
CHEAP = {"name": "scrypt", "n": 2**15, "r": 8, "p": 1}


def _passphrase_repo(tmp_path: Path) -> tuple[Path, KeySource]:
    root = tmp_path / "repo"
    pw = tmp_path / "pass"
    pw.write_text("config integrity passphrase\n")
    pw.chmod(0o600)
    config = {
        "format": "seedvault-repository",
        "version": 1,
        "id": "6c9e4d55-0d1f-4b7e-9a1e-3d2c1b0a9f8e",
        "created": "2026-12-02T02:00:00.000000Z",
        "kdf": {**CHEAP, "salt": base64.b64encode(b"the original salt").decode()},
    }
    LocalStorage(root, create=True).put_bytes(layout.CONFIG, json.dumps(config).encode())
    return root, KeySource("passphrase", origin="test passphrase", path=pw)


def _rewrite_kdf(root: Path, **kdf: object) -> None:
    path = root / layout.CONFIG
    config = json.loads(path.read_bytes())
    config["kdf"].update(kdf)
    path.write_text(json.dumps(config))


def _backup(repo: Repository) -> str:
    with repo.begin(kind="stream", labels={"name": "t"}) as b:
        b.write_object("data", io.BytesIO(b"backup bytes" * 100))
    return b.backup_id


@pytest.mark.parametrize("weak", [{"n": 2, "r": 1, "p": 1}, {"n": 2**14}, {"r": 4}, {"p": 0}])
def test_scrypt_parameters_below_the_floor_are_refused_on_read(tmp_path: Path, weak: dict) -> None:
    root, source = _passphrase_repo(tmp_path)
    _rewrite_kdf(root, **weak)
    with pytest.raises(FormatError) as err:
        Repository(LocalStorage(root), source).config()
    assert "kdf" in err.value.one_line() or "scrypt" in err.value.one_line()


def test_cli_refuses_a_weakened_config_with_one_error_line(tmp_path: Path) -> None:
    root, source = _passphrase_repo(tmp_path)
    _rewrite_kdf(root, n=2, r=1, p=1, salt=base64.b64encode(b"known salt!").decode())
    src = tmp_path / "in.bin"
    src.write_bytes(b"x" * 100)
    env = base_env(SEEDVAULT_REPOSITORY=f"file://{root}", SEEDVAULT_PASSPHRASE_FILE=str(source.path))
    proc = run_cli(["put", "--label", "t", "--input", str(src)], env)
    assert proc.returncode == FormatError.exit_code, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert lines[-1].startswith("seedvault: error:") and "below the floor" in lines[-1], lines
    assert not list((root / "v1").glob("keys/*/*"))  # nothing wrapped under the weak key


def test_a_config_whose_kdf_differs_from_the_backups_is_refused_before_wrapping(tmp_path: Path) -> None:
    root, source = _passphrase_repo(tmp_path)
    first = _backup(Repository(LocalStorage(root), source))
    # Above the floor, but another salt (one the writer of the bucket knows): the pin catches it.
    _rewrite_kdf(root, salt=base64.b64encode(b"an attacker's salt").decode())
    repo = Repository(LocalStorage(root), source)
    with pytest.raises(IntegrityError) as err:
        _backup(repo)
    assert first in err.value.one_line() and "tampered" in err.value.one_line()
    assert repo.backup_ids() == [first]
    assert [p.parent.name for p in (root / "v1" / "keys").glob("*/*")] == [first]  # no new key object


def test_the_pin_also_holds_when_the_newest_manifest_was_edited_to_match(tmp_path: Path) -> None:
    """Rewriting both the config and the newest manifest's key.kdf: the manifest no longer authenticates."""
    root, source = _passphrase_repo(tmp_path)
    first = _backup(Repository(LocalStorage(root), source))
    salt = base64.b64encode(b"an attacker's salt").decode()
    _rewrite_kdf(root, salt=salt)
    path = root / layout.manifest_key(first)
    manifest = json.loads(path.read_bytes())
    manifest["body"]["key"]["kdf"]["salt"] = salt
    path.write_text(json.dumps(manifest))
    repo = Repository(LocalStorage(root), source)
    with pytest.raises(WrongKey) as err:  # the rewritten config derives another key, which opens nothing
        _backup(repo)
    assert "tampered" in err.value.one_line()
    assert repo.backup_ids() == [first]


def test_an_unchanged_config_keeps_working(tmp_path: Path) -> None:
    root, source = _passphrase_repo(tmp_path)
    first = _backup(Repository(LocalStorage(root), source))
    second = _backup(Repository(LocalStorage(root), source))
    assert Repository(LocalStorage(root), source).backup_ids() == [first, second]
