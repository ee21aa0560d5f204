"""The Neo4j logical export without a server: value encoding, stream framing, import logic, counts, Cypher text.

The export and import talk to the graph through a handful of methods (``GraphSource``/``GraphTarget`` in
export.py); ``MemoryGraph`` below implements them in memory with the same marking scheme as BoltGraph (a
temporary label and old-id property), so a whole export -> import round trip runs here. The Cypher that
BoltGraph sends for the same steps is checked as text; tests/integration/test_neo4j_bolt.py runs it for real.
"""

from __future__ import annotations

import json
import math
import socket
from collections import Counter
from typing import Any

import pytest
import pytz
from neo4j import exceptions as nx
from neo4j import spatial as nsp
from neo4j import time as nt

from seedvault import process
from seedvault.errors import (
    ConfigError,
    DatabaseRefused,
    DatabaseUnreachable,
    FormatError,
    IntegrityError,
    SourceError,
    TargetError,
    TruncatedStream,
    UnsupportedVersion,
)
from seedvault.sources.neo4j import bolt, values
from seedvault.sources.neo4j.bolt import (
    IMPORT_KEY,
    IMPORT_LABEL,
    BoltGraph,
    compare_counts,
    constraint_entry,
    constraint_statement,
    cypher_literal,
    index_entry,
    index_statement,
    node_create_query,
    quote_name,
    relationship_create_query,
)
from seedvault.sources.neo4j.export import (
    FORMAT,
    VERSION,
    GraphExporter,
    encode_line,
    import_stream,
)
from seedvault.sources.neo4j.values import Vector, decode_value, encode_props, encode_value

BERLIN = pytz.timezone("Europe/Berlin")
ODD_LABEL = "Odd `Label` x"

# Every property type Neo4j stores, as the driver hands it back.
VALUES: dict[str, Any] = {
    "int": 42,
    "int_min": -(2**63),
    "int_max": 2**63 - 1,
    "float": 0.1,
    "float_whole": 3.0,
    "float_tiny": 5e-324,
    "inf": math.inf,
    "minus_inf": -math.inf,
    "bool": False,
    "string": 'héllo "wörld"\n\t\\ `x` 漢字 😀',
    "empty_string": "",
    "bytes": b"\x00\x01\xfe\xff",
    "bytearray": bytearray(b"\x7f" * 5),
    "date": nt.Date(2024, 2, 29),
    "date_early": nt.Date(1, 1, 1),
    "localtime": nt.Time(23, 59, 59, 999999999),
    "time": nt.Time(12, 30, 1, 5, tzinfo=pytz.FixedOffset(-90)),
    "localdatetime": nt.DateTime(2024, 1, 2, 3, 4, 5, 123456789),
    "datetime_offset": nt.DateTime(2024, 1, 2, 3, 4, 5, 7, tzinfo=pytz.FixedOffset(330)),
    "datetime_utc": nt.DateTime(2024, 6, 1, 0, 0, 0, 1, tzinfo=pytz.utc),
    "datetime_zone": BERLIN.localize(nt.DateTime(2024, 7, 1, 12, 0, 0, 999)),
    # The hour a DST change repeats: same wall clock, two instants; the offset tells them apart.
    "datetime_dst_first": BERLIN.localize(nt.DateTime(2024, 10, 27, 2, 30, 0, 1), is_dst=True),
    "datetime_dst_second": BERLIN.localize(nt.DateTime(2024, 10, 27, 2, 30, 0, 1), is_dst=False),
    "duration": nt.Duration(months=14, days=-3, seconds=5, nanoseconds=7),
    "point_cartesian": nsp.CartesianPoint((1.5, -2.0)),
    "point_cartesian_3d": nsp.CartesianPoint((1.0, 2.0, 3.0)),
    "point_wgs84": nsp.WGS84Point((13.4, 52.5)),
    "point_wgs84_3d": nsp.WGS84Point((13.4, 52.5, 34.0)),
    "list_int": [1, 2, 3],
    "list_float": [1.0, 2.5],
    "list_string": ["a", "b c"],
    "list_bool": [True, False],
    "list_empty": [],
    "list_date": [nt.Date(2020, 1, 1), nt.Date(2021, 12, 31)],
    "list_datetime": [BERLIN.localize(nt.DateTime(2024, 3, 31, 3, 0, 0))],
    "list_duration": [nt.Duration(days=1), nt.Duration(seconds=1, nanoseconds=1)],
    "list_point": [nsp.CartesianPoint((0.0, 0.0)), nsp.CartesianPoint((1.0, 1.0))],
}
if Vector is not None:
    VALUES["vector_f32"] = Vector([1.0, -2.5, 3.25], "f32")
    VALUES["vector_i8"] = Vector([1, -2, 127], "i8")


def _through_json(value: Any) -> Any:
    """encode -> one strict JSON line -> decode, as the stream carries it."""
    line = encode_line({"v": encode_value(value)})
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    return decode_value(json.loads(line)["v"])


def _same(a: Any, b: Any) -> bool:
    if Vector is not None and isinstance(a, Vector):
        return isinstance(b, Vector) and a.dtype == b.dtype and a.raw() == b.raw()
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bytes | bytearray):
        return isinstance(b, bytes | bytearray) and bytes(a) == bytes(b)
    return type(a) is type(b) and a == b and _offset(a) == _offset(b)


def _offset(v: Any) -> Any:
    return v.utcoffset() if isinstance(v, nt.DateTime | nt.Time) and v.tzinfo else None


# --- values -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(VALUES))
def test_every_property_type_round_trips(name):
    value = VALUES[name]
    assert _same(value, _through_json(value)), name


