"""pg_restore table-of-contents lists: parse ``pg_restore -l`` and select entries for partial restores.

Why: ``pg_restore -t TABLE`` restores a table and its data but *not* its indexes, constraints,
triggers or sequences, which is not what an operator recovering a dropped table needs. seedvault
records each table's dependents in the manifest (same snapshot as the dump) and builds a ``-L`` list
that brings the table back with all of them. It also drops entries that would collide with what the
restore creates itself (the TimescaleDB extension, created before ``timescaledb_pre_restore()``).

A TOC line is ``<dump id>; <catalog oid> <object oid> <DESC> <schema> <tag> <owner>`` where DESC may
contain spaces ("TABLE DATA", "FK CONSTRAINT", "SEQUENCE OWNED BY") and for constraints, triggers,
policies and defaults the tag is "<table> <name>".
"""

from __future__ import annotations

from dataclasses import dataclass

from seedvault.errors import UsageError

DESCS = sorted(
    [
        "TABLE DATA",
        "TABLE",
        "FK CONSTRAINT",
        "CHECK CONSTRAINT",
        "CONSTRAINT",
        "INDEX ATTACH",
        "INDEX",
        "SEQUENCE OWNED BY",
        "SEQUENCE SET",
        "SEQUENCE",
        "DEFAULT",
        "TRIGGER",
        "POLICY",
        "ROW SECURITY",
        "COMMENT",
        "ACL",
        "SCHEMA",
        "EXTENSION",
        "VIEW",
        "MATERIALIZED VIEW DATA",
        "MATERIALIZED VIEW",
        "FUNCTION",
        "PROCEDURE",
        "TYPE",
        "DOMAIN",
        "RULE",
        "ENCODING",
        "STDSTRINGS",
        "SEARCHPATH",
        "DATABASE",
        "DATABASE PROPERTIES",
        "PUBLICATION",
        "SUBSCRIPTION",
        "STATISTICS",
        "AGGREGATE",
        "COLLATION",
        "CONVERSION",
        "OPERATOR",
        "OPERATOR CLASS",
        "OPERATOR FAMILY",
        "EVENT TRIGGER",
        "FOREIGN TABLE",
        "SERVER",
        "USER MAPPING",
        "LARGE OBJECT",
        "BLOBS",
        "BLOB",
        "SHELL TYPE",
        "CAST",
        "TABLE ATTACH",
        "DEFAULT ACL",
        "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY",
    ],
    key=len,
    reverse=True,
)


@dataclass(frozen=True)
class TocEntry:
    line: str
    desc: str
    schema: str
    tag: str


def parse(listing: str) -> list[TocEntry]:
    entries = []
    for line in listing.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        try:
            _, rest = line.split(";", 1)
            rest = rest.strip().split(" ", 2)[2]  # drop the two oids
        except (ValueError, IndexError):
            continue
        desc = next((d for d in DESCS if rest.startswith(d + " ")), None)
        if desc is None:
            continue
        fields = rest[len(desc) + 1 :].split(" ")
        if len(fields) < 2:
            continue
        schema, tag = fields[0], " ".join(fields[1:-1]) if len(fields) > 2 else fields[1]
        entries.append(TocEntry(line, desc, schema, tag))
    return entries


def _table_key(schema: str, name: str) -> str:
    return f"{schema}.{name}"


