"""Catalog benchmark: S3 requests of "the latest backup" with and without the catalog, on a moto S3 server.

Creates ``--backups`` (default 3,000) small backups with the engine directly (``Repository.begin``, one tiny
object each, labels alternating ``t``/``u``) in a fresh bucket of a ``moto.server`` subprocess on a free
loopback port, then counts the HTTP requests each lookup of the newest ``t`` backup sends (a botocore
``before-send`` hook on the storage's client, retries included), each with a fresh ``Repository``:

* today's path: ``Repository.newest`` (one LIST of v1/backups/, a manifest GET and a key-object GET each);
* the catalog cold: an empty local cache;
* the catalog warm: the same cache after ``--added`` (default 5) new backups; and with nothing added.

The backups get the ids of a ``--cadence-minutes`` (default 15) schedule ending now, as a 30-day repository
holds them (ids are start times; the bench itself writes them within minutes).

It prints the table against the goals (issue 14.2: warm <= 5 + 1 per added backup; cold <= N/100 + 5) and
exits non-zero if a goal is missed or an answer differs from today's. The creation time is printed too.

Usage: python3 bench/catalog.py [--backups 3000] [--added 5] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Counter:
    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, **_: object) -> None:
        self.requests += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backups", type=int, default=3000)
    ap.add_argument("--added", type=int, default=5)
    ap.add_argument("--cadence-minutes", type=float, default=15, help="spacing of the backup ids (0: real time)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    import boto3

    from seedvault import catalog
    from seedvault.crypto.keys import KeySource, generate_raw_key
    from seedvault.repository import Repository
    from seedvault.storage.s3 import S3Storage
    from tests.fixtures.s3 import free_loopback_port, stop_process, wait_until_answering

    work = Path(tempfile.mkdtemp(prefix="seedvault-bench-catalog-"))
    key_file = work / "master.key"
    key_file.write_text(generate_raw_key() + "\n")
    key_file.chmod(0o600)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-not-a-secret", AWS_DEFAULT_REGION="us-east-1"
    )
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    port = free_loopback_port()
    log = open(work / "moto.log", "wb")  # noqa: SIM115 - closed at the end
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEEDVAULT_")}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    try:
        problem = wait_until_answering(endpoint, proc, 60)
        if problem:
            raise SystemExit(f"moto server {problem}")
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")

        def fresh() -> tuple[Repository, Counter]:
            storage = S3Storage("bench", prefix="repo", endpoint_url=endpoint)
            counter = Counter()
            storage._client.meta.events.register("before-send.s3.*", counter)
            return Repository(storage, KeySource("raw", origin="bench key", path=key_file)), counter

        writer, _ = fresh()
        # Backup ids are start times: a 30-day repository at the Neo4j cadence has one id per 15 minutes. The
        # bench writes N backups in minutes, so it gives them the ids of that cadence, the newest one now (a
        # warm reader lists v1/keys/ only after its horizon, an hour before its last read: with every id in
        # the last hour, as a plain run would make them, it would list them all).
        from seedvault.format import layout

        real_new_id = layout.new_backup_id
        clock = {"next": datetime.now(UTC) - timedelta(minutes=args.cadence_minutes * args.backups)}

        def cadence_id(now: datetime | None = None) -> str:
            when = min(clock["next"], datetime.now(UTC))
            clock["next"] += timedelta(minutes=args.cadence_minutes)
            return real_new_id(when)

        if args.cadence_minutes > 0:
            layout.new_backup_id = cadence_id

        def add(n: int, start: int) -> list[str]:
            ids = []
            for i in range(start, start + n):
                with writer.begin(kind="put", labels={"name": "t" if i % 2 else "u"}) as w:
                    w.write_object("data", io.BytesIO(b"%d" % i))
                ids.append(w.backup_id)
            return ids

        t0 = time.perf_counter()
        ids = add(args.backups, 0)
        created = time.perf_counter() - t0

        def is_t(body: dict) -> bool:
            return body["labels"].get("name") == "t"

        def today() -> tuple[str | None, int]:
            repo, counter = fresh()
            entry, _ = repo.newest(is_t)
            return (entry.backup_id if entry else None), counter.requests

        def via_catalog(cache: Path) -> tuple[str | None, int, dict]:
            repo, counter = fresh()
            cat = catalog.Catalog(repo, cache=cache)
            entry, _ = cat.latest(is_t)
            return (entry.backup_id if entry else None), counter.requests, cat.stats.as_dict()

        cache = work / "cache"
        rows = []
        t0 = time.perf_counter()
        expected, n_today = today()
        rows.append(("today's path (Repository.newest)", n_today, None, expected, time.perf_counter() - t0))
        t0 = time.perf_counter()
        got, n_cold, stats = via_catalog(cache)
        n = args.backups
        rows.append(
            (f"catalog, cold cache ({stats['loose']} loose)", n_cold, n / 100 + 5, got, time.perf_counter() - t0)
        )
        t0 = time.perf_counter()
        got0, n_warm0, _ = via_catalog(cache)
        rows.append(("catalog, warm cache, nothing added", n_warm0, 5, got0, time.perf_counter() - t0))
        new = add(args.added, n)
        expected_new = [b for i, b in enumerate(ids + new) if i % 2][-1]
        t0 = time.perf_counter()
        got_w, n_warm, _ = via_catalog(cache)
        rows.append(
            (f"catalog, warm cache, {args.added} added", n_warm, 5 + args.added, got_w, time.perf_counter() - t0)
        )
        t0 = time.perf_counter()
        expected_after, n_today_after = today()
        rows.append(
            (f"today's path, {args.added} added", n_today_after, None, expected_after, time.perf_counter() - t0)
        )
        listing = catalog._list_index(writer)
    finally:
        stop_process(proc)
        log.close()

    answers_ok = rows[1][3] == rows[2][3] == expected and rows[3][3] == expected_after == expected_new
    missed = [r[0] for r in rows if r[2] is not None and r[1] > r[2]]
    if args.json:
        print(json.dumps({
            "backups": args.backups, "added": args.added, "create_seconds": round(created, 1),
            "catalog": {"generation": listing.top[0], "segments": len(listing.top[1]), "loose": listing.loose},
            "rows": [{"what": r[0], "requests": r[1], "goal": r[2], "seconds": round(r[4], 3)} for r in rows],
            "answers_agree": answers_ok, "goals_missed": missed,
        }, indent=2))  # fmt: skip
    else:
        print(f"{args.backups} backups created in {created:.0f} s ({created / args.backups * 1000:.0f} ms each)")
        print(f"{'lookup of the newest backup labelled t':48} {'requests':>9} {'goal':>8} {'seconds':>8}")
        for what, count, goal, _, seconds in rows:
            goal_text = f"<= {goal:g}" if goal is not None else "-"
            print(f"{what:48} {count:9d} {goal_text:>8} {seconds:8.2f}")
        print("answers agree with today's path" if answers_ok else "ANSWERS DIFFER from today's path")
        for what in missed:
            print(f"GOAL MISSED: {what}")
    return 0 if answers_ok and not missed else 1


if __name__ == "__main__":
    sys.exit(main())