@pytest.mark.parametrize("name", sorted(VALUES))
def test_round_tripped_values_go_back_to_the_server_unchanged(name):
    """What the import sends is what the export read, down to the Bolt structure (instant, zone id, offset)."""
    try:
        from neo4j._codec.hydration.bolt.v2 import temporal
    except ImportError:  # pragma: no cover - private driver module moved
        pytest.skip("this neo4j driver has no neo4j._codec.hydration.bolt.v2 (private module) to compare with")
    value = VALUES[name]
    items = value if isinstance(value, list) else [value]
    for original, back in zip(items, _through_json(items), strict=True):
        if isinstance(original, nt.DateTime) and original.tzinfo is pytz.utc:
            # The driver reads both Z and [UTC] as pytz's UTC; seedvault writes it back as offset Z.
            sent, read = temporal.dehydrate_datetime(back), temporal.dehydrate_datetime(original)
            assert (sent.tag, *sent.fields) == (b"I", *read.fields[:2], 0)
        elif isinstance(original, nt.DateTime):
            assert temporal.dehydrate_datetime(back) == temporal.dehydrate_datetime(original)
        elif isinstance(original, nt.Time) and original.tzinfo:
            from neo4j._codec.hydration.bolt.v1 import temporal as v1

            assert v1.dehydrate_time(back) == v1.dehydrate_time(original)


def test_zone_and_offset_are_kept():
    encoded = encode_value(VALUES["datetime_dst_second"])
    assert encoded == {"$t": "datetime", "v": "2024-10-27T02:30:00.000000001", "off": 3600, "zone": "Europe/Berlin"}
    assert "zone" not in encode_value(VALUES["datetime_utc"])  # Z, not [UTC]: the driver cannot tell them apart
    assert _through_json(VALUES["datetime_dst_first"]).utcoffset().total_seconds() == 7200


def test_non_finite_floats_and_nan_are_strict_json():
    line = encode_line({"props": encode_props({"a": math.nan, "b": math.inf})})
    assert b"NaN" not in line.replace(b'"NaN"', b"") and b"Infinity" not in line.replace(b'"Infinity"', b"")
    assert math.isnan(_through_json(math.nan))


def test_plain_json_values_stay_plain():
    assert encode_props({"a": 1, "b": "x", "c": [1.5, 2.0], "d": True}) == {
        "a": 1,
        "b": "x",
        "c": [1.5, 2.0],
        "d": True,
    }
    assert isinstance(_through_json(2.0), float) and isinstance(_through_json(2), int)


@pytest.mark.parametrize(
    "bad",
    [
        {"$t": "nope"},
        {"$t": "point", "srid": 1234, "c": [1, 2]},
        {"$t": "date", "v": "never"},
        {"$t": "bytes", "v": "!"},
    ],
)
def test_invalid_tags_are_format_errors(bad):
    with pytest.raises(FormatError):
        decode_value(bad)


def test_unknown_python_type_cannot_be_exported():
    with pytest.raises(FormatError, match="type object"):
        encode_value(object())
    with pytest.raises(FormatError, match="property 'p' of node 4:x:1: a value of type object"):
        encode_props({"ok": 1, "p": object()}, "node 4:x:1")


def test_zone_id_utc_is_kept_apart_from_offset_z():
    """[UTC] and Z both come from the driver as pytz's UTC; BoltGraph marks [UTC] ones with ZONE_UTC."""
    from neo4j._codec.hydration.bolt.v2 import temporal

    z = VALUES["datetime_utc"]
    zoned = z.replace(tzinfo=values.ZONE_UTC)
    assert encode_value(zoned) == {**encode_value(z), "zone": "UTC"}
    back = _through_json(zoned)
    assert temporal.dehydrate_datetime(back).fields[2] == "UTC"  # sent as zone id UTC: [UTC]
    assert temporal.dehydrate_datetime(_through_json(z)).fields[2] == 0  # sent as offset 0: Z


@pytest.mark.parametrize("days", [-719162, -1, 0, 1, 11016, 2932896, 59, 60, 365 * 400, -(365 * 400) - 97])
def test_iso_dates_agree_with_pythons_calendar(days):
    from datetime import date, timedelta

    assert values.iso_date(days) == (date(1970, 1, 1) + timedelta(days=days)).isoformat()


def test_iso_dates_outside_pythons_years_are_signed_as_neo4j_writes_them():
    first_10000 = 2932897  # 9999-12-31 is day 2932896
    assert values.iso_date(first_10000) == "+10000-01-01"
    # 0001-01-01 is day -719162; year 0 before it is a leap year (proleptic Gregorian), then year -1
    assert values.iso_date(-719163) == "0000-12-31" and values.iso_date(-719528) == "0000-01-01"
    assert values.iso_date(-719529) == "-0001-12-31"
    assert values.iso_date(146097 * 25) == "+11970-01-01" and values.iso_date(-146097 * 10) == "-2030-01-01"
    assert values.iso_local(first_10000 * 86400 + 3723, 5) == "+10000-01-01T01:02:03.000000005"


class _Unhydrated:
    """What the driver hands over for a value it cannot hydrate (BrokenHydrationObject's two attributes)."""

    def __init__(self, tag: bytes, *fields: Any) -> None:
        from neo4j._codec.packstream import Structure

        self.error = ValueError("year 10000 is out of range")
        self.raw_data = Structure(tag, *fields)


OUT_OF_RANGE = {
    "date": (_Unhydrated(b"D", 2932897), {"$t": "date", "v": "+10000-01-01"}, "date", "+10000-01-01", None),
    "localdatetime": (
        _Unhydrated(b"d", -62198755200, 7),
        {"$t": "localdatetime", "v": "-0001-01-01T00:00:00.000000007"},
        "localdatetime",
        "-0001-01-01T00:00:00.000000007",
        None,
    ),
    "datetime_offset": (
        _Unhydrated(b"I", 2932897 * 86400, 0, 3600),
        {"$t": "datetime", "v": "+10000-01-01T01:00:00.000000000", "off": 3600},
        "datetime",
        "+10000-01-01T01:00:00.000000000+01:00",
        None,
    ),
    "datetime_zone": (
        _Unhydrated(b"i", 2932897 * 86400, 0, "Europe/Berlin"),
        {"$t": "datetime", "utc": "+10000-01-01T00:00:00.000000000", "zone": "Europe/Berlin"},
        "datetime",
        "+10000-01-01T00:00:00.000000000Z",
        "Europe/Berlin",
    ),
}


