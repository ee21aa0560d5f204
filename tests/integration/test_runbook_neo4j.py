"""Run RUNBOOK.md's Neo4j blocks (```bash runbook-neo4j, sections 20-24), extracted from the file itself, in
order, with ``bash -euo pipefail``, against the fake neo4j-admin of tests/fixtures/fake_neo4j.py.

Three fake servers, one state directory each, between which the test switches as the runbook moves on: a 5.x
Community host (systemd unit stood in for by ``fake-neo4j stop|start``, ``NEO4J_STATUS`` by a status shim), a
5.x Enterprise host (online FULL/DIFF, ``--restore-until``) and a 4.4 Enterprise container reached through a
``docker exec`` shim (which, like docker, gives the command no stdin without ``-i``). neo4j-admin runs behind
the documented ``runuser -u neo4j --`` prefix (a shim that records the user). The repository is a local
``file://`` one with a generated key. Between sections the test plays the world (damages a store, makes a
mistake, makes the next dump or load fail) and checks what each section left behind: the dump bytes stored
and restored byte-identical, the safety copies, the chain of a DIFF, the exact neo4j-admin command lines,
the database running again after a failed dump, a failed load rolled back. A block that fails names its
section. No real Neo4j is needed; Bolt-only commands (counts, the export) are plain blocks, whose options are
checked against the CLI.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import typer

from seedvault.config import load
from seedvault.repository import Repository
from seedvault.storage.open import open_storage
from tests.fixtures import fake_neo4j
from tests.helpers import base_env, run_cli
from tests.test_runbook import RUNBOOK, fenced_blocks, runbook_blocks

TAG = "runbook-neo4j"
DB = "neo4j"
SECTIONS = {
    "20": "Neo4j: back up (Community: offline dump; Enterprise: online FULL/DIFF)",
    "21": "Neo4j: restore (safety copy, counts, roll-back)",
    "22": "Neo4j: point in time (Enterprise 5.x --restore-until)",
    "23": "Neo4j: Community online export/import and its limits",
    "24": "Neo4j: when a backup or restore fails",
}
RUNNABLE = ("20.1", "20.2", "20.3", "20.4", "21.1", "21.2", "22.1", "24.1", "24.2")
NEO4J_SECTION = re.compile(r"^2[0-4]\.")
FAKE = Path(fake_neo4j.__file__)
CONTAINER = "graph1"
UNTIL = "2026-12-01 10:14:59"
LOAD_FAILURE = "ERROR: Failed to load database 'neo4j': No space left on device"

# Shims on the blocks' PATH. neo4j-admin: the fake, except that a marker file makes the next `database load`
# fail (the fake only knows failing dumps and starts); runuser: `-u USER -- CMD` runs CMD as ourselves and
# records USER; docker: `exec [-i] [--user U] CONTAINER CMD`, no stdin without -i, as the real one.
SHIMS = {
    "neo4j-admin": f"""#!/bin/sh
if [ "$1 $2" = "database load" ] && [ -e "$FAKE_NEO4J_STATE/fail-next-load" ]; then
  rm -f "$FAKE_NEO4J_STATE/fail-next-load"
  cat > /dev/null
  echo "{LOAD_FAILURE}" >&2
  exit 1
fi
exec {sys.executable} {FAKE} "$@"
""",
    "fake-neo4j": f'#!/bin/sh\nexec {sys.executable} {FAKE} --service "$@"\n',
    "fake-neo4j-status": """#!/bin/sh
if [ -e "$FAKE_NEO4J_STATE/running-$1" ]; then echo active; else echo inactive; exit 3; fi
""",
    "runuser": """#!/bin/sh
[ "$1" = -u ] && [ "$3" = -- ] || { echo "runuser shim: expected -u USER -- CMD..." >&2; exit 1; }
printf '%s %s\\n' "$2" "$4" >> "$FAKE_NEO4J_STATE/runuser.log"
shift 3
exec "$@"
""",
    "docker": """#!/bin/sh
printf '%s\\n' "$*" >> "$FAKE_NEO4J_STATE/docker.log"
[ "$1" = exec ] || { echo "docker shim: only exec" >&2; exit 125; }
shift
interactive=0
while :; do
  case "$1" in
    -i|--interactive) interactive=1; shift ;;
    -u|--user) shift 2 ;;
    --user=*) shift ;;
    -*) echo "docker shim: unknown option $1" >&2; exit 125 ;;
    *) break ;;
  esac