def select(
    entries: list[TocEntry],
    tables_meta: list[dict],
    *,
    schemas: list[str],
    tables: list[str],
    skip_extensions: tuple[str, ...] = (),
) -> tuple[list[TocEntry], list[str]]:
    """Entries to restore for the requested schemas/tables (all when neither), and notes on what was left out."""
    notes: list[str] = []
    wanted_tables = {t if "." in t else f"public.{t}" for t in tables}
    wanted_schemas = set(schemas)
    meta = {_table_key(t["schema"], t["name"]): t for t in tables_meta}
    for t in wanted_tables - set(meta):
        notes.append(f"table {t} is not in the backup")
    selected_tables = _with_partitions(
        {k for k in meta if k in wanted_tables or meta[k]["schema"] in wanted_schemas}, meta
    )
    # "constraint": a primary key's or unique constraint's index has the constraint's name (INDEX ATTACH of a
    # partition's key names it).
    names: dict[str, set[str]] = {"index": set(), "sequence": set(), "constraint": set()}
    for key in selected_tables:
        deps = meta[key].get("dependents", {})
        schema = meta[key]["schema"]
        for kind in names:
            names[kind] |= {f"{schema}.{d}" for d in deps.get(kind, [])}
        names["sequence"] |= set(deps.get("default_sequence", []))  # already schema-qualified
    partial = bool(wanted_tables or wanted_schemas)
    # Definitions a table can depend on (trigger functions, column types, extensions): no data, always safe.
    supporting = {"FUNCTION", "PROCEDURE", "TYPE", "SHELL TYPE", "DOMAIN", "AGGREGATE", "COLLATION", "EXTENSION"}
    needed_schemas = {k.split(".", 1)[0] for k in selected_tables} | wanted_schemas
    needed_schemas |= {e.schema for e in entries if e.desc in supporting}
    out = []
    for e in entries:
        if e.desc == "EXTENSION" and e.tag in skip_extensions:
            continue
        if e.desc == "COMMENT" and e.tag.startswith("EXTENSION ") and e.tag.split(" ", 1)[1] in skip_extensions:
            continue
        if not partial:
            out.append(e)
            continue
        if e.desc == "SCHEMA":
            if e.tag in needed_schemas and e.tag != "public":
                out.append(e)
            continue
        if e.desc in supporting:
            out.append(e)
            continue
        if e.schema in wanted_schemas:
            out.append(e)
            continue
        if _belongs(e, selected_tables, names):
            out.append(e)
        elif e.desc == "FK CONSTRAINT" and _table_key(e.schema, e.tag.split(" ", 1)[0]) in selected_tables:
            owner_table = _table_key(e.schema, e.tag.split(" ", 1)[0])
            con = e.tag.split(" ", 1)[1] if " " in e.tag else e.tag
            target = meta[owner_table].get("fk_targets", {}).get(con)
            if target is None or target in selected_tables:
                out.append(e)
            else:
                notes.append(f"foreign key {con} of {owner_table} skipped: it references {target}, not restored")
    return out, notes


def _with_partitions(selected: set[str], meta: dict[str, dict]) -> set[str]:
    """The selected tables and every partition under a selected partitioned table, to any depth.

    Why: a partitioned table holds no rows itself; restoring it without its partitions restores nothing.
    Backups made before partitions recorded their parent cannot say which those are: refused, not guessed.
    """
    children: dict[str, set[str]] = {}
    for key, t in meta.items():
        if t.get("parent"):
            children.setdefault(t["parent"], set()).add(key)
    out = set(selected)
    todo = [k for k in selected if meta[k].get("partitioned")]
    while todo:
        key = todo.pop()
        if key not in children and any(t.get("partition") and not t.get("parent") for t in meta.values()):
            raise UsageError(
                f"{key} is a partitioned table and this backup does not record which partitions are its own",
                hint="name its partitions with --table as well, or restore the whole backup into a new database",
            )
        for child in children.get(key, ()):
            if child not in out:
                out.add(child)
                if meta[child].get("partitioned"):
                    todo.append(child)
    return out


def _belongs(e: TocEntry, tables: set[str], names: dict[str, set[str]]) -> bool:
    """Whether an entry (other than a foreign key) is part of one of the selected tables."""
    if e.desc in ("TABLE", "TABLE DATA", "TABLE ATTACH"):
        return _table_key(e.schema, e.tag) in tables
    if e.desc == "INDEX ATTACH":
        return _table_key(e.schema, e.tag) in names["index"] | names["constraint"]
    if e.desc in ("CONSTRAINT", "CHECK CONSTRAINT", "TRIGGER", "POLICY", "DEFAULT", "ROW SECURITY"):
        return _table_key(e.schema, e.tag.split(" ", 1)[0]) in tables
    if e.desc == "INDEX":
        return _table_key(e.schema, e.tag) in names["index"]
    if e.desc.startswith("SEQUENCE"):
        return _table_key(e.schema, e.tag) in names["sequence"]
    if e.desc in ("COMMENT", "ACL") and e.tag.startswith("TABLE "):
        return _table_key(e.schema, e.tag.split(" ", 1)[1]) in tables
    return False


def render(entries: list[TocEntry]) -> str:
    return "".join(e.line + "\n" for e in entries)
