"""Make the README's Prefect UI screenshots: ``python3 docs/screenshots.py`` (in the README's venv).

What it shows is real: a throwaway PostgreSQL with the sample data, a real ``prefect server start`` with its UI
on a loopback port, two ``backup-postgres`` runs and a ``dr-drill`` run against a local repository, and the
``restore-postgres/on-demand`` deployment registered as the set-up registers it. Headless Chromium (Debian's
``chromium``) then saves, under ``docs/img/``:

* ``status-artifact.png``: the ``seedvault-status`` artifact (Artifacts -> seedvault-status);
* ``drill-artifact.png``: the drill's artifact (RTO, RPO, pass/fail against the targets);
* ``restore-form.png``: the restore deployment's "Run" form (block names filled in, ``replace`` off).

Everything it starts is stopped and removed at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api",
    )
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    ui = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{ui}/api/health", timeout=2).json() is True:
                return proc, ui
        except (httpx.HTTPError, ValueError):
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("prefect server did not start: " + (home / "server.log").read_text()[-1500:])


def shoot(url: str, out: Path, *, height: int = 1000, width: int = 1440) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed (apt install chromium)")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={width},{height}", "--virtual-time-budget=25000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)  # fmt: skip
    print(f"wrote {out.relative_to(ROOT)} from {url}")


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="seedvault-shots-", dir="/var/tmp"))
    base.chmod(0o755)
    home = base / "prefect"
    home.mkdir()
    password = "shots-" + secrets.token_urlsafe(18)
    proc, ui = start_server(home)
    for name in [k for k in os.environ if k.startswith("PREFECT_")]:
        del os.environ[name]
    os.environ.update(PREFECT_API_URL=f"{ui}/api", PREFECT_UI_URL=ui, DO_NOT_TRACK="1")
    from demo import start_cluster

    cluster = start_cluster(base, password)
    try:
        run(base, cluster, password, ui)
    finally:
        cluster.destroy()
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, cluster, password: str, ui: str) -> None:
    from prefect.artifacts import Artifact

    from blocks import PostgresTarget, SeedvaultEncryptionKey, SeedvaultRepository
    from deployments.definitions import build
    from flows.backup_postgres import backup_postgres_flow
    from flows.dr_drill import dr_drill_flow
    from seedvault.sources.postgres.cluster import HOST
    from seedvault.sources.postgres.sample import load_sample
    from tasks.reports import artifact_key
    from tasks.status import STATUS_KEY

    with cluster.connect("postgres", password=password, autocommit=True) as conn:
        conn.execute("CREATE DATABASE tsdb")
    with cluster.connect("tsdb", password=password) as conn:
        load_sample(conn)
    SeedvaultRepository(local_path=str(base / "repository")).save("seedvault-repository", overwrite=True)
    SeedvaultEncryptionKey.generate().save("seedvault-key", overwrite=True)
    PostgresTarget(host=HOST, port=cluster.port, user="postgres", password=password, database="tsdb").save(
        "seedvault-postgres", overwrite=True
    )
    blocks = {"repository": "seedvault-repository", "key": "seedvault-key", "target": "seedvault-postgres"}
    for _ in range(2):
        backup_postgres_flow(**blocks)
    dr_drill_flow(**blocks, database="tsdb")
    restore = next(d for d in build(**blocks, wal=False) if d.flow_name == "restore-postgres")
    deployment_id = restore.apply()

    status = Artifact.get(STATUS_KEY)
    drill = Artifact.get(artifact_key("seedvault-dr-drill", "tsdb"))
    if status is None or drill is None:
        raise SystemExit("the flows published no status or drill artifact")
    shoot(f"{ui}/artifacts/artifact/{status.id}", OUT / "status-artifact.png", height=800, width=2300)
    shoot(f"{ui}/artifacts/artifact/{drill.id}", OUT / "drill-artifact.png", height=1100)
    shoot(f"{ui}/deployments/deployment/{deployment_id}/run", OUT / "restore-form.png", height=1400)


if __name__ == "__main__":
    main()
