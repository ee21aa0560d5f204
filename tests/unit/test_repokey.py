"""The repository secret (seedvault.repokey): created once, the same for every reader, bound to its repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from seedvault import repokey
from seedvault.crypto.keys import KeySource, generate_raw_key
from seedvault.errors import AuthenticationFailed, KeyMissing, WrongKey
from seedvault.repository import Repository
from seedvault.storage.local import LocalStorage


def _repo(path, key_file) -> Repository:
    repo = Repository(LocalStorage(path), KeySource("raw", str(key_file), Path(key_file)))
    repo.config(create=True)
    return repo


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "key"
    path.write_text(generate_raw_key())
    path.chmod(0o600)
    return path


def test_created_once_and_read_back_by_another_process(tmp_path, key_file):
    with pytest.raises(KeyMissing):
        repokey.secret(_repo(tmp_path / "r", key_file))
    first = repokey.secret(_repo(tmp_path / "r", key_file), create=True)
    assert repokey.secret(_repo(tmp_path / "r", key_file)) == first
    audit, catalog = (repokey.subkey(_repo(tmp_path / "r", key_file), p) for p in ("audit", "catalog"))
    assert len({first, audit, catalog}) == 3


def test_another_key_and_another_repository_do_not_open_it(tmp_path, key_file):
    repokey.secret(_repo(tmp_path / "r", key_file), create=True)
    other = tmp_path / "other-key"
    other.write_text(generate_raw_key())
    other.chmod(0o600)
    with pytest.raises(WrongKey, match="not wrapped for key"):
        repokey.secret(_repo(tmp_path / "r", other), create=True)
    # The secret object copied into another repository (another id) fails authentication there.
    copy = _repo(tmp_path / "copy", key_file)
    repo = _repo(tmp_path / "r", key_file)
    (name,) = repokey.wrapped_for(repo)
    copy.storage.put_bytes(repokey.secret_path(name), repo.storage.get_bytes(repokey.secret_path(name)))
    with pytest.raises(AuthenticationFailed):
        repokey.secret(copy)