@pytest.mark.parametrize("name", sorted(OUT_OF_RANGE))
def test_temporals_outside_the_drivers_years_are_exported_and_imported_through_the_server(name):
    raw, encoded, kind, text, zone = OUT_OF_RANGE[name]
    assert encode_value(raw) == encoded
    assert _through_json(raw) == values.ServerTemporal(kind, text, zone)


def test_a_list_holding_an_out_of_range_temporal_goes_to_the_server_whole():
    class _List:
        error = ValueError("out of range")
        raw_data = [nt.Date(2020, 1, 2), _Unhydrated(b"D", 2932897)]

    encoded = encode_value(_List())
    assert encoded == [{"$t": "date", "v": "2020-01-02"}, {"$t": "date", "v": "+10000-01-01"}]
    server = values.ServerTemporal
    assert decode_value(encoded) == [server("date", "2020-01-02"), server("date", "+10000-01-01")]


def test_rows_with_server_parsed_values_get_a_query_of_their_own():
    from seedvault.sources.neo4j.bolt import split_server_values

    far = values.ServerTemporal("date", "+10000-01-01")
    rows = [
        {"id": "a", "props": {"x": 1}},
        {"id": "b", "props": {"x": 2, "d": far, "l": [far, far]}},
        {"id": "c", "props": {"x": 3}},
    ]
    groups = split_server_values(rows)
    assert groups[()] == [rows[0], rows[2]]
    spec = (("d", "date", False), ("l", "date", True))
    assert groups[spec] == [{"id": "b", "props": {"x": 2}, "server": [far.parameter(), [far.parameter()] * 2]}]
    query = node_create_query(["L"], spec)
    assert query.endswith("SET n += row.props, n.`d` = date(row.server[0].v), n.`l` = [x IN row.server[1] | date(x.v)]")
    rel = relationship_create_query("T", (("at", "datetime", False),))
    assert "r.`at` = CASE WHEN row.server[0].z IS NULL THEN datetime(row.server[0].v) ELSE datetime({datetime:" in rel
    assert rel.endswith("RETURN count(r) AS created")


# --- an in-memory graph with BoltGraph's import scheme ---------------------------------------------------------
class MemoryGraph:
    """Nodes, relationships and schema in dicts; counts computed like the count store would give them."""

    uri = "bolt://memory:7687"
    database = "neo4j"

    def __init__(self, edition: str = "community") -> None:
        self.edition = edition
        self.nodes: dict[str, tuple[list[str], dict[str, Any]]] = {}
        self.rels: list[tuple[str, str, str, dict[str, Any]]] = []
        self.indexes: list[dict[str, Any]] = []
        self.constraints: list[dict[str, Any]] = []
        self.calls: list[tuple[str, Any, int]] = []
        self.on_counts: Any = None  # a hook: change the graph between the start and end counts
        self._next = 0

    def add_node(self, labels: list[str], props: dict[str, Any]) -> str:
        self._next += 1
        node_id = f"4:mem:{self._next}"
        self.nodes[node_id] = (sorted(labels), dict(props))
        return node_id

    # GraphSource
    def components(self) -> tuple[str, str]:
        return "5.26.0", self.edition

    def counts(self, *, exact: bool = False) -> dict[str, Any]:
        if self.on_counts:
            self.on_counts(self)
        labels = Counter(lb for lbs, _ in self.nodes.values() for lb in lbs)
        types = Counter(t for _, _, t, _ in self.rels)
        lookup = [
            {"name": "node_label_lookup_index", "type": "LOOKUP", "entity": "NODE", "labels": [], "properties": []}
        ]
        return {
            "nodes": len(self.nodes),
            "relationships": len(self.rels),
            "labels": dict(sorted(labels.items())),
            "types": dict(sorted(types.items())),
            "indexes": sorted(self.indexes, key=lambda e: e["name"]),
            "constraints": sorted(self.constraints, key=lambda e: e["name"]),
            "lookup_indexes": lookup,
        }

    def iter_nodes(self, fetch_size: int = 5000):
        for node_id, (labels, props) in list(self.nodes.items()):
            yield node_id, list(labels), dict(props)

    def iter_relationships(self, fetch_size: int = 5000):
        yield from list(self.rels)

    # GraphTarget
    def begin_import(self) -> None:
        self.calls.append(("begin", None, 0))

    def create_nodes(self, labels: list[str], rows: list[dict[str, Any]]) -> int:
        self.calls.append(("nodes", tuple(labels), len(rows)))
        for row in rows:
            self.add_node([IMPORT_LABEL, *labels], {**row["props"], IMPORT_KEY: row["id"]})
        return len(rows)

    def create_relationships(self, rel_type: str, rows: list[dict[str, Any]]) -> int:
        self.calls.append(("rels", rel_type, len(rows)))
        by_old = {p[IMPORT_KEY]: nid for nid, (lbs, p) in self.nodes.items() if IMPORT_LABEL in lbs}
        created = 0
        for row in rows:
            if row["s"] in by_old and row["e"] in by_old:
                self.rels.append((by_old[row["s"]], by_old[row["e"]], rel_type, dict(row["props"])))
                created += 1
        return created

    def end_import(self, batch_size: int = 5000) -> None:
        self.calls.append(("end", None, 0))
        for node_id, (labels, props) in list(self.nodes.items()):
            props.pop(IMPORT_KEY, None)
            self.nodes[node_id] = ([lb for lb in labels if lb != IMPORT_LABEL], props)

    def create_index(self, entry) -> None:
        index_statement(entry)  # must render
        self.indexes.append({k: entry[k] for k in ("name", "type", "entity", "labels", "properties", "config")})

    def create_constraint(self, entry) -> None:
        constraint_statement(entry)
        self.constraints.append(dict(entry))

    def await_indexes(self, timeout: int = 3600) -> None:
        self.calls.append(("await", None, 0))


def _index(name, type_, labels, props, entity="NODE", config=None):
    return {
        "name": name,
        "type": type_,
        "entity": entity,
        "labels": labels,
        "properties": props,
        "config": config or {},
    }