done
[ "$1" = "$(cat "$FAKE_NEO4J_STATE/container" 2>/dev/null)" ] || { echo "Error: No such container: $1" >&2; exit 1; }
shift
if [ "$interactive" = 1 ]; then exec "$@"; else exec "$@" < /dev/null; fi
""",
}


# --- the document ------------------------------------------------------------------------------------
def test_runbook_neo4j_sections_and_tags() -> None:
    """Sections 20-24 follow 19 under their titles; every runnable one has blocks, and only this tag has them."""
    headings = re.findall(r"^## (\d+)\. (.+)$", _text_outside_blocks(), re.M)
    numbers = [int(n) for n, _ in headings]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
    assert {20, 21, 22, 23, 24} <= set(numbers), numbers
    assert {n: title for n, title in headings if n in SECTIONS} == SECTIONS
    sections = [s for s, _ in runbook_blocks(TAG)]
    for prefix in RUNNABLE:
        assert any(s.startswith(prefix + " ") for s in sections), f"no {TAG} block in RUNBOOK section {prefix}"
    assert all(NEO4J_SECTION.match(s) for s in sections), sections
    for other in ("runbook", "runbook-pitr"):  # what tests/test_runbook.py and test_runbook_pitr.py run
        assert not [s for s, _ in runbook_blocks(other) if NEO4J_SECTION.match(s)], other


def _text_outside_blocks() -> str:
    """RUNBOOK.md without its fenced blocks (a heading inside a block is not a section)."""
    out, inside = [], False
    for line in RUNBOOK.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif not inside:
            out.append(line)
    return "\n".join(out)


def _neo4j_options() -> dict[str, set[str]]:
    from seedvault.cli.app import app

    group = typer.main.get_command(app)
    return {
        verb: {o for p in group.commands[verb].commands["neo4j"].params for o in p.opts}  # type: ignore[attr-defined]
        for verb in ("backup", "restore")
    }


def test_runbook_neo4j_commands_use_real_options() -> None:
    """Every `seedvault backup|restore neo4j` line of sections 20-24, runnable or not (Bolt ones cannot run
    here), uses only options that command has, and never puts a password on the command line."""
    options = _neo4j_options()
    seen = 0
    for info in ("bash", f"bash {TAG}"):
        for section, body in fenced_blocks(info):
            if not NEO4J_SECTION.match(section):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                m = re.search(r"\bseedvault (backup|restore) neo4j\b(.*)", line)
                if not m:
                    continue
                seen += 1
                words = shlex.split(m.group(2).split(" 2>")[0].split(" ||")[0])
                unknown = [w for w in words if w.startswith("--") and w.split("=")[0] not in options[m.group(1)]]
                assert not unknown, f"RUNBOOK section '{section}': {m.group(1)} neo4j has no {unknown}: {line}"
                assert not re.search(r"password(?!-file)|://[^/\s]*@", m.group(2)), f"'{section}': secret? {line}"
    assert seen >= 20, seen


# --- the fake world --------------------------------------------------------------------------------
def _server(base: Path, name: str, version: str, edition: str, *, container: str | None = None) -> Path:
    state = base / name
    state.mkdir()
    (state / "version").write_text(version)
    (state / "edition").write_text(edition)
    (state / f"store-{DB}").write_bytes(b"PMP" * 20_000 + os.urandom(50_000) + name.encode())
    (state / f"running-{DB}").touch()
    if container:
        (state / "container").write_text(container)
    return state


def _lines(state: Path, name: str) -> list:
    path = state / name
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _admin_calls(state: Path) -> list[list[str]]:
    """The dump/load/backup/restore calls (``database info``, which reads a stopped store's id, left out)."""
    return [a for a in _lines(state, "argv.log") if a != ["--version"] and a[:2] != ["database", "info"]]


def _store(state: Path) -> bytes:
    return (state / f"store-{DB}").read_bytes()


def _running(state: Path) -> bool:
    return (state / f"running-{DB}").exists()


class World:
    def __init__(self, env: dict[str, str], work: Path, stage: Path, servers: dict[str, Path]) -> None:
        self.env, self.work, self.stage, self.servers = env, work, stage, servers
        self.original = {name: _store(state) for name, state in servers.items()}
        self.outputs: dict[str, str] = {}
        self.remember: dict[str, object] = {}

    def repo(self) -> Repository:
        settings = load(env=self.env)
        return Repository(open_storage(settings), settings.key_source())

    def backups(self, label: str) -> list[tuple[str, dict]]:
        return [(e.backup_id, e.body) for e in self.repo().entries() if e.body and e.body["labels"]["name"] == label]

    def id_file(self, name: str) -> str:
        return (self.work / name).read_text().strip()

    def use(self, server: str) -> dict[str, str]:
        return {fake_neo4j.STATE_ENV: str(self.servers[server])}

    def staged_nothing(self) -> None:
        assert list(self.stage.iterdir()) == [], list(self.stage.iterdir())


def _run(world: World, hooks: dict[str, Callable[[World], dict[str, str] | None]]) -> None:
    """Like tests.test_runbook.run_blocks, but keeping each section's stdout for the checks that follow."""
    env = world.env
    bindir = world.work / "bin"
    bindir.mkdir(exist_ok=True)
    shim = bindir / "seedvault"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m seedvault.cli.app "$@"\n')
    shim.chmod(0o755)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    pending = dict(hooks)
    for section, script in runbook_blocks(TAG):
        for prefix in [p for p in pending if section.startswith(p)]:
            env.update(pending.pop(prefix)(world) or {})
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, cwd=world.work, timeout=120
        )
        world.outputs[section] = world.outputs.get(section, "") + proc.stdout.decode()
        assert proc.returncode == 0, (
            f"RUNBOOK section '{section}' failed (exit {proc.returncode}):\n{script}\n"
            f"stdout:\n{proc.stdout.decode()[-3000:]}\nstderr:\n{proc.stderr.decode()[-3000:]}"
        )
    assert not pending, f"no RUNBOOK section starts with {sorted(pending)}"


