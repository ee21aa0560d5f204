"""Shared fixtures: real components only (moto server over HTTP, real PostgreSQL, Prefect harness)."""

import os

# Offline, quiet Prefect and no analytics anywhere in the test run (see shared/PREFECT-NOTES.md).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.repo",
    "tests.fixtures.postgres",
    "tests.fixtures.prefect",
    "tests.fixtures.walenv",
]