def sample_graph(n_people: int = 30) -> MemoryGraph:
    g = MemoryGraph()
    ids = []
    for i in range(n_people):
        labels = ["Person"] + (["Odd `Label` x"] if i % 3 == 0 else [])
        ids.append(g.add_node(labels, {"pid": i, "name": f"p{i}", "born": nt.Date(1990, 1, 1 + i % 28)}))
    for i in range(5):
        ids.append(g.add_node(["Company"], {"pid": 1000 + i, "loc": nsp.WGS84Point((13.0 + i, 52.0))}))
    ids.append(g.add_node([], {"pid": 9999}))  # a node without labels
    for i, v in enumerate(VALUES.values()):
        ids.append(g.add_node(["Values"], {"pid": 2000 + i, "v": v}))
    for i in range(n_people):
        g.rels.append((ids[i], ids[(i + 1) % n_people], "KNOWS", {"since": nt.Date(2020, 1, 1), "w": i / 3}))
        g.rels.append((ids[i], ids[n_people + i % 5], "WORKS AT", {}))
    g.rels.append((ids[0], ids[0], "KNOWS", {"self": True}))
    g.indexes = [
        _index("person_name", "RANGE", ["Person"], ["name"]),
        _index("company_loc", "POINT", ["Company"], ["loc"], config={"spatial.wgs-84.min": [-180.0, -90.0]}),
        _index("knows_since", "RANGE", ["KNOWS"], ["since"], entity="RELATIONSHIP"),
    ]
    g.constraints = [
        {"name": "person_pid", "type": "UNIQUENESS", "entity": "NODE", "labels": ["Person"], "properties": ["pid"]}
    ]
    return g


def export_bytes(graph, batch_size: int = 7, read_size: int = 1 << 16) -> tuple[bytes, GraphExporter]:
    exporter = GraphExporter(graph, batch_size=batch_size)
    reader = exporter.reader()
    data = b"".join(iter(lambda: reader.read(read_size), b""))
    return data, exporter


def _canonical(graph: MemoryGraph) -> tuple[Counter, Counter]:
    """Nodes and relationships independent of ids (relationships name their end nodes by pid)."""
    nodes = Counter(json.dumps([labels, encode_props(p)], sort_keys=True) for labels, p in graph.nodes.values())
    pid = {nid: p["pid"] for nid, (_, p) in graph.nodes.items()}
    rels = Counter(json.dumps([pid[s], pid[e], t, encode_props(p)], sort_keys=True) for s, e, t, p in graph.rels)
    return nodes, rels


# --- framing --------------------------------------------------------------------------------------------
def test_stream_framing_header_schema_nodes_relationships_trailer():
    graph = sample_graph()
    data, exporter = export_bytes(graph)
    lines = data.split(b"\n")
    assert lines[-1] == b"", "every line ends with a newline"
    records = [json.loads(ln) for ln in lines[:-1]]
    kinds = [r["t"] for r in records]
    assert kinds[0] == "header" and kinds[-1] == "trailer"
    order = {"header": 0, "index": 1, "constraint": 1, "n": 2, "r": 3, "trailer": 4}
    assert [order[k] for k in kinds] == sorted(order[k] for k in kinds)
    header, trailer = records[0], records[-1]
    assert header["format"] == FORMAT and header["version"] == VERSION
    assert header["source"] == {
        "uri": graph.uri,
        "database": "neo4j",
        "neo4j_version": "5.26.0",
        "edition": "community",
    }
    assert header["counts"]["nodes"] == len(graph.nodes)
    assert kinds.count("n") == len(graph.nodes) and kinds.count("r") == len(graph.rels)
    assert trailer["exported"]["nodes"] == len(graph.nodes)
    assert trailer["exported"]["labels"]["Odd `Label` x"] == 10
    assert trailer["consistent"] is True and trailer["changes"] == []
    assert exporter.summary["consistent"] is True and exporter.summary["format"] == FORMAT
    node = next(r for r in records if r["t"] == "n" and r["props"].get("pid") == 0)
    assert node["labels"] == ["Odd `Label` x", "Person"] and node["props"]["born"] == {"$t": "date", "v": "1990-01-01"}
    rel = next(r for r in records if r["t"] == "r")
    assert set(rel) == {"t", "s", "e", "type", "props"}


def test_reader_honours_read_sizes():
    graph = sample_graph()
    whole, _ = export_bytes(graph)
    reader = GraphExporter(graph, batch_size=7).reader()
    pieces = []
    while piece := reader.read(13):
        assert len(piece) <= 13
        pieces.append(piece)
    assert _untimed(b"".join(pieces)) == _untimed(whole)
    assert _untimed(GraphExporter(graph, batch_size=7).reader().read(-1)) == _untimed(whole)


def _untimed(data: bytes) -> list[dict]:
    """The stream's records without their timestamps (two exports differ only there)."""
    records = [json.loads(ln) for ln in data.splitlines()]
    return [{k: v for k, v in r.items() if k not in ("started", "finished")} for r in records]


def test_reader_close_stops_the_export():
    graph = sample_graph()
    reader = GraphExporter(graph).reader()
    assert reader.read(10)
    reader.close()
    reader.read(1 << 20)  # what was already buffered may still come out, then nothing more
    assert reader.read(1 << 20) == b""


def test_counts_that_change_during_export_are_reported():
    graph = sample_graph()
    state = {"calls": 0}

    def writer_runs(g: MemoryGraph) -> None:
        state["calls"] += 1
        if state["calls"] == 2:  # between the passes and the end counts: two new nodes
            g.on_counts = None
            g.add_node(["Person"], {"pid": -1})
            g.add_node(["Late"], {"pid": -2})
            g.on_counts = writer_runs

    graph.on_counts = writer_runs
    before = len(graph.nodes)
    data, exporter = export_bytes(graph)
    trailer = json.loads(data.rstrip(b"\n").rsplit(b"\n", 1)[1])
    assert trailer["consistent"] is False
    assert f"nodes: {before} at start, {before + 2} at end" in trailer["changes"]
    assert "label Late: 0 at start, 1 at end" in trailer["changes"]
    assert exporter.summary["changes"] == trailer["changes"]


