"""The one-command set-up against a real ``prefect server start`` (not the test harness), through its REST API.

A TOML file describing a PostgreSQL-only platform (no ``[neo4j]``): ``python -m deployments.setup`` creates the
blocks, writes the database host's files, registers the deployments on a process work pool; the API the UI
uses then shows exactly the PostgreSQL deployments with their UTC schedules, each on-demand deployment starts a
run with the block names filled in, a second run of the set-up changes nothing, switching to ``serve`` replaces
the work-pool deployments instead of leaving them without a path, and no secret is in any output or in what
the API hands out without ``include_secrets``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from seedvault.crypto.keys import generate_raw_key
from tests.prefect.real_server import ROOT, api_post, deployments, prefect_server


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    with prefect_server(tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


def _setup(url: str, config: Path, *extra: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    full.update(env, PREFECT_API_URL=url, DO_NOT_TRACK="1")
    return subprocess.run([sys.executable, "-m", "deployments.setup", "--config", str(config), *extra], cwd=ROOT,
                          env=full, capture_output=True, text=True, timeout=300)  # fmt: skip


def _automations(url: str) -> set[str]:
    autos = httpx.post(f"{url}/automations/filter", json={}, timeout=30).json()
    names = [a["name"] for a in autos]
    assert len(names) == len(set(names))
    return set(names)


def test_setup_registers_exactly_the_configured_stores_and_the_ui_can_start_every_restore(server, tmp_path) -> None:
    pg_password, s3_secret = "pg-" + secrets.token_hex(12), "s3-" + secrets.token_hex(12)
    key = tmp_path / "master.key"
    key.write_text(generate_raw_key() + "\n")
    config = tmp_path / "deploy.toml"
    config.write_text(f"""
[prefect]
work_pool = "sv-pool"
[repository]
url = "s3://platform-backups/seedvault"
s3_endpoint = "http://127.0.0.1:9"
s3_region = "us-east-1"
aws_access_key_id = "AKIATEST"
aws_secret_access_key_env = "TEST_S3_SECRET"
[key]
value_file = "{key}"
[postgres]
host = "127.0.0.1"
port = 5432
database = "tsdb"
password_env = "TEST_PG_PASSWORD"
wal = true
[notify]
url = "http://127.0.0.1:9/hook"
[archive]
dir = "{tmp_path / "host"}"
""")
    env = {"TEST_S3_SECRET": s3_secret, "TEST_PG_PASSWORD": pg_password}
    first = _setup(server, config, env=env)
    assert first.returncode == 0, first.stderr
    for text in (first.stdout, first.stderr):
        assert pg_password not in text and s3_secret not in text and key.read_text().strip() not in text
    got = deployments(server)
    expected = {
        "backup-postgres/nightly-0200-utc": "0 2 * * *", "backup-postgres-base/daily-0100-utc": "0 1 * * *",
        "check-wal-freshness/every-5-minutes": "*/5 * * * *", "dr-drill/monthly-1st-0400-utc": "0 4 1 * *",
        "prune/daily-0330-utc": "30 3 * * *", "verify-repository/weekly-sample-sun-0500-utc": "0 5 * * 0",
        "verify-repository/monthly-all-2nd-0500-utc": "0 5 2 * *", "verify-repository/daily-wal-0600-utc": "0 6 * * *",
        "restore-postgres/on-demand": None, "restore-postgres-pitr/on-demand": None,
    }  # fmt: skip
    assert set(got) == set(expected)  # no Neo4j, no platform: none of their deployments
    for name, cron in expected.items():
        d = got[name]
        assert d["work_pool_name"] == "sv-pool" and d["parameters"]["repository"] == "seedvault-repository"
        assert d["parameters"]["notify_block"] == "custom-webhook/seedvault-notify"
        if cron is None:
            assert d["schedules"] == []
        else:
            (s,) = d["schedules"]
            assert (s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) == (cron, "UTC", True)
    # With [notify]: one missed-run automation per scheduled backup deployment (failures are the hooks' job).
    missed = {"seedvault-missed-" + name for name in ("backup-postgres--nightly-0200-utc",
              "backup-postgres-base--daily-0100-utc", "check-wal-freshness--every-5-minutes",
              "dr-drill--monthly-1st-0400-utc")}  # fmt: skip
    assert _automations(server) == missed
    # The UI's "Run" on each on-demand deployment: a run with the block names and the operator's fields.
    for name, params in (("restore-postgres/on-demand", {"database": "tsdb_check"}),
                         ("restore-postgres-pitr/on-demand", {"data_dir": "/srv/pitr", "latest": True})):  # fmt: skip
        r = api_post(server, f"/deployments/{got[name]['id']}/create_flow_run", {"parameters": params})
        assert r.status_code == 201, r.text
        run = r.json()
        assert run["parameters"]["target"] == "seedvault-postgres" and run["parameters"]["key"] == "seedvault-key"
        assert all(run["parameters"][k] == v for k, v in params.items())
    # Blocks hold the secrets; the API does not hand them out without include_secrets.
    docs = httpx.post(f"{server}/block_documents/filter", json={"include_secrets": False}, timeout=30).text
    assert pg_password not in docs and s3_secret not in docs and key.read_text().strip() not in docs
    host = (tmp_path / "host" / "seedvault.toml").read_text()
    assert 's3_credentials_file = "' in host and f'key_file = "{key}"' in host and s3_secret not in host
    creds = tmp_path / "host" / "aws-credentials"
    assert oct(creds.stat().st_mode & 0o777) == "0o600" and s3_secret in creds.read_text()

    again = _setup(server, config, env=env)  # idempotent: the same deployments, updated in place
    assert again.returncode == 0, again.stderr
    assert {n: d["id"] for n, d in deployments(server).items()} == {n: d["id"] for n, d in got.items()}
    assert _automations(server) == missed  # replaced, not added twice

    switch = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from deployments.setup import *;"
         " p = load_plan(Path(sys.argv[1])); register(p, deployments_for(p), serve=True)", str(config)],
        cwd=ROOT, env={**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, **env,
                       "PREFECT_API_URL": server}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert switch.returncode == 0, switch.stderr
    served = deployments(server)
    assert set(served) == set(expected) and all(d["work_pool_name"] is None for d in served.values())

    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace('password_env = "TEST_PG_PASSWORD"', f'password = "{pg_password}"'))
    refused = _setup(server, bad, env=env)
    assert refused.returncode == 3 and "is a secret" in refused.stderr and pg_password not in refused.stderr
