"""A loopback HTTP proxy in front of the moto server that fails chosen S3 requests, for fault injection.

Real HTTP end to end (client -> proxy -> moto): the S3 client under test is an ordinary boto3 client from a
prefect-aws ``AwsCredentials`` block whose endpoint is this proxy. Armed with :meth:`fail_next_part`, it answers
the first ``UploadPart`` of every multipart upload *created after arming* with ``500 InternalError``, once per
upload, as a flaky S3 front end would; botocore must then retry that part by itself.
"""

from __future__ import annotations

import http.client
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te", "upgrade"}
_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>injected by the test proxy</Message></Error>"
)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    status: int

    @property
    def part(self) -> tuple[str, int] | None:
        """(upload id, part number) of an UploadPart request."""
        if self.method == "PUT" and "uploadId" in self.query and "partNumber" in self.query:
            return self.query["uploadId"][0], int(self.query["partNumber"][0])
        return None


@dataclass
class FaultyS3Proxy:
    upstream: str
    requests: list[Request] = field(default_factory=list)
    armed: bool = False
    armed_uploads: set[str] = field(default_factory=set)
    failed_uploads: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next_part(self) -> None:
        """From now on, fail the first part of each new multipart upload once."""
        with self._lock:
            self.armed = True

    def injected(self) -> list[Request]:
        return [r for r in self.requests if r.status == 500 and r.part]

    def _decide(self, method: str, query: dict[str, list[str]]) -> bool:
        upload = query.get("uploadId", [None])[0]
        with self._lock:
            if method == "PUT" and upload in self.armed_uploads and upload not in self.failed_uploads:
                self.failed_uploads.add(upload)
                return True
        return False

    def _created(self, method: str, query: dict[str, list[str]], body: bytes) -> None:
        if method == "POST" and "uploads" in query and self.armed:
            match = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
            if match:
                with self._lock:
                    self.armed_uploads.add(match.group(1).decode())

    def handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self
        up = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _proxy(self) -> None:
                body = self._body()
                split = urlsplit(self.path)
                query = parse_qs(split.query, keep_blank_values=True)
                if proxy._decide(self.command, query):
                    self._answer(500, {"Content-Type": "application/xml"}, _ERROR, query)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP}
                finally:
                    conn.close()
                proxy._created(self.command, query, data)
                self._answer(resp.status, out, data, query, head=self.command == "HEAD")

            def _answer(self, status: int, headers: dict[str, str], data: bytes, query, head: bool = False) -> None:
                proxy.requests.append(Request(self.command, urlsplit(self.path).path, query, status))
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header(
                    "Content-Length", headers.get("Content-Length", str(len(data))) if head else str(len(data))
                )
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy

        return Handler


class ProxyServer:
    """Runs a :class:`FaultyS3Proxy` on 127.0.0.1 in a thread; use as a context manager."""

    def __init__(self, upstream: str) -> None:
        self.proxy = FaultyS3Proxy(upstream)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self.proxy.handler())
        self._server.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="faulty-s3", daemon=True)

    def __enter__(self) -> FaultyS3Proxy:
        self._thread.start()
        return self.proxy

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