def test_export_refuses_nodes_left_marked_by_an_interrupted_import():
    graph = sample_graph()
    graph.add_node([IMPORT_LABEL], {IMPORT_KEY: "4:old:1"})
    with pytest.raises(SourceError, match="import mark") as info:
        export_bytes(graph)
    assert "REMOVE" in info.value.hint


# --- import --------------------------------------------------------------------------------------------------
def test_export_import_round_trip_in_memory():
    source = sample_graph()
    data, _ = export_bytes(source)
    target = MemoryGraph()
    result = import_stream(target, [data[i : i + 97] for i in range(0, len(data), 97)], batch_size=7)
    assert _canonical(target) == _canonical(source)
    assert compare_counts(source.counts(), target.counts()) == []
    assert compare_counts(result.expected_counts(), target.counts()) == []
    assert result.nodes == len(source.nodes) and result.relationships == len(source.rels) and not result.dangling
    assert all(IMPORT_KEY not in p and IMPORT_LABEL not in lbs for lbs, p in target.nodes.values())
    steps = [c[0] for c in target.calls]
    assert steps[0] == "begin" and steps[-2:] == ["end", "await"]
    assert steps.index("rels") > max(i for i, s in enumerate(steps) if s == "nodes")


def test_import_batches_are_bounded_and_grouped_by_label_set():
    source = sample_graph(n_people=40)
    data, _ = export_bytes(source)
    target = MemoryGraph()
    import_stream(target, [data], batch_size=5)
    writes = [c for c in target.calls if c[0] in ("nodes", "rels")]
    assert writes and all(0 < size <= 5 for _, _, size in writes)
    assert {c[1] for c in writes if c[0] == "nodes"} >= {("Person",), ("Odd `Label` x", "Person"), ("Company",), ()}
    assert {c[1] for c in writes if c[0] == "rels"} == {"KNOWS", "WORKS AT"}


def test_import_reads_a_file_like_object(tmp_path):
    data, _ = export_bytes(sample_graph())
    path = tmp_path / "graph.jsonl"
    path.write_bytes(data)
    target = MemoryGraph()
    with open(path, "rb") as fh:
        import_stream(target, fh)
    assert len(target.nodes) == data.count(b'{"t":"n"')


def test_import_refuses_a_database_that_is_not_empty():
    data, _ = export_bytes(sample_graph())
    target = MemoryGraph()
    target.add_node(["Existing"], {})
    with pytest.raises(TargetError, match="not empty"):
        import_stream(target, [data])
    assert target.calls == []
    schema_only = MemoryGraph()
    schema_only.indexes = [_index("left_over", "RANGE", ["X"], ["y"])]
    with pytest.raises(TargetError, match="1 indexes"):
        import_stream(schema_only, [data])


def test_import_refuses_enterprise_constraints_on_community_before_writing():
    source = sample_graph()
    source.constraints.append(
        {"name": "person_key", "type": "NODE_KEY", "entity": "NODE", "labels": ["Person"], "properties": ["pid"]}
    )
    data, _ = export_bytes(source)
    target = MemoryGraph(edition="community")
    with pytest.raises(TargetError, match="person_key"):
        import_stream(target, [data])
    assert target.calls == [] and not target.nodes
    enterprise = MemoryGraph(edition="enterprise")
    import_stream(enterprise, [data])
    assert [c["name"] for c in enterprise.constraints] == ["person_key", "person_pid"]


def _lines(data: bytes) -> list[bytes]:
    return [ln + b"\n" for ln in data.rstrip(b"\n").split(b"\n")]


def test_truncated_streams_are_refused():
    data, _ = export_bytes(sample_graph())
    lines = _lines(data)
    with pytest.raises(TruncatedStream, match="before its trailer"):
        import_stream(MemoryGraph(), [b"".join(lines[:-1])])
    with pytest.raises(TruncatedStream, match="inside line"):
        import_stream(MemoryGraph(), [data[:-5]])


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda ls: [b"garbage\n", *ls], FormatError, "line 1 is not JSON"),
        (lambda ls: ls[1:], FormatError, "no header"),
        (lambda ls: [ls[0].replace(b'"version":1', b'"version":99'), *ls[1:]], UnsupportedVersion, "99"),
        (lambda ls: [*ls, ls[1]], FormatError, "after its trailer"),
        (lambda ls: [*ls[:-1], b'{"t":"n","id":"x","labels":[],"props":{}}\n', ls[-1]], FormatError, "after its rel"),
        (lambda ls: [*ls[:-1], b'{"t":"zz"}\n', ls[-1]], FormatError, "unknown record type"),
        (lambda ls: [ls[0], b'{"t":"r","s":"a","e":"b","type":"X","props":{}}\n', *ls[1:]], FormatError, "before any"),
    ],
)
def test_malformed_streams_are_refused(mutate, error, match):
    data, _ = export_bytes(sample_graph())
    with pytest.raises(error, match=match):
        import_stream(MemoryGraph(), [b"".join(mutate(_lines(data)))])


def test_a_trailer_that_disagrees_with_the_stream_is_an_integrity_error():
    data, _ = export_bytes(sample_graph())
    lines = _lines(data)
    node_line = next(i for i, ln in enumerate(lines) if ln.startswith(b'{"t":"n"'))
    del lines[node_line]
    with pytest.raises(IntegrityError, match="trailer says"):
        import_stream(MemoryGraph(), [b"".join(lines)])


def _with_dangling(consistent: bool) -> bytes:
    data, _ = export_bytes(sample_graph())
    lines = _lines(data)
    trailer = json.loads(lines[-1])
    trailer["exported"]["relationships"] += 1
    trailer["exported"]["types"]["KNOWS"] += 1
    trailer["consistent"] = consistent
    dangling = {"t": "r", "s": "4:mem:1", "e": "4:mem:deleted-meanwhile", "type": "KNOWS", "props": {}}
    return b"".join([*lines[:-1], encode_line(dangling), encode_line(trailer)])


def test_dangling_relationships_of_a_changing_export_are_skipped_and_counted():
    target = MemoryGraph()
    result = import_stream(target, [_with_dangling(consistent=False)])
    assert result.dangling == {"KNOWS": 1}
    assert compare_counts(result.expected_counts(), target.counts()) == []


