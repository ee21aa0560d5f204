"""The storage contract (see seedvault/storage/base.py), checked for every driver, plus S3 specifics.

The S3 driver runs against a real moto server over HTTP (tests/fixtures/s3.py), so the requests are the
ones AWS or MinIO would see. Where a test needs a failure moto cannot produce (a broken body stream, a
server without conditional writes, a slow part upload, a signature error), it wraps the boto3 client the
driver is given and changes only that one call.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import boto3
import pytest
import urllib3
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, IncompleteReadError, ResponseStreamingError

import seedvault.storage.s3 as s3mod
from seedvault.errors import (
    ObjectExists,
    ObjectNotFound,
    PermissionDenied,
    SeedvaultError,
    StorageError,
    StorageUnreachable,
    TransientStorageError,
)
from seedvault.faults import KILL_ENV, TRACE_ENV
from seedvault.storage.base import TEMP_MARKER, Storage
from seedvault.storage.local import LocalStorage
from seedvault.storage.s3 import S3Storage
from tests.fixtures.s3 import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET, TEST_PART_SIZE, free_loopback_port

MiB = 1024 * 1024
PART = TEST_PART_SIZE  # 5 MiB, the S3 minimum


def payload(size: int, seed: int = 0) -> bytes:
    """Distinct content per seed (so a replaced object is told apart from its original)."""
    return seed.to_bytes(4, "big")[:size] + os.urandom(max(0, size - 4))


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "repo")
    return request.getfixturevalue("s3_storage")


def is_s3(storage: Storage) -> bool:
    return isinstance(storage, S3Storage)


def write_chunked(writer, data: bytes, chunk: int) -> None:
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        writer.write(view[start : start + chunk])


def read_chunked(storage: Storage, key: str, chunk: int = 1 * MiB + 3) -> bytes:
    out = bytearray()
    with storage.open_read(key) as fh:
        while True:
            piece = fh.read(chunk)
            if not piece:
                return bytes(out)
            out += piece


def wait_for_uploaded_parts(storage: S3Storage, full_key: str, count: int, timeout: float = 10) -> None:
    """Wait (through the public S3 API) until an unfinished multipart upload holds ``count`` parts."""
    raw = boto3.client("s3", endpoint_url=storage._client.meta.endpoint_url, region_name=S3_REGION)
    deadline = time.monotonic() + timeout
    while True:
        uploads = raw.list_multipart_uploads(Bucket=storage.bucket, Prefix=full_key).get("Uploads", [])
        if uploads:
            parts = raw.list_parts(Bucket=storage.bucket, Key=full_key, UploadId=uploads[0]["UploadId"])
            if len(parts.get("Parts", [])) >= count:
                return
        assert time.monotonic() < deadline, f"no {count} uploaded part(s) of {full_key} after {timeout}s"
        time.sleep(0.05)


def no_partials(storage: Storage) -> bool:
    return list(storage.list_partial()) == []


# --- contract: every driver ----------------------------------------------------------------------------


def test_small_round_trip(storage):
    data = payload(1000, 1)
    info = storage.put_bytes("objects/small", data)
    assert info.key == "objects/small" and info.size == len(data)
    assert storage.get_bytes("objects/small") == data
    assert storage.head("objects/small").size == len(data)
    assert storage.exists("objects/small")


def test_write_accepts_bytes_memoryview_and_bytearray(storage):
    with storage.open_write("mixed") as w:
        w.write(b"abc")
        w.write(memoryview(b"--defg--")[2:6])
        w.write(bytearray(b"hij"))
    assert w.bytes_written == 10
    assert storage.get_bytes("mixed") == b"abcdefghij"


def test_multipart_round_trip(storage, tmp_path, monkeypatch):
    trace = tmp_path / "fault-trace"
    monkeypatch.setenv(TRACE_ENV, str(trace))
    data = os.urandom(23 * MiB)
    with storage.open_write("big/object") as w:
        write_chunked(w, data[: 10 * MiB], 1 * MiB + 7)  # many writes straddling part boundaries
        w.write(memoryview(data)[10 * MiB :])  # one large write spanning several parts
    assert w.bytes_written == len(data)
    assert storage.head("big/object").size == len(data)
    assert hashlib.sha256(read_chunked(storage, "big/object")).digest() == hashlib.sha256(data).digest()
    assert storage.get_bytes("big/object") == data
    phases = trace.read_text().split() if trace.exists() else []
    if is_s3(storage):
        # 23 MiB in 5 MiB parts = 4 full parts + one of 3 MiB, each reported when it finished uploading.
        assert w.parts_uploaded == 5
        assert phases.count("s3-part-uploaded") == 5
        raw = boto3.client("s3", endpoint_url=storage._client.meta.endpoint_url, region_name=S3_REGION)
        etag = raw.head_object(Bucket=storage.bucket, Key="repo/big/object")["ETag"]
        assert etag.strip('"').endswith("-5"), etag  # S3's multipart ETag: md5-of-md5s dash part count
        assert no_partials(storage)
    else:
        assert "s3-part-uploaded" not in phases


def test_empty_object(storage):
    info = storage.put_bytes("empty", b"")
    assert info.size == 0
    assert storage.head("empty").size == 0
    assert storage.get_bytes("empty") == b""
    with storage.open_read("empty") as fh:
        assert fh.read(10) == b""
    assert [o.key for o in storage.list()] == ["empty"]


@pytest.mark.parametrize("size", [100, PART + 1 * MiB], ids=["single", "multipart"])
def test_no_overwrite_keeps_original(storage, size):
    original = payload(size, 2)
    storage.put_bytes("immutable", original)
    with pytest.raises(ObjectExists, match="already exists"):
        storage.put_bytes("immutable", payload(size, 3))
    with pytest.raises(ObjectExists), storage.open_write("immutable") as w:
        w.write(payload(size, 4))
    assert storage.get_bytes("immutable") == original
    assert [o.key for o in storage.list()] == ["immutable"]
    assert no_partials(storage)  # the refused multipart upload was aborted, not left behind


@pytest.mark.parametrize("size", [100, PART + 1 * MiB], ids=["single", "multipart"])
def test_overwrite_true_replaces(storage, size):
    storage.put_bytes("mutable", payload(size, 5))
    replacement = payload(size + 1, 6)
    storage.put_bytes("mutable", replacement, overwrite=True)
    assert storage.get_bytes("mutable") == replacement
    assert storage.head("mutable").size == size + 1


@pytest.mark.parametrize("size", [100, 2 * PART + 1], ids=["single", "multipart"])
def test_abort_leaves_nothing(storage, size):
    w = storage.open_write("aborted/obj")
    w.write(payload(size, 7))
    w.abort()
    w.abort()  # idempotent
    assert list(storage.list()) == []
    assert not storage.exists("aborted/obj")
    assert no_partials(storage)
    # A finished writer refuses more work.
    with pytest.raises(StorageError):
        w.write(b"more")
    with pytest.raises(StorageError):
        w.commit()
    assert list(storage.list()) == []


@pytest.mark.parametrize("size", [100, PART + 1], ids=["single", "multipart"])
def test_exception_in_with_block_aborts(storage, size):
    with pytest.raises(RuntimeError, match="boom"), storage.open_write("failed") as w:
        w.write(payload(size, 8))
        raise RuntimeError("boom")
    assert list(storage.list()) == []
    assert no_partials(storage)


def test_list_sorted_prefix_filtered_without_temp_names(storage):
    for key in ["b/2", "a/10", "c", "a/2", "a/1", "ab"]:
        storage.put_bytes(key, key.encode())
    pending = storage.open_write("a/3")  # in progress: must not be listed
    pending.write(b"x" * 10)
    try:
        assert [o.key for o in storage.list()] == ["a/1", "a/10", "a/2", "ab", "b/2", "c"]
        assert [o.key for o in storage.list("a/")] == ["a/1", "a/10", "a/2"]
        assert [o.key for o in storage.list("a/1")] == ["a/1", "a/10"]
        assert [o.key for o in storage.list("a")] == ["a/1", "a/10", "a/2", "ab"]
        assert [o.key for o in storage.list("zzz/")] == []
        assert all(TEMP_MARKER not in o.key for o in storage.list())
        sizes = {o.key: o.size for o in storage.list()}
        assert sizes["a/10"] == 4 and sizes["c"] == 1
    finally:
        pending.abort()
    if is_s3(storage):  # keys live under the storage prefix, and are listed without it
        raw = boto3.client("s3", endpoint_url=storage._client.meta.endpoint_url, region_name=S3_REGION)
        keys = [o["Key"] for o in raw.list_objects_v2(Bucket=storage.bucket)["Contents"]]
        assert sorted(keys) == ["repo/a/1", "repo/a/10", "repo/a/2", "repo/ab", "repo/b/2", "repo/c"]


def test_head_size_and_time(storage):
    before = datetime.now(UTC) - timedelta(minutes=5)
    storage.put_bytes("h", b"12345")
    info = storage.head("h")
    assert info.key == "h" and info.size == 5
    assert info.modified.tzinfo is not None
    assert before <= info.modified <= datetime.now(UTC) + timedelta(minutes=5)


def test_delete_is_idempotent(storage, monkeypatch):
    monkeypatch.setattr(s3mod, "DELETE_BATCH", 3)  # exercise batching without thousands of objects
    keys = [f"d/{i}" for i in range(7)]
    for key in keys:
        storage.put_bytes(key, b"x")
    storage.put_bytes("keep", b"y")
    storage.delete([*keys, "d/missing", "never/there"])
    assert [o.key for o in storage.list()] == ["keep"]
    storage.delete(keys)  # again: already gone, no error
    storage.delete([])
    assert not storage.exists("d/0")
    assert storage.get_bytes("keep") == b"y"


def test_missing_key(storage):
    with pytest.raises(ObjectNotFound, match="nope"):
        storage.open_read("nope")
    with pytest.raises(ObjectNotFound, match="nope"):
        storage.head("nope")
    assert not storage.exists("nope")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "../x",
        "a/../b",
        "a//b",
        "a/",
        ".hidden",
        f"a/{TEMP_MARKER}x",
        "a b",
        "x" * 901,
        "k\n",
    ],
)
def test_invalid_names_rejected(storage, key):
    with pytest.raises(StorageError, match="invalid object name"):
        storage.open_write(key)
    with pytest.raises(StorageError, match="invalid object name"):
        storage.open_read(key)
    with pytest.raises(StorageError, match="invalid object name"):
        storage.head(key)
    with pytest.raises(StorageError, match="invalid object name"):
        storage.delete([key])
    assert list(storage.list()) == []


def test_list_start_after_returns_only_greater_keys(storage):
    """An index that knows the newest key it saw lists only what came since (one request on S3)."""
    for key in ["i/001/m", "i/002/d", "i/002/m", "i/003/m", "j/1"]:
        storage.put_bytes(key, b"x")
    assert [o.key for o in storage.list("i/", start_after="i/002/d")] == ["i/002/m", "i/003/m"]
    assert [o.key for o in storage.list("i/", start_after="i/002/~")] == ["i/003/m"]
    assert [o.key for o in storage.list("i/", start_after="i/")] == ["i/001/m", "i/002/d", "i/002/m", "i/003/m"]
    assert list(storage.list("i/", start_after="i/999")) == []
    assert [o.key for o in storage.list("i/", start_after=None)][0] == "i/001/m"


def test_list_partial_shows_interrupted_writer_and_abort_partial_removes_it(storage):
    w = storage.open_write("part/obj")
    w.write(os.urandom(PART + 1 * MiB))  # past one part: S3 has started a multipart upload
    if is_s3(storage):
        wait_for_uploaded_parts(storage, "repo/part/obj", 1)  # like a writer that died after a part
    try:
        partials = list(storage.list_partial())
        assert [p.key for p in partials] == ["part/obj"]
        assert list(storage.list_partial("part/")) == partials
        assert list(storage.list_partial("other/")) == []
        assert partials[0].started.tzinfo is not None
        if not is_s3(storage):  # moto 5.2 reports a constant Initiated (2010-11-10T20:48:33Z) for every upload
            assert abs(partials[0].started - datetime.now(UTC)) < timedelta(minutes=5)
        assert partials[0].handle
        assert list(storage.list()) == []  # invisible while unfinished
        storage.abort_partial(partials[0])
        storage.abort_partial(partials[0])  # already gone: no error
        assert no_partials(storage)
    finally:
        w.abort()  # the abandoned writer's own cleanup must cope with its upload being gone
    assert no_partials(storage)
    assert list(storage.list()) == []


def test_check_passes_on_working_storage(storage):
    storage.check()


# --- S3 only -------------------------------------------------------------------------------------------


class ClientProxy:
    """Delegates to a real boto3 client; subclasses override single calls to inject failures."""

    def __init__(self, real) -> None:
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)


def proxied_storage(moto_server, bucket: str, proxy_cls, **kwargs) -> tuple[S3Storage, ClientProxy]:
    proxy = proxy_cls(moto_server.client())
    kwargs.setdefault("part_size", PART)
    return S3Storage(bucket, "repo", client=proxy, **kwargs), proxy


def test_s3_url_and_prefix_normalisation(moto_server, s3_bucket):
    s = S3Storage(s3_bucket, "/a//b/", endpoint_url=moto_server.endpoint_url)
    assert s.url == f"s3://{s3_bucket}/a/b"
    assert S3Storage(s3_bucket, endpoint_url=moto_server.endpoint_url).url == f"s3://{s3_bucket}"
    assert S3_SECRET not in s.url and S3_ACCESS_KEY_ID not in s.url
    s.put_bytes("x/y", b"1")
    raw = moto_server.client()
    assert [o["Key"] for o in raw.list_objects_v2(Bucket=s3_bucket)["Contents"]] == ["a/b/x/y"]
    assert [o.key for o in s.list()] == ["x/y"]
    root = S3Storage(s3_bucket, "", endpoint_url=moto_server.endpoint_url)
    assert [o.key for o in root.list()] == ["a/b/x/y"]


def test_s3_storage_class_and_sse_are_sent(moto_server, s3_bucket):
    s = S3Storage(
        s3_bucket,
        "repo",
        endpoint_url=moto_server.endpoint_url,
        storage_class="STANDARD_IA",
        sse="AES256",
        part_size=PART,
    )
    s.put_bytes("single", b"abc")
    s.put_bytes("multi", os.urandom(PART + 1))
    raw = moto_server.client()
    for key in ("repo/single", "repo/multi"):
        head = raw.head_object(Bucket=s3_bucket, Key=key)
        assert head.get("StorageClass") == "STANDARD_IA", key
        assert head.get("ServerSideEncryption") == "AES256", key


def test_s3_conditional_writes_reach_the_server(moto_server, s3_bucket):
    """If-None-Match: * is really sent on PutObject and CompleteMultipartUpload (moto 5.2 honours both)."""
    sent: list[tuple[str, str | None]] = []

    class Recording(ClientProxy):
        def put_object(self, **kw):
            sent.append(("put", kw.get("IfNoneMatch")))
            return self._real.put_object(**kw)

        def complete_multipart_upload(self, **kw):
            sent.append(("complete", kw.get("IfNoneMatch")))
            return self._real.complete_multipart_upload(**kw)

    s, _ = proxied_storage(moto_server, s3_bucket, Recording)
    s.put_bytes("one", b"1")
    s.put_bytes("two", os.urandom(PART + 10))
    s.put_bytes("one", b"2", overwrite=True)
    assert sent == [("put", "*"), ("complete", "*"), ("put", None)]
    assert s.capabilities.atomic_no_overwrite


def test_s3_fallback_when_conditional_writes_not_implemented(moto_server, s3_bucket):
    attempts: list[str] = []

    def not_implemented(op: str) -> ClientError:
        return ClientError(
            {
                "Error": {"Code": "NotImplemented", "Message": "A header you provided implies functionality"},
                "ResponseMetadata": {"HTTPStatusCode": 501},
            },
            op,
        )

    class NoConditional(ClientProxy):
        def put_object(self, **kw):
            if "IfNoneMatch" in kw:
                attempts.append("put")
                raise not_implemented("PutObject")
            return self._real.put_object(**kw)

        def complete_multipart_upload(self, **kw):
            if "IfNoneMatch" in kw:
                attempts.append("complete")
                raise not_implemented("CompleteMultipartUpload")
            return self._real.complete_multipart_upload(**kw)

    s, _ = proxied_storage(moto_server, s3_bucket, NoConditional)
    s.put_bytes("a", b"first")
    assert not s.capabilities.atomic_no_overwrite  # the head-check fallback is racy, and says so
    with pytest.raises(ObjectExists):
        s.put_bytes("a", b"second")
    big = os.urandom(PART + 10)
    s.put_bytes("b", big)
    with pytest.raises(ObjectExists):
        s.put_bytes("b", os.urandom(PART + 10))
    assert s.get_bytes("a") == b"first" and s.get_bytes("b") == big
    assert attempts == ["put"]  # the 501 was remembered: no further conditional attempts
    assert no_partials(s)


def test_s3_retry_after_a_lost_put_response_is_not_object_exists(moto_server, s3_bucket):
    """The first PUT lands but its response is lost; botocore's retry then meets our own object (412)."""
    http = urllib3.PoolManager()
    sent: list[int] = []

    def lose_first_response(request, **_kw):
        sent.append(1)
        if len(sent) % 2 == 1:  # odd attempts reach the server, then the connection "drops"
            body = request.body.read() if hasattr(request.body, "read") else request.body
            http.request(request.method, request.url, body=body, headers=dict(request.headers.items()))
            raise ConnectionClosedError(endpoint_url=moto_server.endpoint_url)
        return None

    client = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint_url,
        region_name=S3_REGION,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}),
    )
    client.meta.events.register("before-send.s3.PutObject", lose_first_response)
    s = S3Storage(s3_bucket, "repo", client=client)
    s.put_bytes("once", b"our bytes")  # no ObjectExists: the object there is ours
    assert len(sent) == 2
    assert s.get_bytes("once") == b"our bytes"
    # A real conflict stays a conflict, retried or not: other bytes were there first.
    client.meta.events.unregister("before-send.s3.PutObject", lose_first_response)
    s.put_bytes("taken", b"first writer")
    client.meta.events.register("before-send.s3.PutObject", lose_first_response)
    with pytest.raises(ObjectExists):
        s.put_bytes("taken", b"second writer")
    assert len(sent) == 4
    assert s.get_bytes("taken") == b"first writer"


