"""The catalog's request counts on a moto S3 server: cold and warm stay flat while today's path grows 2N.

The goals (issue 14.2, ``bench/catalog.py`` measures them at 3,000 backups): warm <= 5 + one per backup added
since the cache was updated; cold <= N/100 + 5. Here, with a few hundred backups, the cold count must be the
design's constant (config, index listing, repository secret, the generation, the loose entries, one page of
``v1/keys/``, the answer's manifest and key object) and must not grow between N and 2N.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from seedvault import catalog
from seedvault.crypto.keys import KeySource
from seedvault.repository import Repository
from seedvault.storage.s3 import S3Storage
from tests.fixtures.repo import new_key_file
from tests.fixtures.s3 import TEST_PART_SIZE, MotoServer


class Counter:
    """Counts every HTTP request the storage's boto3 client sends (retries included)."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, **_: object) -> None:
        self.requests += 1


@pytest.fixture
def s3_setup(moto_server: MotoServer, s3_bucket: str, tmp_path: Path) -> Iterator[tuple[MotoServer, str, Path]]:
    yield moto_server, s3_bucket, new_key_file(tmp_path)


def _repo(moto_server: MotoServer, bucket: str, key: Path) -> tuple[Repository, Counter]:
    storage = S3Storage(bucket, prefix="repo", endpoint_url=moto_server.endpoint_url, part_size=TEST_PART_SIZE)
    counter = Counter()
    storage._client.meta.events.register("before-send.s3.*", counter)
    return Repository(storage, KeySource("raw", origin="test key", path=key)), counter


def _add(repo: Repository, n: int, start: int = 0) -> list[str]:
    ids = []
    for i in range(start, start + n):
        with repo.begin(kind="put", labels={"name": "t" if i % 2 else "u"}) as writer:
            writer.write_object("data", io.BytesIO(b"%d" % i))
        ids.append(writer.backup_id)
    return ids


def _latest(repo: Repository, cache: Path) -> str | None:
    entry, _ = catalog.Catalog(repo, cache=cache).latest(lambda b: b["labels"].get("name") == "t")
    return entry.backup_id if entry else None


def _measure(s3_setup, what) -> tuple[object, int]:
    repo, counter = _repo(*s3_setup)
    result = what(repo)
    return result, counter.requests


def test_request_counts_stay_flat(s3_setup, tmp_path: Path) -> None:
    writer_repo, _ = _repo(*s3_setup)
    counts: dict[str, int] = {}
    n = 150
    ids = _add(writer_repo, n)
    expected_t = [b for i, b in enumerate(ids) if i % 2][-1]

    def today(repo: Repository) -> str | None:
        entry, _ = repo.newest(lambda b: b["labels"].get("name") == "t")
        return entry.backup_id if entry else None

    answer, counts["today"] = _measure(s3_setup, today)
    assert answer == expected_t and counts["today"] >= 2 * n
    answer, counts["cold"] = _measure(s3_setup, lambda repo: _latest(repo, tmp_path / "cold"))
    assert answer == expected_t
    loose = catalog._list_index(writer_repo).loose
    assert loose < catalog.COMPACT_AT
    # config + index LIST + secret + generation + loose entries + v1/keys/ page + the answer's manifest and key
    assert counts["cold"] <= 7 + loose, counts

    answer, counts["warm0"] = _measure(s3_setup, lambda repo: _latest(repo, tmp_path / "cold"))
    assert answer == expected_t and counts["warm0"] <= 5, counts
    added = _add(writer_repo, 3, start=n)
    answer, counts["warm3"] = _measure(s3_setup, lambda repo: _latest(repo, tmp_path / "cold"))
    assert answer == added[1] and counts["warm3"] <= 5 + 3, counts

    # Twice as many backups: the cold count does not grow (one more loose entry at most).
    ids += added + _add(writer_repo, n - 3, start=n + 3)
    expected_t = [b for i, b in enumerate(ids) if i % 2][-1]
    answer, counts["cold2"] = _measure(s3_setup, lambda repo: _latest(repo, tmp_path / "cold2"))
    assert answer == expected_t
    loose2 = catalog._list_index(writer_repo).loose
    assert counts["cold2"] <= 7 + loose2 and counts["cold2"] - loose2 == counts["cold"] - loose, counts
    answer, counts["today2"] = _measure(s3_setup, today)
    assert answer == expected_t and counts["today2"] >= 4 * n, counts
    print(f"requests: {counts}")
