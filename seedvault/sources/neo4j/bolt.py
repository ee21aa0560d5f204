"""A Neo4j database seen over Bolt: version, counts and schema, database admin, and the Cypher of the logical export.

Why Bolt next to neo4j-admin: neo4j-admin proves that a dump was *written*; only the server can say what is
*in* a database. Counts come from the count store (``MATCH (n:`L`) RETURN count(n)`` costs no scan), so they
are cheap enough to record at every backup and compare after every restore (:func:`compare_counts`).
Database administration (STOP/START/CREATE DATABASE) goes through the ``system`` database and exists only in
Enterprise; Community is refused by name instead of with the server's generic error.

Every Cypher text the logical export and import run lives here (:mod:`.export` only frames the stream), and
every name in it (labels, types, properties, indexes, databases) goes through :func:`quote_name`: names
come from the graph being backed up and may hold backticks, spaces or anything else.

The password is registered with :func:`seedvault.process.register_secret`, kept out of ``repr`` and scrubbed
from every message; messages name the URI without any user-info part.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import neo4j
import neo4j.time
import pytz
from neo4j import exceptions as nx

from seedvault import process
from seedvault.errors import (
    ConfigError,
    DatabaseRefused,
    DatabaseUnreachable,
    SeedvaultError,
    SourceError,
    TargetError,
)
from seedvault.format.manifest import without_floats
from seedvault.sources.neo4j.values import ZONE_UTC, ServerTemporal

# The driver logs every refused connection and failed routing attempt (stderr, one line per attempt, also
# while a restarted server comes up). seedvault reports a failure itself, once, as one line.
logging.getLogger("neo4j").setLevel(logging.CRITICAL)

SCHEMES = ("bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc")
# The import's temporary marks: a label every imported node carries, indexed on the old id, removed at the end.
IMPORT_LABEL = "__SvImport"
IMPORT_KEY = "__sv_id"
IMPORT_INDEX = "seedvault_import_id"
# Constraint kinds only Enterprise can create (Community refuses them at CREATE CONSTRAINT).
ENTERPRISE_CONSTRAINTS = frozenset({"key", "exists", "type"})


# --- Cypher text -------------------------------------------------------------------------------------------
def quote_name(name: str) -> str:
    """A label, type, property, index or database name as a Cypher identifier (backticks doubled inside)."""
    return "`" + str(name).replace("`", "``") + "`"


def cypher_literal(value: Any) -> str:
    """A Cypher literal for an index option value (maps, lists, strings, numbers, booleans)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no Cypher literal for {value!r}")
        return repr(value).replace("e+", "e")
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{quote_name(k)}: {cypher_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(cypher_literal(v) for v in value) + "]"
    raise ValueError(f"no Cypher literal for a {type(value).__name__}")


def _pattern(entry: Mapping[str, Any], var: str = "x") -> str:
    names = "|".join(quote_name(n) for n in entry["labels"])
    return f"()-[{var}:{names}]-()" if entry["entity"] == "RELATIONSHIP" else f"({var}:{names})"


def _props(entry: Mapping[str, Any], var: str = "x") -> list[str]:
    return [f"{var}.{quote_name(p)}" for p in entry["properties"]]


def index_statement(entry: Mapping[str, Any]) -> str:
    """CREATE INDEX for a schema entry, in the syntax 4.4, 5.x and 2025.x all accept.

    BTREE (4.4) has no keyword: each server then makes its default (BTREE on 4.4, RANGE on 5+), which is what
    an upgrade through a logical export wants. Options are kept only where they carry meaning (point, full-text
    and vector settings); index providers are left to the target.
    """
    kind = entry["type"]
    keyword = {t: f"{t} " for t in ("RANGE", "TEXT", "POINT", "FULLTEXT", "VECTOR")} | {"BTREE": ""}
    if kind not in keyword:
        raise SourceError(f"index {entry['name']} has type {kind}, which seedvault cannot recreate")
    on = f"EACH [{', '.join(_props(entry))}]" if kind == "FULLTEXT" else f"({', '.join(_props(entry))})"
    text = f"CREATE {keyword[kind]}INDEX {quote_name(entry['name'])} FOR {_pattern(entry)} ON {on}"
    config = entry.get("config") or {}
    if config and kind in ("POINT", "FULLTEXT", "VECTOR"):
        text += f" OPTIONS {{indexConfig: {cypher_literal(config)}}}"
    return text


def constraint_kind(raw_type: str) -> str:
    """unique | key | exists | type, from SHOW CONSTRAINTS' type column (which changed names across versions)."""
    t = raw_type.upper()
    for needle, kind in (("UNIQUE", "unique"), ("KEY", "key"), ("EXISTENCE", "exists"), ("PROPERTY_TYPE", "type")):
        if needle in t:
            return kind
    return "other"


def constraint_statement(entry: Mapping[str, Any]) -> str:
    """CREATE CONSTRAINT for a schema entry (``FOR ... REQUIRE`` syntax: 4.4 and later)."""
    kind = constraint_kind(entry["type"])
    props = _props(entry)
    head = f"CREATE CONSTRAINT {quote_name(entry['name'])} FOR {_pattern(entry)} REQUIRE"
    if kind == "unique":
        return f"{head} ({', '.join(props)}) IS UNIQUE"
    if kind == "key":
        return f"{head} ({', '.join(props)}) IS {'RELATIONSHIP' if entry['entity'] == 'RELATIONSHIP' else 'NODE'} KEY"
    if kind == "exists":
        return f"{head} {props[0]} IS NOT NULL"
    if kind == "type" and entry.get("property_type"):
        return f"{head} {props[0]} IS :: {entry['property_type']}"
    raise SourceError(f"constraint {entry['name']} has type {entry['type']}, which seedvault cannot recreate")


def zone_utc_keys(var: str) -> str:
    """Cypher: ``[key, flags]`` of each property of ``var`` holding a datetime in zone id ``UTC``.

    Why: the driver hands ``...[UTC]`` and ``...Z`` over alike (pytz's UTC), so the server says which is which:
    a scalar's flags are ``true``, a list's one boolean per element. Only these few values are sent twice.
    """
    text = "toStringOrNull({v}) ENDS WITH '[UTC]'"
    scalar = text.format(v=f"{var}[k]")
    in_list = text.format(v="x")
    return (
        f"[k IN keys({var}) WHERE {scalar} OR (toStringOrNull({var}[k]) IS NULL AND"
        f" any(x IN {var}[k] WHERE {in_list})) | [k, CASE WHEN {scalar} THEN true ELSE"
        f" [x IN {var}[k] | coalesce({in_list}, false)] END]]"
    )


def mark_zone_utc(props: dict[str, Any], zoned: Sequence[Sequence[Any]] | None) -> dict[str, Any]:
    """``props`` with the datetimes the server named as zone id ``UTC`` (:func:`zone_utc_keys`) marked so."""
    for key, flags in zoned or ():
        value = props.get(key)
        if flags is True:
            props[key] = _zone_utc(value)
        elif isinstance(value, list) and isinstance(flags, list):
            props[key] = [_zone_utc(v) if f else v for v, f in zip(value, flags, strict=False)]
    return props


def _zone_utc(value: Any) -> Any:
    if isinstance(value, neo4j.time.DateTime) and value.tzinfo is pytz.utc:
        return value.replace(tzinfo=ZONE_UTC)
    return value


# A property the driver cannot send (a temporal outside years 1-9999): (key, kind, is a list).
ServerProperty = tuple[str, str, bool]


def _server_sets(var: str, server: Sequence[ServerProperty]) -> str:
    """``, n.`key` = date(row.server[0].v) ...``: the properties a row carries as text for the server to parse."""
    sets = []
    for i, (key, kind, is_list) in enumerate(server):
        expr = f"row.server[{i}]"
        value = f"[x IN {expr} | {ServerTemporal.cypher(kind, 'x')}]" if is_list else ServerTemporal.cypher(kind, expr)
        sets.append(f", {var}.{quote_name(key)} = {value}")
    return "".join(sets)


def node_create_query(labels: Sequence[str], server: Sequence[ServerProperty] = ()) -> str:
    """One import batch of nodes with one label set (labels cannot be parameters, so one text per set)."""
    names = "".join(":" + quote_name(n) for n in (IMPORT_LABEL, *labels))
    return (
        f"UNWIND $rows AS row CREATE (n{names} {{{quote_name(IMPORT_KEY)}: row.id}}) SET n += row.props"
        + _server_sets("n", server)
    )


def relationship_create_query(rel_type: str, server: Sequence[ServerProperty] = ()) -> str:
    """One import batch of relationships of one type; rows whose end nodes are missing create nothing."""
    mark, key = quote_name(IMPORT_LABEL), quote_name(IMPORT_KEY)
    return (
        f"UNWIND $rows AS row MATCH (a:{mark} {{{key}: row.s}}) MATCH (b:{mark} {{{key}: row.e}}) "
        f"CREATE (a)-[r:{quote_name(rel_type)}]->(b) SET r += row.props{_server_sets('r', server)} "
        "RETURN count(r) AS created"
    )


def split_server_values(rows: list[dict[str, Any]]) -> dict[tuple[ServerProperty, ...], list[dict[str, Any]]]:
    """Import rows grouped by the server-parsed properties they carry (most rows: none, one group).

    Why: such properties need a Cypher function in the query text, and a key cannot be a parameter; a row's
    ``server`` list holds their :meth:`ServerTemporal.parameter` values in its group's key order.
    """
    groups: dict[tuple[ServerProperty, ...], list[dict[str, Any]]] = {}
    for row in rows:
        props, server, spec = {}, [], []
        for key, value in row["props"].items():
            if isinstance(value, ServerTemporal):
                spec.append((key, value.kind, False))
                server.append(value.parameter())
            elif isinstance(value, list) and value and isinstance(value[0], ServerTemporal):
                spec.append((key, value[0].kind, True))
                server.append([v.parameter() for v in value])
            else:
                props[key] = value
        if spec:
            row = {**row, "props": props, "server": server}
        groups.setdefault(tuple(spec), []).append(row)
    return groups


# --- schema rows from SHOW INDEXES / SHOW CONSTRAINTS ---------------------------------------------------------
def index_entry(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """A SHOW INDEXES row as a plain entry; None for an index that a constraint owns (it comes back with it)."""
    if row.get("owningConstraint") or row.get("uniqueness") == "UNIQUE":
        return None
    options = row.get("options") or {}
    return {
        "name": row["name"],
        "type": str(row.get("type") or "").upper(),
        "entity": str(row.get("entityType") or "NODE").upper(),
        "labels": list(row.get("labelsOrTypes") or []),
        "properties": list(row.get("properties") or []),
        "config": dict(options.get("indexConfig") or {}),
        "create": row.get("createStatement"),
    }


def constraint_entry(row: Mapping[str, Any]) -> dict[str, Any]:
    raw_type = str(row.get("type") or "")
    entity = row.get("entityType") or ("RELATIONSHIP" if "RELATIONSHIP" in raw_type.upper() else "NODE")
    return {
        "name": row["name"],
        "type": raw_type,
        "entity": str(entity).upper(),
        "labels": list(row.get("labelsOrTypes") or []),
        "properties": list(row.get("properties") or []),
        "property_type": row.get("propertyType"),
        "create": row.get("createStatement"),
    }


def describe(entry: Mapping[str, Any], *, constraint: bool = False) -> str:
    """``RANGE on :Person(name)``: how an index or constraint reads in a report."""
    kind = constraint_kind(entry["type"]).upper() if constraint else entry["type"]
    if not constraint and kind == "BTREE":
        kind = "RANGE"  # 4.4's BTREE comes back as RANGE on 5+: the same index for a comparison
    target = "|".join(entry["labels"])
    rel = "relationship " if entry["entity"] == "RELATIONSHIP" else ""
    text = f"{kind} on {rel}:{target}({', '.join(entry['properties'])})"
    return f"{text} :: {entry['property_type']}" if constraint and entry.get("property_type") else text


# --- the connection ---------------------------------------------------------------------------------------
class BoltGraph:
    """One database on one Neo4j server, reached with the official driver (connected on first use)."""

    def __init__(
        self, uri: str, user: str, password: str | None, database: str = "neo4j", *, connect_timeout: float = 10
    ) -> None:
        parts = urlsplit(uri)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ConfigError(f"invalid Neo4j URI {parts.scheme}://{parts.hostname or ''} (expected bolt://host:7687)")
        if parts.password:
            raise ConfigError(
                "the Neo4j URI contains a password; seedvault refuses passwords on command lines",
                hint="pass the password through NEO4J_PASSWORD or the Prefect target block",
            )
        port = f":{parts.port}" if parts.port else ""
        self.uri = f"{parts.scheme}://{parts.hostname}{port}"
        self.user = user
        self.database = database
        self.connect_timeout = connect_timeout
        self._password = password
        process.register_secret(password)
        self._driver: neo4j.Driver | None = None

    def __repr__(self) -> str:
        return f"BoltGraph(uri={self.uri!r}, user={self.user!r}, database={self.database!r})"

    def __enter__(self) -> BoltGraph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._driver is not None:
            with contextlib.suppress(Exception):
                self._driver.close()
            self._driver = None

    def display(self, database: str | None = None) -> str:
        return f"{self.uri} database {database or self.database}"

    # --- plumbing ---------------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        line = " ".join(str(text).split())[:300]
        if self._password and len(self._password) >= 4:
            line = line.replace(self._password, "***")
        return line

    @contextlib.contextmanager
    def _translate(self, action: str, database: str | None = None, error: type[SeedvaultError] = SourceError):
        """Driver exceptions as seedvault errors: one line, the URI named, the password never."""
        where = self.display(database)
        try:
            yield
        except SeedvaultError:
            raise
        except nx.AuthError:
            if self._password is None:
                raise DatabaseRefused(
                    f"Neo4j at {self.uri} requires authentication and no password was given",
                    hint="set NEO4J_PASSWORD or pass --password-file",
                ) from None
            raise DatabaseRefused(f"Neo4j at {self.uri} refused user {self.user!r}: authentication failed") from None
        except nx.Forbidden as exc:
            raise DatabaseRefused(f"Neo4j {where} denied {action}: {self._scrub(exc.message or exc)}") from None
        except (nx.ServiceUnavailable, nx.SessionExpired, OSError) as exc:
            raise DatabaseUnreachable(f"cannot reach Neo4j at {self.uri}: {_reason(self._scrub(str(exc)))}") from None
        except nx.Neo4jError as exc:
            code = exc.code or ""
            if code.endswith("Security.AuthenticationRateLimit"):  # after repeated wrong passwords
                raise DatabaseRefused(
                    f"Neo4j at {self.uri} refuses user {self.user!r} for now: too many failed logins (rate limit)",
                    hint="wait (dbms.security.auth_lock_time, 5 s by default) and check the password",
                ) from None
            if code.endswith("DatabaseNotFound"):
                raise DatabaseRefused(f"Neo4j at {self.uri} has no database {database or self.database!r}") from None
            if code.endswith("DatabaseUnavailable"):
                raise DatabaseUnreachable(f"Neo4j {where} is unavailable (stopped or starting)") from None
            detail = self._scrub(f"{exc.code}: {exc.message}")
            raise error(f"Neo4j {action} failed on {where}: {detail}") from None
        except nx.DriverError as exc:
            raise error(f"Neo4j {action} failed on {where}: {self._scrub(str(exc))}") from None

    def _drv(self) -> neo4j.Driver:
        if self._driver is None:
            auth = (self.user, self._password) if self._password is not None else None
            with self._translate("connect"):
                try:
                    driver = neo4j.GraphDatabase.driver(
                        self.uri, auth=auth, connection_timeout=self.connect_timeout, user_agent="seedvault"
                    )
                except (ValueError, nx.ConfigurationError) as exc:
                    raise ConfigError(f"invalid Neo4j URI {self.uri}: {self._scrub(str(exc))}") from None
                try:
                    driver.verify_connectivity()
                except BaseException:
                    driver.close()
                    raise
            self._driver = driver
        return self._driver

    def run(
        self,
        query: str,
        params: Mapping[str, Any] | None = None,
        *,
        database: str | None = None,
        write: bool = False,
        error: type[SeedvaultError] = SourceError,
    ) -> list[dict[str, Any]]:
        """One query in a managed transaction (retried on transient errors); its rows as dicts."""
        db = database or self.database

        def work(tx: neo4j.ManagedTransaction) -> list[dict[str, Any]]:
            return [dict(r.items()) for r in tx.run(query, dict(params or {}))]

        with self._translate("write" if write else "query", db, error), self._drv().session(database=db) as session:
            return session.execute_write(work) if write else session.execute_read(work)

    def run_auto(
        self, query: str, action: str, *, database: str | None = None, error: type[SeedvaultError] = SourceError
    ) -> list[dict[str, Any]]:
        """One auto-commit query: schema and administration commands, which cannot share a transaction."""
        db = database or self.database
        with self._translate(action, db, error), self._drv().session(database=db) as session:
            return [dict(r.items()) for r in session.run(query)]

    def stream(self, query: str, fetch_size: int) -> Iterator[neo4j.Record]:
        """Rows of one read query, pulled ``fetch_size`` at a time: memory stays flat however big the result."""
        with (
            self._translate("export", self.database),
            self._drv().session(
                database=self.database, fetch_size=fetch_size, default_access_mode=neo4j.READ_ACCESS
            ) as session,
        ):
            yield from session.run(query)

    # --- what is in the database ----------------------------------------------------------------------------
    def components(self) -> tuple[str, str]:
        """(version, edition), e.g. ``("5.26.1", "community")``; asked of the user's home database."""
        with self._translate("dbms.components"), self._drv().session() as session:
            rows = session.run("CALL dbms.components() YIELD name, versions, edition").data()
        kernel = next((r for r in rows if r["name"] == "Neo4j Kernel"), rows[0] if rows else None)
        if kernel is None:
            raise SourceError(f"Neo4j at {self.uri} reported no components")
        return str(kernel["versions"][0]), str(kernel["edition"]).lower()

    def counts(self, *, exact: bool = False) -> dict[str, Any]:
        """Nodes and relationships in total, per label and per type (count store), plus indexes and constraints.

        Floats in index options (a POINT index's ``spatial.cartesian.min``) are made manifest-fit unless ``exact``
        (the export, whose import must recreate the index with the very same options).
        """
        one = self._count
        labels = {lb: one(f"MATCH (n:{quote_name(lb)}) RETURN count(n) AS c") for lb in self._tokens("labels")}
        types = {
            t: one(f"MATCH ()-[r:{quote_name(t)}]->() RETURN count(r) AS c") for t in self._tokens("relationshipTypes")
        }
        indexes, lookups = [], []
        for row in self.run_auto("SHOW INDEXES YIELD *", "SHOW INDEXES"):
            entry = index_entry(row)
            if entry is not None:
                (lookups if entry["type"] == "LOOKUP" else indexes).append(entry)
        constraints = [constraint_entry(r) for r in self.run_auto("SHOW CONSTRAINTS YIELD *", "SHOW CONSTRAINTS")]
        counts = {
            "nodes": one("MATCH (n) RETURN count(n) AS c"),
            "relationships": one("MATCH ()-[r]->() RETURN count(r) AS c"),
            "labels": {k: v for k, v in sorted(labels.items()) if v},
            "types": {k: v for k, v in sorted(types.items()) if v},
            "indexes": sorted(indexes, key=lambda e: e["name"]),
            "constraints": sorted(constraints, key=lambda e: e["name"]),
            "lookup_indexes": sorted(lookups, key=lambda e: e["name"]),
        }
        # Recorded in manifests (no floats) and compared after a restore: both sides in the same form.
        return counts if exact else without_floats(counts)

    def _count(self, query: str) -> int:
        return int(self.run(query)[0]["c"])

    def _tokens(self, procedure: str) -> list[str]:
        column = "label" if procedure == "labels" else "relationshipType"
        return [r[column] for r in self.run(f"CALL db.{procedure}() YIELD {column} RETURN {column}")]

    def iter_nodes(self, fetch_size: int = 5000) -> Iterator[tuple[str, list[str], dict[str, Any]]]:
        """(element id, labels, properties) of every node, streamed."""
        for record in self.stream(f"MATCH (n) RETURN n, {zone_utc_keys('n')} AS z", fetch_size):
            node = record[0]
            yield node.element_id, sorted(node.labels), mark_zone_utc(dict(node.items()), record[1])

    def iter_relationships(self, fetch_size: int = 5000) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
        """(start element id, end element id, type, properties) of every relationship, streamed."""
        for record in self.stream(f"MATCH ()-[r]->() RETURN r, {zone_utc_keys('r')} AS z", fetch_size):
            rel = record[0]
            props = mark_zone_utc(dict(rel.items()), record[1])
            yield rel.start_node.element_id, rel.end_node.element_id, rel.type, props

    # --- the logical import's writes ------------------------------------------------------------------------
    def begin_import(self) -> None:
        """The temporary index that lets relationship batches find their end nodes by old id."""
        mark, key, name = quote_name(IMPORT_LABEL), quote_name(IMPORT_KEY), quote_name(IMPORT_INDEX)
        action = "creating the import index"
        self.run_auto(f"CREATE INDEX {name} IF NOT EXISTS FOR (n:{mark}) ON (n.{key})", action, error=TargetError)
        self.run_auto(f"CALL db.awaitIndex('{IMPORT_INDEX}', 300)", action, error=TargetError)

    def create_nodes(self, labels: Sequence[str], rows: list[dict[str, Any]]) -> int:
        for server, group in split_server_values(rows).items():
            self.run(node_create_query(labels, server), {"rows": group}, write=True, error=TargetError)
        return len(rows)

    def create_relationships(self, rel_type: str, rows: list[dict[str, Any]]) -> int:
        """Create one batch; returns how many were created (fewer when end nodes are missing)."""
        created = 0
        for server, group in split_server_values(rows).items():
            query = relationship_create_query(rel_type, server)
            created += int(self.run(query, {"rows": group}, write=True, error=TargetError)[0]["created"])
        return created

    def end_import(self, batch_size: int = 5000) -> None:
        """Drop the temporary index, then remove the marks in batches (one huge transaction would not fit)."""
        drop = f"DROP INDEX {quote_name(IMPORT_INDEX)} IF EXISTS"
        self.run_auto(drop, "dropping the import index", error=TargetError)
        mark, key = quote_name(IMPORT_LABEL), quote_name(IMPORT_KEY)
        query = f"MATCH (n:{mark}) WITH n LIMIT $n REMOVE n:{mark} REMOVE n.{key} RETURN count(n) AS c"
        while self.run(query, {"n": batch_size}, write=True, error=TargetError)[0]["c"]:
            pass

    def create_index(self, entry: Mapping[str, Any]) -> None:
        self.run_auto(index_statement(entry), f"creating index {entry['name']}", error=TargetError)

    def create_constraint(self, entry: Mapping[str, Any]) -> None:
        self.run_auto(constraint_statement(entry), f"creating constraint {entry['name']}", error=TargetError)

    def await_indexes(self, timeout: int = 3600) -> None:
        self.run_auto(f"CALL db.awaitIndexes({int(timeout)})", "waiting for indexes", error=TargetError)

    # --- database administration (Enterprise) -----------------------------------------------------------------
    def database_exists(self, name: str | None = None) -> bool:
        db = quote_name(name or self.database)
        return bool(self.run_auto(f"SHOW DATABASE {db}", "SHOW DATABASE", database="system"))

    def serves(self, name: str | None = None) -> bool:
        """Whether the database is online and answers a query (after a start: is it back?)."""
        db = name or self.database
        rows = self.run_auto(f"SHOW DATABASE {quote_name(db)}", "SHOW DATABASE", database="system")
        if not rows or any(str(r.get("currentStatus") or "").lower() != "online" for r in rows):
            return False
        self.run("RETURN 1 AS c", database=db)
        return True

    def stop_database(self, name: str | None = None, *, wait: float = 120) -> None:
        self._admin("STOP", name, "offline", wait)

    def start_database(self, name: str | None = None, *, wait: float = 120) -> None:
        self._admin("START", name, "online", wait)

    def create_database(self, name: str | None = None, *, exist_ok: bool = False, wait: float = 120) -> None:
        self._admin("CREATE", name, "online", wait, suffix=" IF NOT EXISTS" if exist_ok else "")

    def _admin(self, verb: str, name: str | None, status: str, wait: float, suffix: str = "") -> None:
        """``<verb> DATABASE`` on ``system``, then wait until every server reports ``status``."""
        db = name or self.database
        version, edition = self.components()
        if edition != "enterprise":
            raise SourceError(
                f"Neo4j {version} {edition} edition cannot {verb} DATABASE {db} (Enterprise only)",
                hint="on Community, stop the whole server (neo4j stop) for offline work, or restore into neo4j",
            )
        try:
            self.run_auto(f"{verb} DATABASE {quote_name(db)}{suffix}", f"{verb} DATABASE", database="system")
        except SourceError as exc:
            if "unsupported administration command" in exc.message.lower():
                raise SourceError(f"Neo4j at {self.uri} does not allow {verb} DATABASE (Enterprise only)") from None
            raise
        deadline = time.monotonic() + wait
        while True:
            rows = self.run_auto(f"SHOW DATABASE {quote_name(db)}", "SHOW DATABASE", database="system")
            current = {str(r.get("currentStatus") or "").lower() for r in rows}
            if rows and current == {status}:
                return
            errors = sorted({str(r["error"]) for r in rows if r.get("error")})
            if errors or time.monotonic() > deadline:
                seen = ", ".join(sorted(current)) or "absent"
                detail = f": {self._scrub(errors[0])}" if errors else ""
                raise SourceError(f"database {db} at {self.uri} is {seen}, not {status}, after {verb}{detail}")
            time.sleep(0.5)


def _reason(text: str) -> str:
    """The useful part of the driver's connection error (``reason [Errno 111] Connection refused``)."""
    m = re.search(r"reason (.+?)\)*$", text)
    return m.group(1) if m else text


# --- comparing two count sets -----------------------------------------------------------------------------
def compare_counts(
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    *,
    expected_label: str = "in backup",
    actual_label: str = "restored",
) -> list[str]:
    """Human-readable differences between two :meth:`BoltGraph.counts` results (empty when they agree).

    Lookup indexes are not compared: every new database has them. BTREE and RANGE count as the same index type,
    so a 4.4 backup restored into 5.x compares clean.
    """
    out: list[str] = []

    def number(what: str, a: int, b: int) -> None:
        if a != b:
            out.append(f"{what}: {a} {expected_label}, {b} {actual_label}")

    number("nodes", int(expected.get("nodes", 0)), int(actual.get("nodes", 0)))
    number("relationships", int(expected.get("relationships", 0)), int(actual.get("relationships", 0)))
    for key, what in (("labels", "label"), ("types", "relationship type")):
        exp, act = expected.get(key) or {}, actual.get(key) or {}
        for name in sorted(set(exp) | set(act)):
            number(f"{what} {name}", int(exp.get(name, 0)), int(act.get(name, 0)))
    for key, what in (("indexes", "index"), ("constraints", "constraint")):
        is_c = key == "constraints"
        exp = {e["name"]: describe(e, constraint=is_c) for e in expected.get(key) or []}
        act = {e["name"]: describe(e, constraint=is_c) for e in actual.get(key) or []}
        for name in sorted(set(exp) | set(act)):
            if name not in act:
                out.append(f"{what} {name} ({exp[name]}) missing ({expected_label}, not {actual_label})")
            elif name not in exp:
                out.append(f"{what} {name} ({act[name]}) unexpected ({actual_label}, not {expected_label})")
            elif exp[name] != act[name]:
                out.append(f"{what} {name}: {exp[name]} {expected_label}, {act[name]} {actual_label}")
    return out