def test_dangling_relationships_of_a_consistent_export_are_an_integrity_error():
    with pytest.raises(IntegrityError, match="1 relationships point to nodes"):
        import_stream(MemoryGraph(), [_with_dangling(consistent=True)])


def test_empty_graph_round_trips():
    data, _ = export_bytes(MemoryGraph())
    target = MemoryGraph()
    result = import_stream(target, [data])
    assert result.nodes == 0 and target.calls == [("await", None, 0)]


# --- compare_counts --------------------------------------------------------------------------------------------
def _counts(**over):
    base = {
        "nodes": 10000,
        "relationships": 20000,
        "labels": {"Person": 10000},
        "types": {"KNOWS": 20000},
        "indexes": [_index("person_name", "RANGE", ["Person"], ["name"])],
        "constraints": [
            constraint_entry({"name": "pid", "type": "UNIQUENESS", "labelsOrTypes": ["Person"], "properties": ["pid"]})
        ],
        "lookup_indexes": [_index("node_label_lookup_index", "LOOKUP", [], [])],
    }
    return {**base, **over}


def test_compare_counts_agrees_on_equal_counts():
    assert compare_counts(_counts(), _counts()) == []
    assert compare_counts(_counts(), _counts(lookup_indexes=[])) == [], "lookup indexes are not compared"


def test_compare_counts_names_every_difference():
    actual = _counts(
        nodes=9998,
        labels={"Person": 9998, "Extra": 1},
        types={},
        relationships=0,
        indexes=[_index("person_name", "TEXT", ["Person"], ["name"]), _index("new", "RANGE", ["X"], ["y"])],
        constraints=[],
    )
    diffs = compare_counts(_counts(), actual)
    assert diffs == [
        "nodes: 10000 in backup, 9998 restored",
        "relationships: 20000 in backup, 0 restored",
        "label Extra: 0 in backup, 1 restored",
        "label Person: 10000 in backup, 9998 restored",
        "relationship type KNOWS: 20000 in backup, 0 restored",
        "index new (RANGE on :X(y)) unexpected (restored, not in backup)",
        "index person_name: RANGE on :Person(name) in backup, TEXT on :Person(name) restored",
        "constraint pid (UNIQUE on :Person(pid)) missing (in backup, not restored)",
    ]


def test_compare_counts_treats_btree_as_range_and_takes_labels():
    old = _counts(indexes=[_index("person_name", "BTREE", ["Person"], ["name"])])
    assert compare_counts(old, _counts()) == []
    assert compare_counts({"nodes": 1}, {"nodes": 2}, expected_label="at start", actual_label="at end") == [
        "nodes: 1 at start, 2 at end"
    ]


# --- Cypher text ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("Person", "`Person`"),
        ("with space", "`with space`"),
        ("a`b", "`a``b`"),
        ("``", "``````"),
        ("Ünï:cödé", "`Ünï:cödé`"),
    ],
)
def test_quote_name_doubles_backticks(name, quoted):
    assert quote_name(name) == quoted


def test_count_and_create_queries_quote_odd_names():
    assert node_create_query(["Odd `Label` x", "A B"]) == (
        "UNWIND $rows AS row CREATE (n:`__SvImport`:`Odd ``Label`` x`:`A B` {`__sv_id`: row.id}) SET n += row.props"
    )
    assert node_create_query([]).startswith("UNWIND $rows AS row CREATE (n:`__SvImport` {")
    q = relationship_create_query("WORKS`AT")
    assert "CREATE (a)-[r:`WORKS``AT`]->(b)" in q and "MATCH (a:`__SvImport` {`__sv_id`: row.s})" in q
    assert q.endswith("RETURN count(r) AS created")


def test_index_statements():
    assert index_statement(_index("i`1", "RANGE", ["P q"], ["a", "b`c"])) == (
        "CREATE RANGE INDEX `i``1` FOR (x:`P q`) ON (x.`a`, x.`b``c`)"
    )
    assert index_statement(_index("i", "BTREE", ["P"], ["a"])) == "CREATE INDEX `i` FOR (x:`P`) ON (x.`a`)"
    assert index_statement(_index("r", "TEXT", ["KNOWS"], ["s"], entity="RELATIONSHIP")) == (
        "CREATE TEXT INDEX `r` FOR ()-[x:`KNOWS`]-() ON (x.`s`)"
    )
    ft = _index("ft", "FULLTEXT", ["A", "B"], ["t", "u"], config={"fulltext.analyzer": "english"})
    assert index_statement(ft) == (
        "CREATE FULLTEXT INDEX `ft` FOR (x:`A`|`B`) ON EACH [x.`t`, x.`u`] "
        "OPTIONS {indexConfig: {`fulltext.analyzer`: 'english'}}"
    )
    vec = _index(
        "v", "VECTOR", ["Doc"], ["emb"], config={"vector.dimensions": 3, "vector.similarity_function": "COSINE"}
    )
    assert index_statement(vec).endswith(
        "OPTIONS {indexConfig: {`vector.dimensions`: 3, `vector.similarity_function`: 'COSINE'}}"
    )
    assert "OPTIONS" not in index_statement(_index("t", "TEXT", ["A"], ["b"], config={"x": 1}))
    with pytest.raises(SourceError, match="LOOKUP"):
        index_statement(_index("l", "LOOKUP", [], []))


