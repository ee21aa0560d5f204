"""BoltGraph and the logical export/import against a real Neo4j server.

Where the server comes from, first that applies:

1. ``NEO4J_URI`` + ``NEO4J_PASSWORD`` (``NEO4J_USER``, default neo4j; ``NEO4J_DATABASE``, default neo4j): a
   running server. Its database must be empty (the tests fill it and wipe it again); otherwise they skip.
2. ``NEO4J_HOME``: a Neo4j install (4.4, 5.x or 2025.x) started here with its own conf, data and logs under
   pytest's temp dir, on free loopback ports, with authentication on (a throwaway initial password).
3. A Docker engine that answers ``docker info``: the ``neo4j:5.26`` image through testcontainers.

With none of these every test here skips, saying which were looked for. Nothing at import time needs a server.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from seedvault.errors import DatabaseRefused, SeedvaultError, SourceError, TargetError
from seedvault.format.manifest import without_floats
from seedvault.sources.neo4j.bolt import IMPORT_INDEX, IMPORT_LABEL, BoltGraph, compare_counts, quote_name
from seedvault.sources.neo4j.export import GraphExporter, import_stream
from seedvault.sources.neo4j.values import encode_props

ODD = "Odd `Label` x"  # a label that needs quoting: backticks and spaces
WORKS_AT = "WORKS AT"
START_TIMEOUT = 180


@dataclass
class Neo4jServer:
    uri: str
    user: str
    password: str
    database: str
    auth: bool
    owned: bool  # started by these tests: free to wipe

    def graph(self, database: str | None = None, password: str | None = None) -> BoltGraph:
        return BoltGraph(self.uri, self.user, password or self.password, database or self.database)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _docker_problem() -> str | None:
    """None when a Docker engine answers ``docker info``, else why not."""
    if not shutil.which("docker"):
        return "no docker command"
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` failed: {exc}"
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    return f"`docker info` failed: {lines[-1] if lines else f'exit {proc.returncode}'}"


def _wait_for(server: Neo4jServer, alive) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with server.graph() as g:
                g.components()
            return
        except SeedvaultError as exc:
            if not alive() or time.monotonic() > deadline:
                pytest.fail(f"Neo4j did not come up at {server.uri}: {exc.one_line()}")
            time.sleep(1)


def _major(home: Path) -> int:
    jars = sorted(home.glob("lib/neo4j-kernel-*.jar"))
    if not jars:
        pytest.fail(f"NEO4J_HOME={home} has no lib/neo4j-kernel-*.jar: not a Neo4j install")
    return int(jars[0].name.removeprefix("neo4j-kernel-").split(".")[0])


def _start_from_home(home: Path, base: Path) -> Iterator[Neo4jServer]:
    """Neo4j from an install, with everything it writes under ``base``."""
    bolt_port, http_port = _free_port(), _free_port()
    conf = base / "conf"
    shutil.copytree(home / "conf", conf)
    prefix = "dbms" if _major(home) == 4 else "server"
    conn = "dbms.connector" if prefix == "dbms" else "server"
    settings = {
        f"{prefix}.default_listen_address": "127.0.0.1",
        f"{conn}.bolt.listen_address": f"127.0.0.1:{bolt_port}",
        f"{conn}.http.listen_address": f"127.0.0.1:{http_port}",
        f"{conn}.https.enabled": "false",
        f"{prefix}.directories.data": str(base / "data"),
        f"{prefix}.directories.logs": str(base / "logs"),
        f"{prefix}.directories.run": str(base / "run"),
        f"{prefix}.memory.heap.initial_size": "512m",
        f"{prefix}.memory.heap.max_size": "512m",
        f"{prefix}.memory.pagecache.size": "256m",
        "dbms.security.auth_enabled": "true",
    }
    # Neo4j 5 refuses a setting declared twice ("declared multiple times"): replace the install's own lines.
    conf_file = conf / "neo4j.conf"
    kept = [
        line
        for line in conf_file.read_text(encoding="utf-8").splitlines()
        if line.split("=", 1)[0].strip() not in settings
    ]
    conf_file.write_text("\n".join(kept) + "\n" + "".join(f"{k}={v}\n" for k, v in settings.items()), encoding="utf-8")
    log = open(base / "console.log", "wb")  # noqa: SIM115 - closed at teardown
    env = dict(os.environ, NEO4J_HOME=str(home), NEO4J_CONF=str(conf))
    # Authentication on, as in production (the wrong-password test needs it). neo4j-admin takes the initial
    # password only as an argument: a throwaway value of this test server, never a real secret.
    password = "sv-bolt-" + os.urandom(8).hex()
    verb = ["set-initial-password"] if _major(home) == 4 else ["dbms", "set-initial-password"]
    subprocess.run(
        [str(home / "bin" / "neo4j-admin"), *verb, password], env=env, check=True, capture_output=True, timeout=120
    )
    proc = subprocess.Popen([str(home / "bin" / "neo4j"), "console"], env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Neo4jServer(f"bolt://127.0.0.1:{bolt_port}", "neo4j", password, "neo4j", auth=True, owned=True)
    try:
        _wait_for(server, lambda: proc.poll() is None)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _start_container() -> Iterator[Neo4jServer]:
    try:
        from testcontainers.community.neo4j import Neo4jContainer
    except ImportError:  # older testcontainers
        from testcontainers.neo4j import Neo4jContainer
    password = "sv-" + os.urandom(8).hex()
    with Neo4jContainer("neo4j:5.26", password=password) as container:
        uri = f"bolt://{container.get_container_host_ip()}:{container.get_exposed_port(7687)}"
        server = Neo4jServer(uri, "neo4j", password, "neo4j", auth=True, owned=True)
        _wait_for(server, lambda: True)
        yield server


@pytest.fixture(scope="module")
def neo4j_server(tmp_path_factory) -> Iterator[Neo4jServer]:
    uri, home = os.environ.get("NEO4J_URI"), os.environ.get("NEO4J_HOME")
    if uri:
        password = os.environ.get("NEO4J_PASSWORD")
        if not password:
            pytest.skip("NEO4J_URI is set but NEO4J_PASSWORD is not")
        user, db = os.environ.get("NEO4J_USER", "neo4j"), os.environ.get("NEO4J_DATABASE", "neo4j")
        server = Neo4jServer(uri, user, password, db, auth=True, owned=False)
        with server.graph() as g:
            counts = g.counts()  # unreachable or refused: fail with the reason, the operator asked for this server
        if counts["nodes"] or counts["indexes"] or counts["constraints"]:
            pytest.skip(f"NEO4J_URI database {db} is not empty; these tests fill and wipe one (set NEO4J_DATABASE)")
        yield server
    elif home:
        yield from _start_from_home(Path(home), tmp_path_factory.mktemp("neo4j"))
    elif (docker := _docker_problem()) is None:
        yield from _start_container()
    else:
        pytest.skip(
            f"no Neo4j server to test against: NEO4J_URI/NEO4J_PASSWORD not set, NEO4J_HOME not set, "
            f"and no Docker engine ({docker})"
        )


def _wipe(graph: BoltGraph) -> None:
    counts = graph.counts()
    for entry in counts["constraints"]:
        graph.run_auto(f"DROP CONSTRAINT {quote_name(entry['name'])}", "drop constraint")
    for entry in graph.counts()["indexes"]:
        graph.run_auto(f"DROP INDEX {quote_name(entry['name'])}", "drop index")
    while graph.run("MATCH (n) WITH n LIMIT 5000 DETACH DELETE n RETURN count(*) AS c", write=True)[0]["c"]:
        pass


EXTREME_TEMPORALS = {
    "utc": "datetime('2024-01-02T03:04:05[UTC]')",
    "z": "datetime('2024-01-02T03:04:05Z')",
    "utcs": "[datetime('2024-01-01T00:00[UTC]'), datetime('2024-01-01T00:00Z')]",
    "far": "date('+10000-01-01')",
    "neg": "date('-0001-12-31')",
    "zero": "date('0000-06-15')",
    "farlocal": "localdatetime('+12345-06-07T08:09:10.123456789')",
    "faroff": "datetime('+10000-01-01T00:00:00+01:00')",
    "farzone": "datetime('+10000-07-01T12:00:00[Europe/Berlin]')",
    "farutc": "datetime('-0500-01-01T00:00:00Z')",
    "fars": "[date('2020-01-01'), date('+10000-01-01')]",
}


def _rendered(graph: BoltGraph, match: str, keys) -> dict[str, object]:
    """How the server itself prints each property (``toString``; lists element by element)."""
    cols = ", ".join(f"coalesce(toStringOrNull(x.{k}), [e IN x.{k} | toString(e)]) AS {k}" for k in keys)
    return graph.run(f"{match} RETURN {cols}")[0]


def _load(graph: BoltGraph) -> None:
    """10,000 nodes over 3 labels and 20,000 relationships over 2 types, every property type, indexes, a constraint."""
    run, auto = graph.run, graph.run_auto
    auto("CREATE CONSTRAINT person_pid FOR (p:Person) REQUIRE p.pid IS UNIQUE", "schema")
    auto("CREATE INDEX company_cid FOR (c:Company) ON (c.cid)", "schema")
    run(
        "UNWIND range(0, 4999) AS i CREATE (:Person {k: 'p' + toString(i), pid: i,"
        " name: 'person ' + toString(i), age: i % 90, score: i / 7.0, active: i % 2 = 0,"
        " tags: ['t' + toString(i % 5), 'x'], born: date('1950-01-01') + duration({days: i}),"
        " seen: datetime({epochMillis: 1700000000000 + i * 1000, timezone: 'Europe/Berlin'})})",
        write=True,
    )
    run(
        "UNWIND range(0, 2999) AS i CREATE (:Company {k: 'c' + toString(i), cid: i,"
        " name: 'company `' + toString(i) + '`',"
        " founded: localdatetime('2001-02-03T04:05:06.123456789') + duration({hours: i}),"
        " loc: point({longitude: 13.0 + i / 1000.0, latitude: 52.0}), hq: point({x: i, y: 2.5, z: -1.0})})",
        write=True,
    )
    run(
        f"UNWIND range(0, 1999) AS i CREATE (o:{quote_name(ODD)} {{k: 'o' + toString(i), oid: i,"
        " t: time('12:00:00.000000001+01:30'), lt: localtime('23:59:59'),"
        " d: duration({months: i, days: 1, seconds: 2}),"
        " nums: [i * 0.5, -1.0], flags: [true, false]})",
        write=True,
    )
    run(
        "UNWIND range(0, 11999) AS i MATCH (a:Person {pid: i % 5000}) MATCH (b:Person {pid: (i * 7 + 1) % 5000})"
        " CREATE (a)-[:KNOWS {since: date('2000-01-01') + duration({days: i % 3000}), weight: i / 100.0}]->(b)",
        write=True,
    )
    run(
        f"UNWIND range(0, 7999) AS i MATCH (a:Person {{pid: i % 5000}}) MATCH (c:Company {{cid: i % 3000}})"
        f" CREATE (a)-[:{quote_name(WORKS_AT)} {{role: 'r' + toString(i % 4)}}]->(c)",
        write=True,
    )
    # Values Cypher literals cannot make: bytes, NaN and infinities, the repeated DST hour (offset tells them apart).
    exotic = {
        "bytes": b"\x00\x01\xfe\xff",
        "nan": float("nan"),
        "inf": float("inf"),
        "odd": 'quote " backslash \\ tick ` newline \n 漢字',
    }
    run("MATCH (p:Person {pid: 0}) SET p += $props", {"props": exotic}, write=True)
    run(
        "MATCH (p:Person {pid: 1}) SET p.dst1 = datetime('2024-10-27T02:30+02:00[Europe/Berlin]'),"
        " p.dst2 = datetime('2024-10-27T02:30+01:00[Europe/Berlin]')",
        write=True,
    )
    # What the driver cannot tell apart or hold: zone id UTC next to offset Z, years outside 1-9999 (Neo4j's
    # range is +-999,999,999), alone and in lists, on a node and on a relationship.
    run("MATCH (p:Person {pid: 2}) SET " + ", ".join(f"p.{k} = {v}" for k, v in EXTREME_TEMPORALS.items()), write=True)
    run(
        "MATCH (:Person {pid: 2})-[r:KNOWS]->() WITH r LIMIT 1"
        " SET r.utc = datetime('2024-01-02T03:04:05[UTC]'), r.far = date('+10000-01-01')",
        write=True,
    )
    for statement in (
        "CREATE TEXT INDEX person_name_text FOR (p:Person) ON (p.name)",
        "CREATE POINT INDEX company_loc FOR (c:Company) ON (c.loc)",
        "CREATE INDEX knows_since FOR ()-[r:KNOWS]-() ON (r.since)",
        f"CREATE INDEX odd_composite FOR (o:{quote_name(ODD)}) ON (o.oid, o.lt)",
        "CREATE FULLTEXT INDEX person_fulltext FOR (p:Person) ON EACH [p.name, p.odd]",
    ):
        auto(statement, "schema")
    auto("CALL db.awaitIndexes(300)", "schema")


def _canonical(graph: BoltGraph) -> tuple[Counter, Counter]:
    """The whole graph without ids: nodes by labels and properties, relationships by their ends' ``k``."""
    nodes, keys = Counter(), {}
    for node_id, labels, props in graph.iter_nodes():
        keys[node_id] = props["k"]
        nodes[json.dumps([labels, encode_props(props)], sort_keys=True)] += 1
    rels = Counter(
        json.dumps([keys[s], keys[e], t, encode_props(p)], sort_keys=True) for s, e, t, p in graph.iter_relationships()
    )
    return nodes, rels


