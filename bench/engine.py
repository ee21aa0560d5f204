"""Engine benchmark: seedvault put/get throughput and peak RSS against same-run anchors.

Anchors, measured in the same run on the same input file (page cache warm) writing to the same disk:
  * ``zstd -T0 -3 | openssl enc -aes-256-ctr``  (the fastest "by hand" equivalent; goal: ratio >= 0.8)
  * ``gzip | openssl enc -aes-256-cbc -pbkdf2 -iter 100000``  (the platform's old pipeline; goal >= 3)
Peak RSS of ``seedvault put`` is measured (wait4 rusage) for a 1 GiB and a 4 GiB stream fed through a pipe
(goal: flat, <= 200 MB). Keys and passphrases go through files, never command lines.

Usage: python3 bench/engine.py [--size-mib 1024] [--rss-gib 1,4] [--runs 2] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "seedvault.cli.app"]


def mixed_block_source(total: int, seed: int = 11):
    rng = random.Random(seed)
    pool = rng.randbytes(16 << 20)
    block, produced, i = 1 << 20, 0, 0
    while produced < total:
        n = min(block, total - produced)
        if i % 2:
            off = rng.randrange(0, len(pool) - n)
            data = pool[off : off + n]
        else:
            line = f"{i:09d},sensor-{i % 113},2026-11-25T02:{i % 60:02d}:00Z,{rng.random():.6f},ok\n".encode()
            data = (line * (n // len(line) + 1))[:n]
        yield data
        produced += n
        i += 1


def timed_shell(cmd: str, env: dict[str, str]) -> tuple[float, int]:
    """Run a shell pipeline; returns (seconds, peak RSS in KiB of its largest child)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", cmd], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark command failed: {cmd}")
    return seconds, usage.ru_maxrss


def rss_of_put(total: int, env: dict[str, str]) -> int:
    proc = subprocess.Popen(
        CLI + ["put", "--label", f"rss-{total}"], env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    for block in mixed_block_source(total, seed=total % 97):
        proc.stdin.write(block)
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("seedvault put failed during the RSS run")
    return usage.ru_maxrss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rss-gib", default="1,4")
    ap.add_argument("--runs", type=int, default=3)
    # tmpfs by default: the engine is measured, not the disk (both sides write to the same place).
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir())
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    for tool in ("zstd", "gzip", "openssl", "bash"):
        if not shutil.which(tool):
            raise SystemExit(f"bench needs {tool} on PATH")
    work = Path(tempfile.mkdtemp(prefix="seedvault-bench-", dir=args.dir))
    try:
        size = args.size_mib << 20
        src = work / "input.bin"
        with open(src, "wb") as fh:
            for block in mixed_block_source(size):
                fh.write(block)
        (work / "pass").write_text("bench-throwaway-passphrase\n")
        key = work / "master.key"
        env = {
            **os.environ,
            "SEEDVAULT_REPOSITORY": f"file://{work / 'repo'}",
            "SEEDVAULT_KEY_FILE": str(key),
            "CI": "1",
        }
        subprocess.run(CLI + ["key", "generate", "-o", str(key)], env=env, check=True, capture_output=True)
        subprocess.run(CLI + ["init"], env=env, check=True, capture_output=True)
        pf = f"file:{work / 'pass'}"
        cmds = {
            "seedvault put": f"{' '.join(CLI)} put --label bench --input {src} > {work}/id",
            "zstd -T0 | openssl ctr": f"zstd -T0 -3 -q -c {src} | openssl enc -aes-256-ctr -pbkdf2 -iter 1 "
            f"-pass {pf} > {work}/anchor.zst.enc",
            "gzip | openssl cbc (old)": f"gzip -c {src} | openssl enc -aes-256-cbc -salt -pbkdf2 -iter 100000 "
            f"-pass {pf} > {work}/old.gz.enc",
        }
        best: dict[str, float] = {}
        for _ in range(args.runs):
            for name, cmd in cmds.items():
                if name == "seedvault put" and (work / "id").exists():  # same conditions each run
                    subprocess.run(
                        CLI + ["delete", (work / "id").read_text().strip(), "--yes"],
                        env=env,
                        check=True,
                        capture_output=True,
                    )
                secs, _ = timed_shell(cmd, env)
                best[name] = min(best.get(name, secs), secs)
        last_id = (work / "id").read_text().strip()
        restore = {
            "seedvault get": f"{' '.join(CLI)} get {last_id} > /dev/null",
            "openssl ctr -d | zstd -d": f"openssl enc -d -aes-256-ctr -pbkdf2 -iter 1 -pass {pf} "
            f"< {work}/anchor.zst.enc | zstd -d -q -c > /dev/null",
            "openssl cbc -d | gunzip (old)": f"openssl enc -d -aes-256-cbc -pbkdf2 -iter 100000 -pass {pf} "
            f"< {work}/old.gz.enc | gzip -d -c > /dev/null",
        }
        for _ in range(args.runs):
            for name, cmd in restore.items():
                secs, _ = timed_shell(cmd, env)
                best[name] = min(best.get(name, secs), secs)
        mib = size / (1 << 20)
        rates = {name: mib / secs for name, secs in best.items()}
        rss = {}
        for gib in [int(x) for x in args.rss_gib.split(",") if x]:
            rss_env = dict(env, SEEDVAULT_REPOSITORY=f"file://{work / 'rss-repo'}")
            rss[f"{gib} GiB"] = round(rss_of_put(gib << 30, rss_env) / 1024, 1)
            shutil.rmtree(work / "rss-repo", ignore_errors=True)
        result = {
            "input_mib": mib,
            "cores": os.cpu_count(),
            "throughput_mib_s": {k: round(v, 1) for k, v in rates.items()},
            "ratios": {
                "put / (zstd|openssl ctr)": round(rates["seedvault put"] / rates["zstd -T0 | openssl ctr"], 2),
                "put / old pipeline": round(rates["seedvault put"] / rates["gzip | openssl cbc (old)"], 2),
                "get / (openssl|zstd -d)": round(rates["seedvault get"] / rates["openssl ctr -d | zstd -d"], 2),
                "get / old pipeline": round(rates["seedvault get"] / rates["openssl cbc -d | gunzip (old)"], 2),
            },
            "peak_rss_mb_put": rss,
            "stored_mib": {
                "seedvault": round(
                    sum(p.stat().st_size for p in (work / "repo").rglob("*") if p.is_file()) / (1 << 20), 1
                ),
                "zstd|openssl": round((work / "anchor.zst.enc").stat().st_size / (1 << 20), 1),
                "old": round((work / "old.gz.enc").stat().st_size / (1 << 20), 1),
            },
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(
                f"input: {mib:.0f} MiB mixed (half random, half CSV-like); {os.cpu_count()} cores; best of {args.runs}"
            )
            for k, v in result["throughput_mib_s"].items():
                print(f"  {k:34s} {v:8.1f} MiB/s")
            for k, v in result["ratios"].items():
                print(f"  ratio {k:28s} {v:6.2f}")
            for k, v in rss.items():
                print(f"  peak RSS seedvault put, {k:8s} {v:8.1f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
