"""A real local HTTP receiver for failure notifications (webhook blocks POST JSON to it), by path."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """Collects the JSON bodies POSTed to it, by path."""

    def __init__(self) -> None:
        self.bodies: dict[str, list[dict]] = {}
        self.received: list[tuple[float, str, dict]] = []  # (time.time(), path, body), in arrival order
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(data)
                receiver.bodies.setdefault(self.path, []).append(body)
                receiver.received.append((time.time(), self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, path: str, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.bodies.get(path):
                return self.bodies[path]
            time.sleep(0.1)
        raise AssertionError(f"nothing was POSTed to {path} within {timeout:.0f} s")