@pytest.fixture(scope="module")
def loaded(neo4j_server) -> Iterator[BoltGraph]:
    with neo4j_server.graph() as graph:
        if neo4j_server.owned:
            _wipe(graph)
        _load(graph)
        try:
            yield graph
        finally:
            _wipe(graph)


def test_components_and_counts(loaded):
    version, edition = loaded.components()
    assert version[0].isdigit() and edition in ("community", "enterprise")
    counts = loaded.counts()
    assert counts["nodes"] == 10000 and counts["relationships"] == 20000
    assert counts["labels"] == {"Company": 3000, ODD: 2000, "Person": 5000}
    assert counts["types"] == {"KNOWS": 12000, WORKS_AT: 8000}
    names = {e["name"]: e for e in counts["indexes"]}
    assert {"company_cid", "person_name_text", "company_loc", "knows_since", "odd_composite", "person_fulltext"} <= set(
        names
    )
    assert "person_pid" not in names, "the constraint's own index is not listed as an index"
    assert names["knows_since"]["entity"] == "RELATIONSHIP" and names["odd_composite"]["labels"] == [ODD]
    assert [c["name"] for c in counts["constraints"]] == ["person_pid"]
    assert all(e["type"] == "LOOKUP" for e in counts["lookup_indexes"])


def test_export_import_round_trip_through_the_engine(neo4j_server, loaded, local_repo):
    before_counts, before_graph = loaded.counts(), _canonical(loaded)
    repo = local_repo.repository()
    exporter = GraphExporter(loaded)
    with repo.begin(kind="neo4j-logical", source={"database": loaded.database}) as backup:
        backup.write_object("graph", exporter.reader())
        backup.source.update(without_floats(exporter.summary or {}))  # as ops.neo4j_backup records it
    assert exporter.summary["consistent"] is True, exporter.summary["changes"]
    person2 = "MATCH (x:Person {pid: 2})"
    rel = "MATCH (:Person {pid: 2})-[x:KNOWS]->() WHERE x.far IS NOT NULL"
    extremes_before = _rendered(loaded, person2, EXTREME_TEMPORALS), _rendered(loaded, rel, ["utc", "far"])
    assert extremes_before[0]["utc"] == "2024-01-02T03:04:05Z[UTC]" and extremes_before[0]["far"] == "+10000-01-01"

    _, edition = loaded.components()
    if edition == "enterprise":
        loaded.create_database("svrestore", exist_ok=True)
        target = neo4j_server.graph("svrestore")
    else:  # Community has one user database: restore into it once it is empty again
        _wipe(loaded)
        target = neo4j_server.graph()
    try:
        result = import_stream(target, repo.read_object(backup.backup_id, "graph"), batch_size=5000)
        after = target.counts()
        assert compare_counts(result.expected_counts(), after) == []
        assert compare_counts(before_counts, after) == []
        assert _canonical(target) == before_graph, "every node, relationship and property value came back"
        extremes = _rendered(target, person2, EXTREME_TEMPORALS), _rendered(target, rel, ["utc", "far"])
        assert extremes == extremes_before, "zone ids and years outside 1-9999 came back exactly"
        assert target.run(f"MATCH (n:{quote_name(IMPORT_LABEL)}) RETURN count(n) AS c")[0]["c"] == 0
        assert IMPORT_INDEX not in {e["name"] for e in after["indexes"]}
    finally:
        if edition == "enterprise":
            target.run_auto("DROP DATABASE svrestore IF EXISTS", "drop database", database="system")
        else:
            _wipe(target)
            _load(target)  # leave the module's graph as the other tests expect it
        target.close()