def _output(world: World, prefix: str) -> str:
    return "".join(out for section, out in world.outputs.items() if section.startswith(prefix + " "))


# --- checks between sections ------------------------------------------------------------------------
def check_dump(w: World) -> dict[str, str]:
    """20.1: the tool's dump bytes stored whole; stopped and started again once; neo4j-admin as neo4j."""
    ce = w.servers["ce"]
    bid = w.id_file("neo4j-ce-id")
    body = w.repo().manifest(bid)
    src = body["source"]
    assert (src["mode"], src["version"], src["edition"], src["dialect"]) == ("dump", "5.26.1", "community", "5")
    assert src["downtime_ms"] >= 0 and src["counts"] is None and src["where"] == "runuser -u neo4j --"
    assert b"".join(w.repo().read_object(bid, "dump")) == b"NEO4JDUMP" + w.original["ce"]
    assert _admin_calls(ce) == [["database", "dump", DB, "--to-stdout"]]
    assert _lines(ce, "events.log") == [["stop", DB], ["start", DB]] and _running(ce)
    assert {line.split()[0] for line in (ce / "runuser.log").read_text().splitlines()} == {"neo4j"}
    assert f"{bid}  neo4j {DB} (dump)" in _output(w, "20.1") and "downtime" in _output(w, "20.1")
    return w.use("ee")


def check_full(w: World) -> None:
    """20.2: an online FULL while the database runs; then the graph changes before the DIFF."""
    ee = w.servers["ee"]
    ((full_id, body),) = w.backups("neo4j-ee")
    src = body["source"]
    assert (src["mode"], src["backup_type"], src["edition"]) == ("online", "FULL", "enterprise")
    assert body["parent"] is None and "downtime_ms" not in src and len(src["artifacts"]) == 1
    (call,) = _admin_calls(ee)
    assert call[:3] == ["database", "backup", DB] and call[4:] == ["--type=FULL"]
    assert call[3].startswith(f"--to-path={w.stage}/seedvault-backup-")
    assert not (ee / "events.log").exists() and _running(ee)  # never stopped
    w.staged_nothing()
    w.remember["full"] = full_id
    (ee / f"store-{DB}").write_bytes(_store(ee) + b"PPP written after the FULL")
    w.remember["ee_at_diff"] = _store(ee)