def test_s3_part_uploads_are_bounded(moto_server, s3_bucket):
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    class Slow(ClientProxy):
        def upload_part(self, **kw):
            with lock:
                state["now"] += 1
                state["peak"] = max(state["peak"], state["now"])
            try:
                time.sleep(0.2)
                return self._real.upload_part(**kw)
            finally:
                with lock:
                    state["now"] -= 1

    s, _ = proxied_storage(moto_server, s3_bucket, Slow, max_concurrency=2)
    data = os.urandom(6 * PART + 5)
    w = s.open_write("bounded")
    view = memoryview(data)
    for start in range(0, len(data), 1 * MiB):
        w.write(view[start : start + 1 * MiB])
        assert len(w._pending) <= 2  # write() blocks instead of queueing more part buffers
    w.commit()
    assert w.parts_uploaded == 7
    assert state["peak"] == 2  # concurrent, but never more than max_concurrency
    assert w.max_buffers_seen == 3  # max_concurrency + 1 part buffers at most, whatever the object size
    assert s.get_bytes("bounded") == data


def test_s3_failed_part_aborts_the_upload(moto_server, s3_bucket):
    class FailSecond(ClientProxy):
        def upload_part(self, **kw):
            if kw["PartNumber"] == 2:
                raise ClientError(
                    {"Error": {"Code": "InternalError", "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                    "UploadPart",
                )
            return self._real.upload_part(**kw)

    s, _ = proxied_storage(moto_server, s3_bucket, FailSecond)
    with pytest.raises(TransientStorageError, match="InternalError") as info, s.open_write("doomed") as w:
        write_chunked(w, os.urandom(3 * PART + 1), 1 * MiB)
    assert isinstance(info.value.__cause__, ClientError)
    assert list(s.list()) == []
    assert no_partials(s)  # the multipart upload was aborted, no orphaned parts


CRASHING_WRITER = """
import os, sys
from seedvault.storage.s3 import S3Storage
storage = S3Storage(sys.argv[1], "repo", endpoint_url=sys.argv[2], part_size=5 * 1024 * 1024)
writer = storage.open_write("crash/obj")
writer.write(os.urandom(2 * 5 * 1024 * 1024 + 1))
writer.commit()
print("survived")
"""


def test_s3_writer_killed_after_a_part_leaves_only_a_partial(moto_server, s3_storage, tmp_path):
    """SIGKILL at the 's3-part-uploaded' fault point: nothing listed, one partial that cleanup can abort."""
    trace = tmp_path / "trace"
    env = {**os.environ, KILL_ENV: "s3-part-uploaded", TRACE_ENV: str(trace)}
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, s3_storage.bucket, moto_server.endpoint_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "survived" not in proc.stdout
    assert trace.read_text().split() == ["s3-part-uploaded"]
    assert list(s3_storage.list()) == []
    partials = list(s3_storage.list_partial())
    assert [p.key for p in partials] == ["crash/obj"]
    s3_storage.abort_partial(partials[0])
    assert no_partials(s3_storage)


def test_s3_missing_bucket(moto_server):
    s = S3Storage("sv-no-such-bucket-here", "repo", endpoint_url=moto_server.endpoint_url, max_attempts=1)
    with pytest.raises(StorageUnreachable, match="bucket sv-no-such-bucket-here does not exist"):
        s.check()
    with pytest.raises(StorageUnreachable, match="does not exist"):
        s.put_bytes("x", b"1")
    with pytest.raises(StorageUnreachable, match="does not exist"):
        list(s.list())


def test_s3_unreachable_endpoint_fails_fast(s3_credentials):
    port = free_loopback_port()  # nothing listens there
    s = S3Storage(
        "any-bucket",
        "repo",
        endpoint_url=f"http://127.0.0.1:{port}",
        max_attempts=1,
        connect_timeout=1,
        read_timeout=1,
    )
    started = time.monotonic()
    with pytest.raises(StorageUnreachable, match=f"cannot reach S3 endpoint http://127.0.0.1:{port}") as info:
        s.check()
    assert time.monotonic() - started < 5
    assert info.value.exit_code == 14
    with pytest.raises(StorageUnreachable):
        s.put_bytes("x", b"1")
    with pytest.raises(StorageUnreachable):
        s.open_read("x")


def _all_text(exc: BaseException) -> str:
    assert isinstance(exc, SeedvaultError)
    return "\n".join([str(exc), exc.one_line(), repr(exc), exc.hint or ""])


def test_s3_error_text_never_contains_secrets(moto_server, s3_bucket):
    errors: list[BaseException] = []
    s = S3Storage(s3_bucket, "repo", endpoint_url=moto_server.endpoint_url, max_attempts=1)
    s.put_bytes("there", b"1")
    for call in (lambda: s.head("gone"), lambda: s.open_read("gone"), lambda: s.put_bytes("there", b"2")):
        with pytest.raises(StorageError) as info:
            call()
        errors.append(info.value)
    missing = S3Storage("sv-missing-bucket", endpoint_url=moto_server.endpoint_url, max_attempts=1)
    with pytest.raises(StorageUnreachable) as info:
        missing.check()
    errors.append(info.value)
    # Credentials in an endpoint URL (a classic copy-paste mistake) must not come back in messages.
    port = free_loopback_port()
    leaky = S3Storage("b", endpoint_url=f"http://{S3_ACCESS_KEY_ID}:{S3_SECRET}@127.0.0.1:{port}/", max_attempts=1)
    with pytest.raises(StorageUnreachable) as info:
        leaky.check()
    errors.append(info.value)

    # A signature error whose body echoes the request signature and (pathologically) the secret:
    # the translated error uses only the error code.
    signatures: list[str] = []
    client = boto3.client("s3", endpoint_url=moto_server.endpoint_url, region_name=S3_REGION)

    class _Raw:
        def __init__(self, body: bytes) -> None:
            self._body = body

        def stream(self, **_kw):
            yield self._body

    def deny(request, **_kw):
        auth = request.headers.get("Authorization", b"")
        auth = auth.decode() if isinstance(auth, bytes) else auth
        signature = auth.rsplit("Signature=", 1)[-1]
        signatures.append(signature)
        body = (
            "<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not "
            f"match {S3_SECRET}</Message><AWSAccessKeyId>{S3_ACCESS_KEY_ID}</AWSAccessKeyId>"
            f"<SignatureProvided>{signature}</SignatureProvided><StringToSign>{S3_SECRET}</StringToSign></Error>"
        ).encode()
        return AWSResponse(request.url, 403, {"Content-Type": "application/xml"}, _Raw(body))

    client.meta.events.register("before-send.s3.GetObject", deny)
    denied = S3Storage(s3_bucket, "repo", client=client)
    with pytest.raises(PermissionDenied, match="SignatureDoesNotMatch") as info:
        denied.open_read("there")
    assert S3_SECRET in str(info.value.__cause__)  # the injected body really was there to leak
    errors.append(info.value)

    assert signatures and len(signatures[0]) == 64
    for exc in errors:
        text = _all_text(exc)
        assert S3_SECRET not in text, text
        assert signatures[0] not in text, text
        assert "\n" not in str(exc), text
        assert str(exc)[:1].islower(), text


class BreakingBody:
    """A body stream that dies after ``after`` bytes, like a connection reset mid-download."""

    def __init__(self, body, after: int, error: Exception) -> None:
        self._body = body
        self._left = after
        self._error = error

    def read(self, amt=None):
        if self._left <= 0:
            raise self._error
        amt = self._left if amt is None or amt < 0 else min(amt, self._left)
        chunk = self._body.read(amt)
        self._left -= len(chunk)
        return chunk

    def close(self):
        self._body.close()


def breaking_client(breaks: list[tuple[int, Exception]], calls: list[dict]):
    class Breaking(ClientProxy):
        def get_object(self, **kw):
            calls.append(kw)
            resp = self._real.get_object(**kw)
            if breaks:
                after, error = breaks.pop(0)
                resp["Body"] = BreakingBody(resp["Body"], after, error)
            return resp

    return Breaking


def test_s3_read_resumes_after_broken_stream(moto_server, s3_bucket):
    calls: list[dict] = []
    breaks = [
        (1 * MiB + 123, ResponseStreamingError(error=ConnectionResetError("connection reset by peer"))),
        (700_000, IncompleteReadError(actual_bytes=1, expected_bytes=2)),
    ]
    s, _ = proxied_storage(moto_server, s3_bucket, breaking_client(breaks, calls))
    data = os.urandom(3 * MiB + 17)
    s.put_bytes("resumable", data)
    with s.open_read("resumable") as fh:
        got = bytearray()
        while piece := fh.read(256 * 1024):
            got += piece
        assert fh.resumes == 2
    assert bytes(got) == data
    assert len(calls) == 3
    assert calls[0]["Range"] == "bytes=0-"  # its Content-Range gives the object's size (a short body is resumed)
    assert calls[1]["Range"] == f"bytes={1 * MiB + 123}-"
    assert calls[2]["Range"] == f"bytes={1 * MiB + 123 + 700_000}-"
    assert calls[1]["IfMatch"] == calls[2]["IfMatch"] != ""
    # readall (get_bytes) resumes too
    breaks.append((10, ResponseStreamingError(error=ConnectionResetError("reset"))))
    assert s.get_bytes("resumable") == data


def test_s3_read_resume_refuses_a_changed_object(moto_server, s3_bucket):
    calls: list[dict] = []
    breaks = [(2 * MiB, ResponseStreamingError(error=ConnectionResetError("reset")))]
    s, _ = proxied_storage(moto_server, s3_bucket, breaking_client(breaks, calls))
    s.put_bytes("changing", os.urandom(3 * MiB))
    fh = s.open_read("changing")
    assert len(fh.read(1 * MiB)) == 1 * MiB
    s.put_bytes("changing", os.urandom(3 * MiB), overwrite=True)  # replaced while we read
    with pytest.raises(StorageError, match="changed while being read"):
        while fh.read(1 * MiB):
            pass
    fh.close()


def test_s3_read_gives_up_after_repeated_breaks(moto_server, s3_bucket):
    calls: list[dict] = []
    breaks = [(0, ResponseStreamingError(error=ConnectionResetError("reset"))) for _ in range(10)]
    s, _ = proxied_storage(moto_server, s3_bucket, breaking_client(breaks, calls))
    s.put_bytes("flaky", b"z" * 1000)
    with pytest.raises(TransientStorageError, match="broke off at byte 0"), s.open_read("flaky") as fh:
        fh.read()
    assert len(calls) == 1 + s3mod.READ_RESUMES
