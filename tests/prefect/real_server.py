"""A real ``prefect server start`` (not the test harness) and a real process worker, for the tests that must
see what an operator's installation does: the scheduler creating runs, a worker running them in their own
processes, the runner marking a killed run Crashed, automations on the server.

The server runs its scheduler every 2 s (production: 60 s) so that a scheduled run is due within seconds;
nothing else differs from a production server on SQLite.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_post(url: str, path: str, body: dict) -> httpx.Response:
    """POST to the server's API; a 503 (SQLite busy under load) is retried, as Prefect's own client does."""
    for attempt in range(10):
        r = httpx.post(f"{url}{path}", json=body, timeout=30)
        if r.status_code != 503:
            return r
        time.sleep(0.5 * (attempt + 1))
    return r


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without its PREFECT_* settings (the harness's), analytics off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """Start ``prefect server start`` on a free loopback port; yields its API URL."""
    port = free_port()
    env = clean_env(
        PREFECT_HOME=str(home),
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home}/prefect.db",
        PREFECT_API_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PREFECT_API_LOG_RETRYABLE_ERRORS="true",
    )
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port), "--no-ui"], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).json() is True:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert proc.poll() is None, (home / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "prefect server did not come up in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)
        log.close()


@contextmanager
def process_worker(url: str, pool: str, home: Path, **env: str) -> Iterator[subprocess.Popen]:
    """``prefect worker start --pool POOL --type process``, polling every second; its output in ``home``."""
    full = clean_env(PREFECT_API_URL=url, PREFECT_HOME=str(home), PREFECT_WORKER_QUERY_SECONDS="1", **env)
    log = (home / "worker.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"],
                            cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield proc
    finally:
        _stop(proc)
        log.close()


def deployments(url: str) -> dict[str, dict]:
    """``flow/deployment`` -> the deployment as the API the UI uses returns it."""
    flows = {f["id"]: f["name"] for f in httpx.post(f"{url}/flows/filter", json={}, timeout=30).json()}
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in httpx.post(f"{url}/deployments/filter", json={},
                                                                          timeout=30).json()}  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
