"""The README's demo command works: ``python3 demo.py`` backs up and restores through the Prefect flows."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).parents[2] / "demo.py"


def test_demo_falls_back_to_the_pgserver_wheel_without_a_system_postgresql(monkeypatch):
    """A fresh machine has no system PostgreSQL: the demo's server then comes from the pgserver wheel."""
    from seedvault.sources.postgres import binaries

    assert "preferred_server_binaries()" in DEMO.read_text()
    monkeypatch.delenv("PG_BIN", raising=False)
    monkeypatch.setattr(binaries, "system_majors", lambda: [])
    monkeypatch.setattr(binaries, "_path_dirs", lambda probe: [])
    assert binaries.preferred_server_binaries().origin == binaries.ORIGIN_PGSERVER
    # With a system PostgreSQL installed, it wins over the (possibly newer) bundled one.
    monkeypatch.undo()
    monkeypatch.delenv("PG_BIN", raising=False)
    if binaries.system_majors():
        assert binaries.preferred_server_binaries().origin == binaries.ORIGIN_SYSTEM


def test_demo_runs_the_flows_and_prints_verified_counts():
    before = set(glob.glob("/var/tmp/seedvault-demo-*"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SEEDVAULT_"))}
    proc = subprocess.run(
        [sys.executable, str(DEMO)], env=env, cwd=DEMO.parent, capture_output=True, text=True, timeout=420
    )
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed:\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    assert "verified counts: 4 tables, 28200 rows, 4 content checksums" in out
    for table, rows in (("public.customers", 200), ("public.orders", 2000), ("telemetry.readings", 20000)):
        assert any(line.split() == [table, str(rows), str(rows)] for line in out.splitlines()), table
    assert "artifact seedvault-backup-shop" in out and "rows public.order_items  6000" in out
    assert "demo ok" in out
    assert set(glob.glob("/var/tmp/seedvault-demo-*")) == before, "the demo must remove its server and data"