def test_constraint_statements():
    def c(type_, props=("p",), entity="NODE", **kw):
        return {"name": "c", "type": type_, "entity": entity, "labels": ["L"], "properties": list(props), **kw}

    assert constraint_statement(c("UNIQUENESS", ("a", "b"))) == (
        "CREATE CONSTRAINT `c` FOR (x:`L`) REQUIRE (x.`a`, x.`b`) IS UNIQUE"
    )
    assert constraint_statement(c("NODE_PROPERTY_UNIQUENESS")).endswith("REQUIRE (x.`p`) IS UNIQUE")
    assert constraint_statement(c("RELATIONSHIP_UNIQUENESS", entity="RELATIONSHIP")).startswith(
        "CREATE CONSTRAINT `c` FOR ()-[x:`L`]-() REQUIRE"
    )
    assert constraint_statement(c("NODE_KEY")).endswith("IS NODE KEY")
    assert constraint_statement(c("RELATIONSHIP_KEY", entity="RELATIONSHIP")).endswith("IS RELATIONSHIP KEY")
    assert constraint_statement(c("NODE_PROPERTY_EXISTENCE")).endswith("REQUIRE x.`p` IS NOT NULL")
    assert constraint_statement(c("NODE_PROPERTY_TYPE", property_type="INTEGER")).endswith(
        "REQUIRE x.`p` IS :: INTEGER"
    )
    with pytest.raises(SourceError):
        constraint_statement(c("SOMETHING_NEW"))


def test_cypher_literal():
    assert cypher_literal({"a.b": [1.0, -2.5e20], "s": "it's \\ ok", "t": True, "n": None}) == (
        "{`a.b`: [1.0, -2.5e20], `s`: 'it\\'s \\\\ ok', `t`: true, `n`: null}"
    )
    with pytest.raises(ValueError):
        cypher_literal(math.nan)


def test_schema_rows_from_show_commands():
    owned = {"name": "pid", "type": "RANGE", "owningConstraint": "pid", "labelsOrTypes": ["P"], "properties": ["p"]}
    assert index_entry(owned) is None
    assert index_entry({"name": "u", "type": "BTREE", "uniqueness": "UNIQUE", "labelsOrTypes": ["P"]}) is None
    row = {
        "name": "loc",
        "type": "POINT",
        "entityType": "NODE",
        "labelsOrTypes": ["City"],
        "properties": ["loc"],
        "options": {"indexProvider": "point-1.0", "indexConfig": {"spatial.cartesian.min": [-1.0, -1.0]}},
        "createStatement": "CREATE POINT INDEX ...",
    }
    assert index_entry(row) == {
        "name": "loc",
        "type": "POINT",
        "entity": "NODE",
        "labels": ["City"],
        "properties": ["loc"],
        "config": {"spatial.cartesian.min": [-1.0, -1.0]},
        "create": "CREATE POINT INDEX ...",
    }
    rel = constraint_entry(
        {"name": "e", "type": "RELATIONSHIP_PROPERTY_EXISTENCE", "labelsOrTypes": ["R"], "properties": ["p"]}
    )
    assert rel["entity"] == "RELATIONSHIP" and rel["property_type"] is None


# --- BoltGraph without a server ------------------------------------------------------------------------------------
PASSWORD = "s3cret-Neo4j-pass"


def test_password_is_registered_and_never_in_repr():
    graph = BoltGraph("neo4j://db.example:7687", "neo4j", PASSWORD)
    assert PASSWORD.encode() in process._SECRETS
    assert PASSWORD not in repr(graph) and "db.example:7687" in repr(graph)


