"""The seedvault demo: protect and restore data through a local repository, on embedded defaults.

Run with ``python demo.py`` (after ``pip install -e '.[test]'``). Everything happens in a temporary
directory that is removed at the end; nothing outside it is touched.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CLI = [sys.executable, "-m", "seedvault.cli.app"]


def sh(args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    print("$ seedvault " + " ".join(args), flush=True)
    proc = subprocess.run(CLI + args, env=env, **kw)
    if proc.returncode != 0:
        sys.exit(f"demo failed at: seedvault {' '.join(args)} (exit {proc.returncode})")
    return proc


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="seedvault-demo-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "SEEDVAULT_REPOSITORY": f"file://{work / 'repo'}",
            "SEEDVAULT_KEY_FILE": str(work / "master.key"),
        }
        sh(["key", "generate", "-o", str(work / "master.key")], env)
        data = work / "sample.bin"
        with open(data, "wb") as fh:  # 64 MiB: half random, half compressible CSV-like rows
            for i in range(32):
                fh.write(os.urandom(1 << 20))
                fh.write((f"{i},sensor-{i % 7},2026-11-25T02:00:00Z,{i * 0.5}\n" * 40000).encode()[: 1 << 20])
        backup_id = sh(
            ["put", "--label", "demo-file", "--input", str(data)], env, capture_output=True, text=True
        ).stdout.strip()
        print(backup_id)
        sh(["list"], env)
        sh(["verify", backup_id], env)
        restored = work / "restored.bin"
        sh(["get", backup_id, "-o", str(restored)], env)
        a = hashlib.sha256(data.read_bytes()).hexdigest()
        b = hashlib.sha256(restored.read_bytes()).hexdigest()
        print(f"original sha256 {a}\nrestored sha256 {b}")
        if a != b:
            sys.exit("demo failed: restored bytes differ")
        print("demo ok: backup written, listed, verified and restored byte-identical")


if __name__ == "__main__":
    main()