def check_diff(w: World) -> dict[str, str]:
    """20.3: the DIFF extends the FULL (laid into staging first), only its new artifact stored."""
    ee = w.servers["ee"]
    diff_id, full_id = w.id_file("neo4j-ee-id"), w.remember["full"]
    body = w.repo().manifest(diff_id)
    src = body["source"]
    assert src["backup_type"] == "DIFF" and body["parent"] == full_id and src["chain"] == [full_id, diff_id]
    assert len(src["artifacts"]) == 1 and src["artifacts"] != w.repo().manifest(full_id)["source"]["artifacts"]
    assert _admin_calls(ee)[-1][4:] == ["--type=DIFF"]
    assert re.search(rf"^parent +{full_id}$", _output(w, "20.3"), re.M), _output(w, "20.3")
    assert not (ee / "events.log").exists() and _running(ee)
    w.staged_nothing()
    return w.use("v44")


def check_44_then_damage(w: World) -> dict[str, str]:
    """20.4: 4.4's backup command inside the container, files out through docker exec; then 21's damage."""
    v44 = w.servers["v44"]
    bid = w.id_file("neo4j-44-id")
    src = w.repo().manifest(bid)["source"]
    assert (src["version"], src["dialect"], src["backup_type"]) == ("4.4.30", "4.4", "FULL")
    assert src["where"] == f"docker exec -i --user neo4j {CONTAINER}" and src["artifacts"] == [DB]
    (call,) = _admin_calls(v44)
    assert call[0] == "backup" and call[1].startswith(f"--backup-dir={w.stage}/seedvault-backup-")
    assert call[2:] == [f"--database={DB}"]
    docker = (v44 / "docker.log").read_text().splitlines()
    assert docker[0] == f"exec {CONTAINER} neo4j-admin --version", docker
    assert all(line.startswith(f"exec -i --user neo4j {CONTAINER} ") for line in docker[1:]), docker
    assert any(" tar -C " in line for line in docker), docker  # the artifacts came out through the prefix
    assert not (v44 / "runuser.log").exists()  # --admin-prefix replaced SEEDVAULT_NEO4J_PREFIX
    w.staged_nothing()
    # 21: the Community database goes bad.
    ce = w.servers["ce"]
    (ce / f"store-{DB}").write_bytes(b"damaged live graph")
    return w.use("ce")


def check_restore(w: World) -> None:
    """21.1: the dump restored byte-identical, after a verified safety copy of what was live."""
    ce = w.servers["ce"]
    bid = w.id_file("neo4j-ce-id")
    assert _store(ce) == w.original["ce"] and _running(ce)
    ((safety, body),) = w.backups(f"safety-{DB}-before-{bid}")
    assert body["source"]["mode"] == "dump"
    assert b"".join(w.repo().read_object(safety, "dump")) == b"NEO4JDUMP" + b"damaged live graph"
    calls = _admin_calls(ce)
    assert calls[-2:] == [
        ["database", "dump", DB, "--to-stdout"],  # the safety copy first
        ["database", "load", DB, "--from-stdin", "--overwrite-destination=true", "--verbose"],
    ]
    out = _output(w, "21.1")
    assert f"restored backup {bid} into neo4j {DB}: counts not checked" in out, out
    assert f"previous database kept as backup {safety}" in out, out
    w.remember["safety"] = safety


def check_put_back(w: World) -> dict[str, str]:
    """21.2: the safety copy restored puts the damaged database back (itself after a safety copy)."""
    ce = w.servers["ce"]
    assert _store(ce) == b"damaged live graph" and _running(ce)
    assert len(w.backups(f"safety-{DB}-before-{w.remember['safety']}")) == 1
    # 22: a mistake on the Enterprise database, after its DIFF; the operator knows when.
    ee = w.servers["ee"]
    (ee / f"store-{DB}").write_bytes(b"MATCH (n) DETACH DELETE n happened here")
    return {**w.use("ee"), "UNTIL": UNTIL}


def check_pitr_then_fail_dump(w: World) -> dict[str, str]:
    """22.1: the chain (FULL then DIFF) restored up to UNTIL, over a safety copy; then 24.1's failing dump."""
    ee = w.servers["ee"]
    diff_id = w.id_file("neo4j-ee-id")
    assert _store(ee) == w.remember["ee_at_diff"] and _running(ee)
    restore = _admin_calls(ee)[-1]
    artifact = w.repo().manifest(diff_id)["source"]["artifacts"][0]
    assert restore[:3] == ["database", "restore", DB] and restore[3].startswith(f"--from-path={w.stage}/")
    assert restore[3].endswith(f"/{artifact}")
    assert restore[4:] == ["--overwrite-destination=true", f"--restore-until={UNTIL}"]
    ((safety, _),) = w.backups(f"safety-{DB}-before-{diff_id}")
    assert b"".join(w.repo().read_object(safety, "dump")).endswith(b"DETACH DELETE n happened here")
    w.staged_nothing()
    w.remember["ce_backups"] = len(w.backups("neo4j-ce"))
    w.remember["ce_events"] = len(_lines(w.servers["ce"], "events.log"))
    return {**w.use("ce"), fake_neo4j.FAIL_ENV: "dump"}


