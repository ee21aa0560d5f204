"""Logical Neo4j export over Bolt and its import: the graph as a versioned JSON-lines stream.

When to use it: on Community, where neo4j-admin can only dump a *stopped* database, this is the online backup;
anywhere, it is the way across versions and editions (4.4 to 5.x, Enterprise to Community) that a store dump
cannot take. It is slower than a dump and keeps no internal ids, so prefer neo4j-admin where it fits.

Consistency limits: Community has no snapshot to read from. Nodes are read in one pass and relationships in a
second one, each streamed from one auto-commit read, so writes that run during the export can give a copy that
is no point in time: a node created after the node pass is missing, and a relationship to it then points
nowhere (the import skips and counts such relationships). Counts are recorded at the start and at the end, and
the trailer lists every difference (``changes``) and says whether the copy is ``consistent``. Equal counts do
not prove that nothing changed; for a point-in-time copy stop the writers, or use an Enterprise online backup.

The stream (``seedvault-neo4j-graph`` version 1, FORMAT.md section 10.5), one JSON object per line, UTF-8,
``\\n``-terminated:

1. ``{"t": "header", "format", "version", "source": {...}, "counts": <counts at start>, "started", ...}``
2. ``{"t": "index", ...}`` and ``{"t": "constraint", ...}`` (see :func:`.bolt.index_entry`), before any data
3. ``{"t": "n", "id": <element id>, "labels": [...], "props": {...}}`` for every node
4. ``{"t": "r", "s": <start id>, "e": <end id>, "type": ..., "props": {...}}`` for every relationship
5. ``{"t": "trailer", "exported": <counts of what the stream holds>, "counts_end", "changes", "consistent", ...}``

A stream without its trailer is truncated. Property values are JSON where JSON is exact (strings, booleans,
integers, finite floats, lists) and ``{"$t": tag, ...}`` objects otherwise (:func:`encode_value`). Memory on
both sides is bounded by the batch size, never by the graph.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from seedvault.errors import (
    FormatError,
    IntegrityError,
    SourceError,
    TargetError,
    TruncatedStream,
    UnsupportedVersion,
)
from seedvault.format.manifest import without_floats
from seedvault.sources.neo4j.bolt import (
    ENTERPRISE_CONSTRAINTS,
    IMPORT_INDEX,
    IMPORT_KEY,
    IMPORT_LABEL,
    compare_counts,
    constraint_kind,
)
from seedvault.sources.neo4j.values import decode_props, encode_props

FORMAT = "seedvault-neo4j-graph"
VERSION = 1
BATCH_SIZE = 5000


# --- framing ------------------------------------------------------------------------------------------------
def encode_line(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"


def iter_records(source: Any, read_size: int = 1 << 20) -> Iterator[dict[str, Any]]:
    """The stream's records, from a ``.read(n)`` object or an iterable of byte chunks (``Repository.read_object``)."""
    chunks: Iterable[bytes] = iter(lambda: source.read(read_size), b"") if hasattr(source, "read") else source
    pending = b""
    number = 0
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            number += 1
            try:
                record = json.loads(line)
            except ValueError:
                raise FormatError(f"graph stream line {number} is not JSON") from None
            if not isinstance(record, dict) or "t" not in record:
                raise FormatError(f"graph stream line {number} is not a record")
            yield record
    if pending:
        raise TruncatedStream(f"graph stream ends inside line {number + 1}")


class GraphSource(Protocol):
    """What the export reads (:class:`.bolt.BoltGraph` is one)."""

    uri: str
    database: str

    def components(self) -> tuple[str, str]: ...
    def counts(self, *, exact: bool = ...) -> dict[str, Any]: ...
    def iter_nodes(self, fetch_size: int = ...) -> Iterator[tuple[str, list[str], dict[str, Any]]]: ...
    def iter_relationships(self, fetch_size: int = ...) -> Iterator[tuple[str, str, str, dict[str, Any]]]: ...


class GraphTarget(Protocol):
    """What the import writes to (:class:`.bolt.BoltGraph` is one)."""

    def components(self) -> tuple[str, str]: ...
    def counts(self) -> dict[str, Any]: ...
    def begin_import(self) -> None: ...
    def create_nodes(self, labels: list[str], rows: list[dict[str, Any]]) -> int: ...
    def create_relationships(self, rel_type: str, rows: list[dict[str, Any]]) -> int: ...
    def end_import(self, batch_size: int = ...) -> None: ...
    def create_index(self, entry: Mapping[str, Any]) -> None: ...
    def create_constraint(self, entry: Mapping[str, Any]) -> None: ...
    def await_indexes(self, timeout: int = ...) -> None: ...