@pytest.mark.parametrize("uri", ["neo4j://neo4j:pw@host:7687", "http://host:7474", "host:7687", "bolt://"])
def test_bad_uris_are_config_errors(uri):
    with pytest.raises(ConfigError) as info:
        BoltGraph(uri, "neo4j", PASSWORD)
    assert "pw" not in info.value.message.replace("password", "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_database_unreachable_naming_the_uri():
    port = _free_port()
    graph = BoltGraph(f"bolt://127.0.0.1:{port}", "neo4j", PASSWORD, connect_timeout=2)
    with pytest.raises(DatabaseUnreachable) as info:
        graph.components()
    assert not isinstance(info.value, DatabaseRefused)
    message = info.value.one_line()
    assert f"bolt://127.0.0.1:{port}" in message and PASSWORD not in message and "\n" not in message


def test_driver_errors_are_translated():
    graph = BoltGraph("bolt://127.0.0.1:7687", "neo4j", PASSWORD)
    with pytest.raises(DatabaseRefused, match="refused user 'neo4j': authentication failed"), graph._translate("x"):
        raise nx.AuthError(f"bad credentials {PASSWORD}")
    with pytest.raises(DatabaseUnreachable, match="cannot reach Neo4j at bolt://127.0.0.1:7687"), graph._translate("x"):
        raise nx.ServiceUnavailable("Couldn't connect (reason [Errno 111] Connection refused)")
    hydrate = getattr(nx.Neo4jError, "_hydrate_neo4j", None) or getattr(nx.Neo4jError, "hydrate", None)
    if hydrate is None:  # pragma: no cover
        pytest.skip("this driver cannot build server errors for the test")
    missing = hydrate(code="Neo.ClientError.Database.DatabaseNotFound", message="Database does not exist")
    with pytest.raises(DatabaseRefused, match="has no database 'neo4j'"), graph._translate("x"):
        raise missing
    failed = hydrate(code="Neo.ClientError.Statement.SyntaxError", message=f"Invalid input {PASSWORD}")
    with pytest.raises(TargetError) as info, graph._translate("creating index i", error=TargetError):
        raise failed
    assert "SyntaxError" in info.value.message and PASSWORD not in info.value.message


@pytest.mark.parametrize("method", ["stop_database", "start_database", "create_database"])
def test_database_administration_is_refused_on_community(method, monkeypatch):
    graph = BoltGraph("bolt://127.0.0.1:7687", "neo4j", PASSWORD)
    monkeypatch.setattr(graph, "components", lambda: ("5.26.0", "community"))
    monkeypatch.setattr(graph, "run_auto", lambda *a, **k: pytest.fail("no command may be sent"))
    with pytest.raises(SourceError, match="community edition cannot .* DATABASE restored_db .Enterprise only."):
        getattr(graph, method)("restored_db")


def test_database_administration_waits_for_the_status(monkeypatch):
    graph = BoltGraph("bolt://127.0.0.1:7687", "neo4j", PASSWORD)
    monkeypatch.setattr(graph, "components", lambda: ("5.26.0", "enterprise"))
    sent: list[str] = []
    statuses = iter(["offline", "starting", "online"])

    def run_auto(query, action, *, database=None, error=SourceError):
        sent.append(f"{database}: {query}")
        return [{"currentStatus": next(statuses), "error": ""}] if query.startswith("SHOW") else []

    monkeypatch.setattr(graph, "run_auto", run_auto)
    monkeypatch.setattr(bolt.time, "sleep", lambda s: None)
    graph.create_database("new`db")
    assert sent[0] == "system: CREATE DATABASE `new``db`" and len(sent) == 4


# --- BoltGraph's plumbing over a scripted driver --------------------------------------------------------------
class _Record(dict):
    def __getitem__(self, key):
        return list(self.values())[key] if isinstance(key, int) else super().__getitem__(key)

    def data(self):
        return dict(self)


class _Session:
    def __init__(self, driver, config):
        self.driver, self.config = driver, config

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def run(self, query, params=None):
        self.driver.sent.append((self.config.get("database"), query, params))
        return _Result([_Record(r) for r in self.driver.answer(query, params)])

    def execute_read(self, work):
        return work(self)

    execute_write = execute_read


class _Result(list):
    def data(self):
        return [dict(r) for r in self]


class _Driver:
    def __init__(self, answer):
        self.answer, self.sent, self.closed = answer, [], False

    def verify_connectivity(self):
        pass

    def session(self, **config):
        return _Session(self, config)

    def close(self):
        self.closed = True


class _Entity:
    def __init__(self, element_id, labels=(), props=None, **kw):
        self.element_id, self.labels, self._props = element_id, frozenset(labels), props or {}
        self.__dict__.update(kw)

    def items(self):
        return self._props.items()


def _scripted(monkeypatch, answer) -> tuple[BoltGraph, _Driver]:
    driver = _Driver(answer)
    monkeypatch.setattr(bolt.neo4j.GraphDatabase, "driver", lambda *a, **k: driver)
    return BoltGraph("bolt://127.0.0.1:7687", "neo4j", PASSWORD, "g"), driver


def test_counts_components_and_streams_over_the_driver(monkeypatch):
    def answer(query, params):
        if query.startswith("MATCH (n) RETURN n, "):
            return [{"n": _Entity("4:x:1", ["Person"], {"a": 1}), "z": []}]
        if query.startswith("MATCH ()-[r]->() RETURN r, "):
            rel = _Entity("5:x:1", (), {"w": 0.5}, type="KNOWS", start_node=_Entity("4:x:1"), end_node=_Entity("4:x:2"))
            return [{"r": rel, "z": []}]
        if query.startswith("CALL dbms.components"):
            return [{"name": "Neo4j Kernel", "versions": ["5.26.1"], "edition": "Community"}]
        if query.startswith("CALL db.labels"):
            return [{"label": "Person"}, {"label": ODD_LABEL}, {"label": "Unused"}]
        if query.startswith("CALL db.relationshipTypes"):
            return [{"relationshipType": "KNOWS"}]
        if query.startswith("SHOW INDEXES"):
            return [
                {"name": "lk", "type": "LOOKUP", "entityType": "NODE", "labelsOrTypes": None, "properties": None},
                {"name": "pid", "type": "RANGE", "owningConstraint": "pid", "labelsOrTypes": ["Person"]},
                {"name": "nm", "type": "RANGE", "entityType": "NODE", "labelsOrTypes": ["Person"], "properties": ["n"]},
            ]
        if query.startswith("SHOW CONSTRAINTS"):
            return [{"name": "pid", "type": "UNIQUENESS", "labelsOrTypes": ["Person"], "properties": ["pid"]}]
        numbers = {"(n:`Person`)": 3, f"(n:{quote_name(ODD_LABEL)})": 1, "(n:`Unused`)": 0, "(n)": 3}
        numbers |= {"[r:`KNOWS`]": 2, "[r]": 2}
        for needle, n in numbers.items():
            if query.startswith(f"MATCH {needle}") or query.startswith(f"MATCH (){needle.replace('[', '-[')}"):
                return [{"c": n}]
        raise AssertionError(f"unexpected query {query}")

    graph, driver = _scripted(monkeypatch, answer)
    assert graph.components() == ("5.26.1", "community")
    counts = graph.counts()
    assert counts["labels"] == {ODD_LABEL: 1, "Person": 3} and counts["types"] == {"KNOWS": 2}
    assert (counts["nodes"], counts["relationships"]) == (3, 2)
    assert [e["name"] for e in counts["indexes"]] == ["nm"] and [e["name"] for e in counts["lookup_indexes"]] == ["lk"]
    assert [c["name"] for c in counts["constraints"]] == ["pid"]
    assert list(graph.iter_nodes(10)) == [("4:x:1", ["Person"], {"a": 1})]
    assert list(graph.iter_relationships(10)) == [("4:x:1", "4:x:2", "KNOWS", {"w": 0.5})]
    assert {db for db, _, _ in driver.sent} == {None, "g"}
    graph.close()
    assert driver.closed


def test_import_writes_over_the_driver(monkeypatch):
    removed = iter([5000, 12, 0])

    def answer(query, params):
        if "RETURN count(r) AS created" in query:
            return [{"created": len(params["rows"]) - 1}]
        if "REMOVE n:" in query:
            return [{"c": next(removed)}]
        return []

    graph, driver = _scripted(monkeypatch, answer)
    graph.begin_import()
    assert graph.create_nodes(["A B"], [{"id": "1", "props": {}}]) == 1
    assert graph.create_relationships("T", [{"s": "1", "e": "2", "props": {}}] * 3) == 2
    graph.end_import(5000)
    graph.create_index(_index("i", "RANGE", ["A"], ["p"]))
    graph.await_indexes(60)
    queries = [q for _, q, _ in driver.sent]
    assert queries[0].startswith("CREATE INDEX `seedvault_import_id` IF NOT EXISTS FOR (n:`__SvImport`)")
    assert queries[1] == "CALL db.awaitIndex('seedvault_import_id', 300)"
    assert sum("REMOVE n:" in q for q in queries) == 3, "removal repeats until nothing is left"
    assert queries[-2:] == ["CREATE RANGE INDEX `i` FOR (x:`A`) ON (x.`p`)", "CALL db.awaitIndexes(60)"]