def check_failed_dump_then_fail_load(w: World) -> dict[str, str]:
    """24.1: exit 50 with the tool's line; the database started again; nothing listed. Then a load fails."""
    ce = w.servers["ce"]
    out = _output(w, "24.1")
    assert out.startswith("exit 50: seedvault: error: ") and "simulated No space left on device" in out, out
    assert _running(ce) and _lines(ce, "events.log")[w.remember["ce_events"] :] == [["stop", DB], ["start", DB]]
    assert len(w.backups("neo4j-ce")) == w.remember["ce_backups"]
    (ce / "fail-next-load").touch()
    w.remember["ce_before_24_2"] = _store(ce)
    return {fake_neo4j.FAIL_ENV: ""}


def check_rolled_back(w: World) -> None:
    """24.2: exit 51, the load's own error, the safety copy put back: the database as before, running."""
    ce = w.servers["ce"]
    out = _output(w, "24.2")
    bid = w.id_file("neo4j-ce-id")
    assert out.startswith("exit 51: seedvault: error: ") and LOAD_FAILURE in out, out
    (safety, _) = w.backups(f"safety-{DB}-before-{bid}")[-1]
    assert f"the previous database was put back from {safety}" in out, out
    assert _store(ce) == w.remember["ce_before_24_2"] and _running(ce) and not (ce / "fail-next-load").exists()
    loads = [c for c in _admin_calls(ce) if c[:2] == ["database", "load"]]
    assert len(loads) == 3  # 21.1, 21.2 and the roll-back (the failed load never reached the fake)


def test_runbook_neo4j_blocks_run(tmp_path: Path) -> None:
    base = tmp_path / "neo4j"
    base.mkdir()
    servers = {
        "ce": _server(base, "ce-5", "5.26.1", "community"),
        "ee": _server(base, "ee-5", "5.26.1", "enterprise"),
        "v44": _server(base, "ee-44", "4.4.30", "enterprise", container=CONTAINER),
    }
    work, stage, fakebin = tmp_path / "work", tmp_path / "stage", tmp_path / "fakebin"
    for d in (work, stage, fakebin):
        d.mkdir()
    for name, text in SHIMS.items():
        (fakebin / name).write_text(text)
        (fakebin / name).chmod(0o755)
    env = base_env(
        WORK=str(work),
        SEEDVAULT_REPOSITORY=f"file://{tmp_path / 'repo'}",
        SEEDVAULT_KEY_FILE=str(tmp_path / "master.key"),
        NEO4J_STOP=f"fake-neo4j stop {DB}",  # systemctl stop neo4j
        NEO4J_START=f"fake-neo4j start {DB}",  # systemctl start neo4j
        NEO4J_STATUS=f"fake-neo4j-status {DB}",  # systemctl is-active neo4j
        SEEDVAULT_NEO4J_PREFIX="runuser -u neo4j --",
        NEO4J_STAGE=str(stage),
        NEO4J_CONTAINER=CONTAINER,
        **{fake_neo4j.STATE_ENV: str(servers["ce"])},
    )
    env["PATH"] = f"{fakebin}:{env['PATH']}"  # ahead of a real docker or runuser
    for name in (fake_neo4j.FAIL_ENV, "NEO4J_PASSWORD", "NEO4J_HOME", "NEO4J_CONF", "UNTIL"):
        env.pop(name, None)
    run_cli(["key", "generate", "-o", env["SEEDVAULT_KEY_FILE"]], env, check=True)
    world = World(env, work, stage, servers)

    t0 = time.monotonic()
    _run(
        world,
        {
            "20.2": check_dump,
            "20.3": check_full,
            "20.4": check_diff,
            "21.1": check_44_then_damage,
            "21.2": check_restore,
            "22.1": check_put_back,
            "24.1": check_pitr_then_fail_dump,
            "24.2": check_failed_dump_then_fail_load,
        },
    )
    check_rolled_back(world)
    print(f"runbook-neo4j blocks ran in {time.monotonic() - t0:.1f} s")