class StreamReader:
    """Bytes of a line generator through ``.read(n)``, so the engine's writer can consume it like a file."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self._buf = bytearray()
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) < n):
            try:
                self._buf += next(self._lines)
            except StopIteration:
                self._eof = True
        size = len(self._buf) if n < 0 else min(n, len(self._buf))
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def close(self) -> None:
        """Stop early: closes the generator, and with it the driver session it reads from."""
        close = getattr(self._lines, "close", None)
        if close:
            close()
        self._eof = True


class GraphExporter:
    """Exports one database as the graph stream; :attr:`summary` (for the manifest) is set once it is read."""

    def __init__(self, graph: GraphSource, *, batch_size: int = BATCH_SIZE) -> None:
        self.graph = graph
        self.batch_size = batch_size
        self.summary: dict[str, Any] | None = None

    def reader(self) -> StreamReader:
        return StreamReader(self.lines())

    def lines(self) -> Iterator[bytes]:
        graph = self.graph
        version, edition = graph.components()
        start = graph.counts(exact=True)  # index options as the server has them: the import recreates them
        started = _now()
        source = {"uri": graph.uri, "database": graph.database, "neo4j_version": version, "edition": edition}
        header = {"t": "header", "format": FORMAT, "version": VERSION, "source": source, "counts": start}
        yield encode_line({**header, "batch_size": self.batch_size, "started": started})
        for entry in start["indexes"]:
            yield encode_line({"t": "index", **entry})
        for entry in start["constraints"]:
            yield encode_line({"t": "constraint", **entry})
        labels: Counter[str] = Counter()
        nodes = 0
        for node_id, node_labels, props in graph.iter_nodes(self.batch_size):
            if IMPORT_KEY in props or IMPORT_LABEL in node_labels:
                raise SourceError(
                    f"node {node_id} carries seedvault's import mark ({IMPORT_LABEL}/{IMPORT_KEY})",
                    hint=f"an import was interrupted; remove it: MATCH (n:{IMPORT_LABEL}) REMOVE n:{IMPORT_LABEL}, "
                    f"n.{IMPORT_KEY}",
                )
            labels.update(node_labels)
            nodes += 1
            props = encode_props(props, f"node {node_id}")
            yield encode_line({"t": "n", "id": node_id, "labels": node_labels, "props": props})
        types: Counter[str] = Counter()
        for start_id, end_id, rel_type, props in graph.iter_relationships(self.batch_size):
            types[rel_type] += 1
            props = encode_props(props, f"a {rel_type} relationship from {start_id} to {end_id}")
            yield encode_line({"t": "r", "s": start_id, "e": end_id, "type": rel_type, "props": props})
        end = graph.counts(exact=True)
        exported = {
            "nodes": nodes,
            "relationships": types.total(),
            "labels": dict(sorted(labels.items())),
            "types": dict(sorted(types.items())),
            "indexes": start["indexes"],
            "constraints": start["constraints"],
        }
        changes = compare_counts(start, end, expected_label="at start", actual_label="at end")
        changes += compare_counts(start, exported, expected_label="at start", actual_label="exported")
        trailer = {"exported": exported, "counts_end": end, "changes": changes, "consistent": not changes}
        self.summary = {"format": FORMAT, "version": VERSION, **source, "started": started, **trailer}
        yield encode_line({"t": "trailer", **trailer, "finished": _now()})


# --- import -----------------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    header: dict[str, Any]
    trailer: dict[str, Any]
    nodes: int = 0
    relationships: int = 0
    dangling: dict[str, int] = field(default_factory=dict)  # per type: relationships whose end nodes were missing
    seconds: float = 0.0

    def expected_counts(self) -> dict[str, Any]:
        """What the target should now hold (compare with ``compare_counts(result.expected_counts(), g.counts())``)."""
        exp = dict(self.trailer["exported"])
        types = {t: n - self.dangling.get(t, 0) for t, n in exp.get("types", {}).items()}
        exp["types"] = {t: n for t, n in types.items() if n}
        exp["relationships"] = exp["relationships"] - sum(self.dangling.values())
        return without_floats(exp)  # the stream keeps the schema exact; counts() compare without floats


class _Batches:
    """Rows waiting to be written, grouped by label set or type; flushed whole once ``size`` rows wait."""

    def __init__(self, size: int, write: Any) -> None:
        self.size, self.write = size, write
        self.groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        self.pending = 0

    def add(self, key: Any, row: dict[str, Any]) -> None:
        self.groups[key].append(row)
        self.pending += 1
        if self.pending >= self.size:
            self.flush()

    def flush(self) -> None:
        for key, rows in self.groups.items():
            self.write(key, rows)
        self.groups.clear()
        self.pending = 0


def import_stream(graph: GraphTarget, reader: Any, batch_size: int = BATCH_SIZE) -> ImportResult:
    """Recreate a graph stream in an EMPTY database: nodes, then relationships, then indexes and constraints.

    Refuses a database that holds any node, index or constraint: merging into existing data cannot be undone.
    If it fails half-way the database is partial (and still carries the import marks): drop it and start over.
    """
    began = time.monotonic()
    records = iter_records(reader)
    header = next(records, None)
    if header is None or header.get("t") != "header" or header.get("format") != FORMAT:
        raise FormatError("not a seedvault Neo4j graph stream (no header)")
    if not isinstance(header.get("version"), int) or header["version"] > VERSION:
        raise UnsupportedVersion(f"graph stream version {header.get('version')} is newer than this seedvault's")
    _require_empty(graph)
    result = ImportResult(header, {})
    indexes: list[dict[str, Any]] = []
    constraints: list[dict[str, Any]] = []
    phase = "schema"

    def write_nodes(labels: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
        result.nodes += graph.create_nodes(list(labels), rows)

    def write_rels(rel_type: str, rows: list[dict[str, Any]]) -> None:
        created = graph.create_relationships(rel_type, rows)
        result.relationships += created
        if created < len(rows):
            result.dangling[rel_type] = result.dangling.get(rel_type, 0) + len(rows) - created

    nodes, rels = _Batches(batch_size, write_nodes), _Batches(batch_size, write_rels)
    for rec in records:
        kind = rec["t"]
        if kind in ("index", "constraint"):
            if phase != "schema":
                raise FormatError(f"graph stream has an {kind} record after its data")
            (indexes if kind == "index" else constraints).append({k: v for k, v in rec.items() if k != "t"})
        elif kind == "n":
            if phase == "schema":
                _check_edition(graph, constraints)
                graph.begin_import()
            elif phase != "nodes":
                raise FormatError("graph stream has a node record after its relationships")
            phase = "nodes"
            nodes.add(tuple(rec["labels"]), {"id": rec["id"], "props": decode_props(rec["props"])})
        elif kind == "r":
            if phase not in ("nodes", "relationships"):
                raise FormatError("graph stream has a relationship record before any node")
            nodes.flush()
            phase = "relationships"
            rels.add(rec["type"], {"s": rec["s"], "e": rec["e"], "props": decode_props(rec["props"])})
        elif kind == "trailer":
            result.trailer = rec
            break
        else:
            raise FormatError(f"unknown record type {kind!r} in the graph stream")
    if not result.trailer:
        raise TruncatedStream("graph stream ends before its trailer")
    if next(records, None) is not None:
        raise FormatError("graph stream has records after its trailer")
    nodes.flush()
    rels.flush()
    if phase == "schema":
        _check_edition(graph, constraints)
    else:
        graph.end_import(batch_size)
    _check_totals(result)
    for entry in indexes:
        graph.create_index(entry)
    for entry in constraints:
        graph.create_constraint(entry)
    graph.await_indexes()
    result.seconds = round(time.monotonic() - began, 3)
    return result


def _require_empty(graph: GraphTarget) -> None:
    counts = graph.counts()
    indexes = [e["name"] for e in counts.get("indexes", []) if e["name"] != IMPORT_INDEX]
    constraints = [e["name"] for e in counts.get("constraints", [])]
    if counts.get("nodes") or counts.get("relationships") or indexes or constraints:
        what = f"{counts.get('nodes', 0)} nodes, {len(indexes)} indexes, {len(constraints)} constraints"
        raise TargetError(
            f"the target database is not empty ({what}); a logical import only goes into an empty one",
            hint="create a new database, or drop and recreate this one, then import again",
        )


def _check_edition(graph: GraphTarget, constraints: list[dict[str, Any]]) -> None:
    """Refuse before writing anything when the target edition could not recreate every constraint."""
    version, edition = graph.components()
    blocked = [c["name"] for c in constraints if constraint_kind(c["type"]) in ENTERPRISE_CONSTRAINTS]
    if blocked and edition != "enterprise":
        raise TargetError(
            f"Neo4j {version} {edition} cannot create the backup's Enterprise-only constraints: {', '.join(blocked)}",
            hint="import into an Enterprise server",
        )


def _check_totals(result: ImportResult) -> None:
    exported = result.trailer.get("exported") or {}
    if result.nodes != exported.get("nodes") or result.relationships + sum(result.dangling.values()) != exported.get(
        "relationships"
    ):
        raise IntegrityError(
            f"graph stream holds {result.nodes} nodes and {result.relationships} relationships, "
            f"its trailer says {exported.get('nodes')} and {exported.get('relationships')}"
        )
    if result.dangling and result.trailer.get("consistent"):
        raise IntegrityError(
            f"{sum(result.dangling.values())} relationships point to nodes the stream does not hold, "
            "although the export saw no change"
        )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