def test_import_refuses_a_database_that_is_not_empty(loaded):
    exporter = GraphExporter(loaded)
    data = exporter.reader().read(-1)
    before = loaded.counts()
    with pytest.raises(TargetError, match="not empty"):
        import_stream(loaded, [data])
    assert compare_counts(before, loaded.counts()) == []


def test_missing_database_is_refused(neo4j_server):
    with neo4j_server.graph("no-such-db-sv") as g, pytest.raises(DatabaseRefused, match="no-such-db-sv"):
        g.counts()


def test_wrong_password_is_refused_without_showing_it(neo4j_server):
    if not neo4j_server.auth:
        pytest.skip("this server runs with authentication off")
    wrong = "wrong-" + os.urandom(6).hex()
    with neo4j_server.graph(password=wrong) as g, pytest.raises(DatabaseRefused) as info:
        g.components()
    assert neo4j_server.uri in info.value.one_line() and wrong not in info.value.one_line()


def test_database_administration(neo4j_server, loaded):
    _, edition = loaded.components()
    if edition != "enterprise":
        with pytest.raises(SourceError, match="Enterprise only"):
            loaded.create_database("svscratch")
        return
    loaded.create_database("svscratch")
    try:
        assert loaded.database_exists("svscratch")
        loaded.stop_database("svscratch")
        loaded.start_database("svscratch")
    finally:
        loaded.run_auto("DROP DATABASE svscratch IF EXISTS", "drop database", database="system")
    assert not loaded.database_exists("svscratch")
