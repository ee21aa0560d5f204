"""The tree is ``ruff`` clean (lint rules and formatting from pyproject.toml), so CI keeps it that way."""

from __future__ import annotations

import subprocess
import sys

from tests.fixtures.lock import ROOT


def test_ruff_check_passes():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_format_check_passes():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
