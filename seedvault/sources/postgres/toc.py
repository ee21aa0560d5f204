"""pg_restore tables of contents: read them exactly, and select entries for partial restores.

Why a selection of our own: ``pg_restore -t TABLE`` restores a table and its data but *not* its indexes,
constraints, triggers or sequences, which is not what an operator recovering a dropped table needs. seedvault
records each table's dependents in the manifest (same snapshot as the dump) and builds a ``-L`` list that
brings the table back with all of them. It also drops entries that would collide with what the restore
creates itself (the TimescaleDB extension, created before ``timescaledb_pre_restore()``).

Why the archive's own TOC: ``pg_restore --list`` prints ``<dump id>; <tableoid> <oid> <TYPE> <schema> <tag>
<owner>`` with nothing quoted, TYPE may be several words ("TABLE DATA", "FK CONSTRAINT", "SEQUENCE OWNED
BY"), tags of constraints, triggers, policies and defaults are "<table> <name>", and line breaks in names
are printed as spaces. With spaces in a schema, table or owner name (``"My Schema"."Order Items"`` owned
by ``"App User"``), a table called ``TABLE DATA`` or a schema called ``DATA``, a line has several readings.
The custom-format archive stores each field as a length-prefixed string, so :func:`read_archive` reads the
TOC from the head of the dump (the same bytes pg_restore reads) and :func:`parse` takes each listed entry's
fields from there -- but only after checking that they print exactly as pg_restore printed that line. If
the archive's layout is one this code does not know (a newer pg_dump) or any line differs, every line is
read from the text instead, split with the names the backup recorded (schemas, tables, their constraints,
indexes and sequences); such entries are marked ``exact=False``.

Everything selected is written back to pg_restore as dump ids only (``-L`` reads nothing else of a line).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

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
        "SECURITY LABEL",
        "ACL",
        "ACL LANGUAGE",
        "SCHEMA",
        "EXTENSION",
        "VIEW",
        "MATERIALIZED VIEW DATA",
        "MATERIALIZED VIEW",
        "FUNCTION",
        "PROCEDURE",
        "PROCEDURAL LANGUAGE",
        "TYPE",
        "DOMAIN",
        "RULE",
        "ENCODING",
        "STDSTRINGS",
        "SEARCHPATH",
        "DATABASE",
        "DATABASE PROPERTIES",
        "PUBLICATION",
        "PUBLICATION TABLE",
        "PUBLICATION TABLES IN SCHEMA",
        "SUBSCRIPTION",
        "SUBSCRIPTION TABLE",
        "STATISTICS",
        "STATISTICS DATA",
        "AGGREGATE",
        "ACCESS METHOD",
        "COLLATION",
        "CONVERSION",
        "OPERATOR",
        "OPERATOR CLASS",
        "OPERATOR FAMILY",
        "EVENT TRIGGER",
        "FOREIGN DATA WRAPPER",
        "FOREIGN TABLE",
        "SERVER",
        "USER MAPPING",
        "LARGE OBJECT",
        "BLOB METADATA",
        "BLOBS",
        "BLOB",
        "SHELL TYPE",
        "CAST",
        "TRANSFORM",
        "TABLE ATTACH",
        "DEFAULT ACL",
        "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY",
        "TEXT SEARCH PARSER",
        "TEXT SEARCH TEMPLATE",
    ],
    key=len,
    reverse=True,
)

_LINE_RE = re.compile(r"(\d+); (\d+) (\d+) (.*)", re.DOTALL)


@dataclass(frozen=True)
class TocEntry:
    """One listed entry. ``schema`` None: the entry has none (``-`` in the listing)."""

    line: str
    desc: str
    schema: str | None
    tag: str
    owner: str = ""
    dump_id: int = 0
    deps: tuple[int, ...] = ()
    exact: bool = False  # fields from the archive's TOC (True) or split from the text (False)


# --- the archive's TOC -------------------------------------------------------------------------------------
class ArchiveUnreadable(Exception):
    """The head of the dump is not a custom-format archive whose TOC layout this code knows."""


@dataclass(frozen=True)
class ArchiveEntry:
    dump_id: int
    tableoid: int
    oid: int
    desc: str
    tag: str | None
    schema: str | None
    owner: str | None
    deps: tuple[int, ...]

    def list_line(self) -> str:
        """The line ``pg_restore --list`` prints for this entry (its ``PrintTOCSummary``)."""
        schema = _sanitize(self.schema) if self.schema is not None else "-"
        return (
            f"{self.dump_id}; {self.tableoid} {self.oid} {self.desc} {schema} "
            f"{_sanitize(self.tag or '')} {_sanitize(self.owner or '')}"
        )


@dataclass
class ArchiveToc:
    version: tuple[int, int, int]
    entries: dict[int, ArchiveEntry] = field(default_factory=dict)


def _sanitize(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


# Archive versions (pg_backup_archiver.h): 1.14 added the table access method (PostgreSQL 12), 1.15 the
# compression algorithm byte (16), 1.16 the relkind of each entry (17).
KNOWN_VERSIONS = ((1, 14, 0), (1, 15, 0), (1, 16, 0))
CUSTOM_FORMAT = 1


class _Reader:
    """Sequential reads over an iterator of byte pieces, keeping only what is not yet consumed."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces: Iterator[bytes] = iter(pieces)
        self._buf = bytearray()
        self._pos = 0
        self.int_size = 4

    def read(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n:
            try:
                piece = next(self._pieces)
            except StopIteration:
                raise ArchiveUnreadable("the archive ends inside its table of contents") from None
            if self._pos:
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += piece
        out = bytes(self._buf[self._pos : self._pos + n])
        self._pos += n
        return out

    def byte(self) -> int:
        return self.read(1)[0]

    def int(self) -> int:
        sign = self.byte()
        value = int.from_bytes(self.read(self.int_size), "little")
        return -value if sign else value

    def bytes_or_none(self) -> bytes | None:
        n = self.int()
        if n < 0:
            return None
        if n > 1 << 30:
            raise ArchiveUnreadable(f"implausible string length {n} in the table of contents")
        return self.read(n)


def read_archive(pieces: Iterable[bytes], encoding: str = "utf-8") -> ArchiveToc:
    """The TOC of a custom-format archive, from the pieces of its head (reads no further than the TOC).

    ``encoding``: the dump's (the database's) encoding as a Python codec; undecodable bytes are kept as
    surrogates, the same way the listing is decoded, so the two compare exactly.
    """
    r = _Reader(pieces)
    if r.read(5) != b"PGDMP":
        raise ArchiveUnreadable("not a pg_dump custom-format archive")
    vmaj, vmin = r.byte(), r.byte()
    vrev = r.byte() if (vmaj, vmin) > (1, 0) else 0
    version = (vmaj, vmin, vrev)
    if (vmaj, vmin, 0) not in KNOWN_VERSIONS:
        raise ArchiveUnreadable(f"archive version {vmaj}.{vmin}-{vrev} is not one this seedvault reads")
    r.int_size = r.byte()
    off_size = r.byte()
    if not 1 <= r.int_size <= 8 or not 1 <= off_size <= 16:
        raise ArchiveUnreadable("implausible integer sizes in the archive header")
    if r.byte() != CUSTOM_FORMAT:
        raise ArchiveUnreadable("not a custom-format archive")
    if version >= (1, 15, 0):
        r.byte()  # compression algorithm
    else:
        r.int()  # compression level
    for _ in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        r.int()
    for _ in range(3):  # database name, server version, pg_dump version
        r.bytes_or_none()

    def text(raw: bytes | None) -> str | None:
        return None if raw is None else raw.decode(encoding, "surrogateescape")

    out = ArchiveToc(version)
    count = r.int()
    if count < 0:
        raise ArchiveUnreadable("negative entry count in the table of contents")
    for _ in range(count):
        dump_id = r.int()
        if dump_id <= 0:
            raise ArchiveUnreadable(f"entry id {dump_id} out of range: not a TOC this code can read")
        r.int()  # had a data dumper
        tableoid = r.bytes_or_none() or b"0"
        oid = r.bytes_or_none() or b"0"
        tag = text(r.bytes_or_none())
        desc = text(r.bytes_or_none())
        r.int()  # section
        for _ in range(3):  # definition, drop statement, COPY statement
            r.bytes_or_none()
        schema = text(r.bytes_or_none())
        r.bytes_or_none()  # tablespace
        r.bytes_or_none()  # table access method (1.14+)
        if version >= (1, 16, 0):
            r.int()  # relkind
        owner = text(r.bytes_or_none())
        r.bytes_or_none()  # "false": WITH OIDS
        deps = []
        while (dep := r.bytes_or_none()) is not None:
            deps.append(int(dep))
        flag = r.byte()  # custom format: data state and offset of the entry's data
        r.read(off_size)
        if desc is None or not tableoid.isdigit() or not oid.isdigit() or flag > 3:
            raise ArchiveUnreadable(f"entry {dump_id} does not look like a TOC entry")
        out.entries[dump_id] = ArchiveEntry(dump_id, int(tableoid), int(oid), desc, tag, schema, owner, tuple(deps))
    return out


# --- the listing -------------------------------------------------------------------------------------------
def parse(listing: str, archive: ArchiveToc | None = None, tables_meta: list[dict] | None = None) -> list[TocEntry]:
    """The entries of a ``pg_restore --list`` listing, in its order.

    With ``archive`` (:func:`read_archive` of the same dump) and every line printing exactly as its archive
    entry: each entry's exact fields. Otherwise each line is split from its text, using the backup's
    recorded names (``tables_meta``: the manifest's ``source.tables``) where a line has several readings.
    """
    lines = [ln for ln in listing.split("\n") if _LINE_RE.fullmatch(ln)]
    if archive is not None:
        exact = _from_archive(lines, archive)
        if exact is not None:
            return exact
    known = _Known(tables_meta or [])
    return [_guess(line, known) for line in lines]


def archive_mismatch(listing: str, archive: ArchiveToc) -> str | None:
    """Why the archive's TOC cannot stand for the listing (None: it can)."""
    for line in (ln for ln in listing.split("\n") if _LINE_RE.fullmatch(ln)):
        entry = archive.entries.get(int(line.split(";", 1)[0]))
        if entry is None:
            return f"entry {line.split(';', 1)[0]} is listed but not in the archive's TOC"
        if entry.list_line() != line:
            return f"entry {entry.dump_id} prints differently from the archive's TOC"
    return None


def _from_archive(lines: list[str], archive: ArchiveToc) -> list[TocEntry] | None:
    out = []
    for line in lines:
        entry = archive.entries.get(int(line.split(";", 1)[0]))
        if entry is None or entry.list_line() != line:
            return None
        out.append(
            TocEntry(
                line, entry.desc, entry.schema, entry.tag or "", entry.owner or "", entry.dump_id, entry.deps, True
            )
        )
    return out


class _Known:
    """Names the backup recorded, by their listing spelling (line breaks as spaces) -> the real name."""

    def __init__(self, tables_meta: list[dict]) -> None:
        self.schemas: dict[str, str] = {}
        self.tags: dict[str | None, dict[str, str]] = {}
        for t in tables_meta:
            schema, name = t["schema"], t["name"]
            self.schemas[_sanitize(schema)] = schema
            deps = t.get("dependents", {})
            tags = [name, f"TABLE {name}", f"TABLE {quote_ident(name)}"]
            tags += [f"{name} {c}" for kind in ("constraint", "fk", "trigger") for c in deps.get(kind, [])]
            tags += [*deps.get("index", []), *deps.get("constraint", []), *deps.get("sequence", [])]
            for seq in deps.get("sequence", []):
                tags += [f"SEQUENCE {seq}", f"SEQUENCE {quote_ident(seq)}"]
            self.tags.setdefault(schema, {}).update({_sanitize(tag): tag for tag in tags})
        self.tags[None] = dict(self.schemas)  # SCHEMA entries: the tag is the schema's name


def _guess(line: str, known: _Known) -> TocEntry:
    """Split one listing line from its text: the reading whose schema and tag the backup knows, else a guess."""
    m = _LINE_RE.fullmatch(line)
    assert m is not None
    dump_id, rest = int(m.group(1)), m.group(4)
    best: tuple[tuple[bool, bool], TocEntry] | None = None
    for desc in DESCS:
        if not rest.startswith(desc + " "):
            continue
        after_desc = rest[len(desc) + 1 :]
        for shown, schema, schema_known in _schema_readings(after_desc, known):
            tag, owner, tag_known = _split_tag_owner(after_desc[len(shown) + 1 :], known.tags.get(schema, {}))
            score = (tag_known, schema_known)
            entry = TocEntry(line, desc, schema, tag, owner, dump_id)
            if score == (True, True):
                return entry
            if best is None or score > best[0]:
                best = (score, entry)
    if best is not None:
        return best[1]
    return TocEntry(line, rest.split(" ", 1)[0], None, "", "", dump_id)  # a type this code does not know


def _prefixes(text: str) -> Iterator[str]:
    """Every prefix of ``text`` that ends before a space, longest first (a name ends where a field starts)."""
    end = text.rfind(" ")
    while end >= 0:
        yield text[:end]
        end = text.rfind(" ", 0, end)


def _schema_readings(text: str, known: _Known) -> Iterator[tuple[str, str | None, bool]]:
    """(as printed, schema, whether the backup knows it), most likely first."""
    if text.startswith("- "):
        yield "-", None, True
    for shown in _prefixes(text):
        if shown in known.schemas:
            yield shown, known.schemas[shown], True
    first = text.split(" ", 1)[0]
    yield first, first, False


def _split_tag_owner(text: str, tags: dict[str, str]) -> tuple[str, str, bool]:
    """``<tag> <owner>`` -> (tag, owner, whether the tag is a known name); the owner may be empty."""
    for shown in _prefixes(text):
        if shown in tags:
            return tags[shown], text[len(shown) + 1 :], True
    if text.endswith(" "):
        return text[:-1], "", False
    tag, _, owner = text.rpartition(" ")
    return tag, owner, False


def render(entries: list[TocEntry]) -> str:
    """A ``pg_restore -L`` list: each entry's id (all pg_restore reads of a line) and its type, as a comment."""
    return "".join(f"{e.dump_id}; {e.desc}\n" for e in entries)


# --- names -------------------------------------------------------------------------------------------------
def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(key: tuple[str, str]) -> str:
    """``schema.table`` as operators read it (quoted only where a dot or quote would mislead)."""
    schema, name = key
    if any(c in schema + name for c in '."') or schema.strip() != schema or name.strip() != name:
        return f"{quote_ident(schema)}.{quote_ident(name)}"
    return f"{schema}.{name}"


def _ident(text: str, pos: int) -> tuple[str, int] | None:
    """One SQL identifier at ``pos`` (``"quoted"`` or bare, as pg_dump's fmtId writes them) and where it ends."""
    if text[pos : pos + 1] == '"':
        name, i = [], pos + 1
        while True:
            j = text.find('"', i)
            if j < 0:
                return None
            name.append(text[i:j])
            if text[j + 1 : j + 2] == '"':
                name.append('"')
                i = j + 2
                continue
            return "".join(name), j + 1
    m = re.compile(r'[^".\s]+').match(text, pos)
    return (m.group(0), m.end()) if m else None


def _parse_qualified(spec: str) -> tuple[str | None, str] | None:
    """``"My Schema"."Order Items"`` / ``"a.b".c`` / ``"t"`` -> (schema or None, name); None if not that syntax."""
    first = _ident(spec, 0)
    if first is None:
        return None
    name, pos = first
    if pos == len(spec):
        return None, name
    if spec[pos] != ".":
        return None
    second = _ident(spec, pos + 1)
    if second is None or second[1] != len(spec):
        return None
    return name, second[0]


def resolve_table(spec: str, keys: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """The (schema, table) a ``--table`` names: ``schema.table`` as the names are (dots and spaces included),
    a bare ``table`` in public, or SQL-quoted parts (``"a.b"."c"``). None when it names none of ``keys``;
    a spelling that fits several (``a.b.c``: "a"."b.c" and "a.b"."c") is refused, asking for quotes."""
    keys = set(keys)
    found = {k for k in keys if f"{k[0]}.{k[1]}" == spec}
    if "." not in spec and ("public", spec) in keys:
        found.add(("public", spec))
    if '"' in spec and (parsed := _parse_qualified(spec)) is not None:
        key = (parsed[0] or "public", parsed[1])
        if key in keys:
            found.add(key)
    if len(found) > 1:
        spelled = " or ".join(f"{quote_ident(s)}.{quote_ident(t)}" for s, t in sorted(found))
        raise UsageError(
            f"--table {spec} is ambiguous: it names {spelled}",
            hint='quote the parts as in SQL, e.g. --table \'"schema"."table"\'',
        )
    return found.pop() if found else None


# --- selection ---------------------------------------------------------------------------------------------
TABLE_PREFIXED = ("CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT", "TRIGGER", "POLICY", "DEFAULT", "ROW SECURITY")


class _Selection:
    def __init__(self, entries: list[TocEntry], meta: dict[tuple[str, str], dict]) -> None:
        self.meta = meta
        self.table_ids = {(e.schema, e.tag): e.dump_id for e in entries if e.desc == "TABLE"}
        self.by_text: dict[str, set[tuple[str, str]]] = {}  # the manifest's "schema.table" references
        for key in meta:
            self.by_text.setdefault(f"{key[0]}.{key[1]}", set()).add(key)

    def refs(self, text: str | None) -> set[tuple[str, str]]:
        return self.by_text.get(text or "", set())

    def owner_table(self, e: TocEntry) -> tuple[str, str] | None:
        """The table an entry whose tag is ``<table> <name>`` (or ``<table>``) belongs to."""
        if e.schema is None:
            return None
        names = [n for n in [e.tag, *_prefixes(e.tag)] if (e.schema, n) in self.meta]
        if len(names) > 1 and e.deps:  # "Order" and "Order Items": the entry depends on its table's entry
            by_dep = [n for n in names if self.table_ids.get((e.schema, n)) in e.deps]
            if len(by_dep) == 1:
                return e.schema, by_dep[0]
        if len(names) > 1:
            recorded = [n for n in names if e.tag[len(n) + 1 :] in self._dependent_names((e.schema, n))]
            if len(recorded) == 1:
                return e.schema, recorded[0]
        return (e.schema, max(names, key=len)) if names else None

    def _dependent_names(self, key: tuple[str, str]) -> set[str]:
        deps = self.meta[key].get("dependents", {})
        return {d for kind in ("constraint", "fk", "trigger") for d in deps.get(kind, [])}


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
    meta = {(t["schema"], t["name"]): t for t in tables_meta}
    wanted_tables: set[tuple[str, str]] = set()
    for spec in tables:
        key = resolve_table(spec, meta)
        if key is None:
            notes.append(f"table {spec} is not in the backup")
        else:
            wanted_tables.add(key)
    wanted_schemas = set(schemas)
    ctx = _Selection(entries, meta)
    selected = _with_partitions({k for k in meta if k in wanted_tables or k[0] in wanted_schemas}, meta, ctx)
    # "constraint": a primary key's or unique constraint's index has the constraint's name (INDEX ATTACH of a
    # partition's key names it).
    names: dict[str, set[tuple[str, str]]] = {"index": set(), "sequence": set(), "constraint": set()}
    default_sequences: set[str] = set()  # recorded schema-qualified, as "schema.sequence"
    for key in selected:
        deps = meta[key].get("dependents", {})
        for kind in names:
            names[kind] |= {(key[0], d) for d in deps.get(kind, [])}
        default_sequences |= set(deps.get("default_sequence", []))
    partial = bool(wanted_tables or wanted_schemas or tables)
    # Definitions a table can depend on (trigger functions, column types, extensions): no data, always safe.
    supporting = {"FUNCTION", "PROCEDURE", "TYPE", "SHELL TYPE", "DOMAIN", "AGGREGATE", "COLLATION", "EXTENSION"}
    needed_schemas = {k[0] for k in selected} | wanted_schemas
    needed_schemas |= {e.schema for e in entries if e.desc in supporting and e.schema is not None}
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
        if e.desc in supporting or (e.schema is not None and e.schema in wanted_schemas):
            out.append(e)
            continue
        if e.desc == "FK CONSTRAINT":
            owner = ctx.owner_table(e)
            if owner not in selected:
                continue
            con = e.tag[len(owner[1]) + 1 :]
            target = meta[owner].get("fk_targets", {}).get(con)
            if target is None or ctx.refs(target) & selected:
                out.append(e)
            else:
                notes.append(f"foreign key {con} of {qualified(owner)} skipped: it references {target}, not restored")
        elif _belongs(e, ctx, selected, names, default_sequences):
            out.append(e)
    return out, notes


def _with_partitions(
    selected: set[tuple[str, str]], meta: dict[tuple[str, str], dict], ctx: _Selection
) -> set[tuple[str, str]]:
    """The selected tables and every partition under a selected partitioned table, to any depth.

    Why: a partitioned table holds no rows itself; restoring it without its partitions restores nothing.
    Backups made before partitions recorded their parent cannot say which those are: refused, not guessed.
    """
    children: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for key, t in meta.items():
        for parent in ctx.refs(t.get("parent")):
            children.setdefault(parent, set()).add(key)
    out = set(selected)
    todo = [k for k in selected if meta[k].get("partitioned")]
    unrecorded = any(t.get("partition") and not t.get("parent") for t in meta.values())
    while todo:
        key = todo.pop()
        if key not in children and unrecorded:
            raise UsageError(
                f"{qualified(key)} is a partitioned table and this backup does not record which partitions are its own",
                hint="name its partitions with --table as well, or restore the whole backup into a new database",
            )
        for child in children.get(key, ()):
            if child not in out:
                out.add(child)
                if meta[child].get("partitioned"):
                    todo.append(child)
    return out


def _belongs(
    e: TocEntry,
    ctx: _Selection,
    tables: set[tuple[str, str]],
    names: dict[str, set[tuple[str, str]]],
    default_sequences: set[str],
) -> bool:
    """Whether an entry (other than a foreign key) is part of one of the selected tables."""
    if e.schema is None:
        return False
    key = (e.schema, e.tag)
    if e.desc in ("TABLE", "TABLE DATA", "TABLE ATTACH"):
        return key in tables
    if e.desc == "INDEX ATTACH":
        return key in names["index"] or key in names["constraint"]
    if e.desc in TABLE_PREFIXED:
        return ctx.owner_table(e) in tables
    if e.desc == "INDEX":
        return key in names["index"]
    if e.desc.startswith("SEQUENCE"):
        return key in names["sequence"] or f"{e.schema}.{e.tag}" in default_sequences
    if e.desc in ("COMMENT", "ACL", "SECURITY LABEL"):
        target = _described(e.tag)
        if target is None:
            return False
        kind, name = target
        if kind == "table":
            return (e.schema, name) in tables
        if kind == "sequence":
            return (e.schema, name) in names["sequence"] or f"{e.schema}.{name}" in default_sequences
        return (e.schema, name) in names["index"]
    return False


def _described(tag: str) -> tuple[str, str] | None:
    """What a COMMENT/ACL/SECURITY LABEL tag is about: ("table", name), ("sequence", name) or ("index", name).

    Tags name their object with quoted identifiers: ``TABLE "Order Items"``, ``COLUMN "Order Items"."qty"``,
    ``CONSTRAINT "c" ON "t"``, ``SEQUENCE s``, ``INDEX i``.
    """
    kind, _, rest = tag.partition(" ")
    first = _ident(rest, 0) if rest else None
    if first is None:
        return None
    name, end = first
    if kind in ("TABLE", "SEQUENCE", "INDEX") and end == len(rest):
        return kind.lower(), name
    if kind == "COLUMN" and rest[end : end + 1] == ".":
        return "table", name
    if kind in ("CONSTRAINT", "TRIGGER", "POLICY") and rest[end:].startswith(" ON "):
        table = _ident(rest, end + 4)
        if table is not None and table[1] == len(rest):
            return "table", table[0]
    return None
