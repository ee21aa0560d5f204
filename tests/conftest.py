"""Shared fixtures: real components only (moto server over HTTP, real PostgreSQL, Prefect harness)."""

import os
import tempfile

# Offline, quiet Prefect and no analytics anywhere in the test run (see shared/PREFECT-NOTES.md).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
# The catalog's and the audit log's local caches go to a scratch directory, not the user's ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="seedvault-test-cache-")

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.repo",
    "tests.fixtures.postgres",
    "tests.fixtures.prefect",
    "tests.fixtures.walenv",
    "tests.fixtures.prometheus",
]


def pytest_addoption(parser, pluginmanager):
    """Accept pyproject's ``-n 2 --dist loadfile`` when pytest-xdist is switched off (``-p no:xdist``).

    Why: the options live in ``addopts`` so the README's plain ``pytest`` runs two workers, but without xdist
    pytest refused them as unrecognized arguments; a serial run (for a debugger, or a test that must run alone)
    should only need ``-p no:xdist``. The stand-ins are ignored: the run is serial.
    """
    if pluginmanager.has_plugin("xdist"):
        return
    group = parser.getgroup("xdist switched off")
    # ``_addoption``: pytest reserves lowercase short options for plugins that register them (xdist does so too).
    group._addoption("-n", "--numprocesses", dest="numprocesses", default=None, help="ignored without pytest-xdist")
    group.addoption("--dist", dest="dist", default="no", help="ignored without pytest-xdist")
