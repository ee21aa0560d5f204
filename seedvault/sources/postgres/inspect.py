"""What a logical backup records about its database, read in the same snapshot as the dump.

Row counts and checksums are only meaningful if they describe exactly the data the dump contains, so
every query here runs inside the REPEATABLE READ transaction whose snapshot pg_dump imports
(``--snapshot``). Exact ``count(*)`` is the default; tables whose planner estimate exceeds
``estimate_above`` rows get ``pg_class.reltuples`` instead, flagged ``"estimated": true`` (and not
compared exactly after restore).

Per table we also record the names of its indexes, constraints, triggers, owned sequences and the
sequences its column defaults use (``nextval()`` of a sequence it does not own, as in Pagila), which a
selective restore (``--table``) needs to bring a table back *with* them: pg_restore's own ``-t`` restores
only the table and its data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

TABLES_SQL = """
SELECT n.nspname, c.relname, c.relkind, GREATEST(c.reltuples, 0)::bigint AS estimate,
       c.relispartition, c.oid, pg_total_relation_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
  AND n.nspname NOT IN ('_timescaledb_catalog', '_timescaledb_config', '_timescaledb_cache')
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""

DEPENDENTS_SQL = """
SELECT 'index', i.relname FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
 WHERE x.indrelid = %(oid)s AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid
                                            AND k.conrelid = %(oid)s)
UNION ALL
SELECT CASE WHEN k.contype = 'f' THEN 'fk' ELSE 'constraint' END, k.conname FROM pg_constraint k
 WHERE k.conrelid = %(oid)s
UNION ALL
SELECT 'trigger', t.tgname FROM pg_trigger t WHERE t.tgrelid = %(oid)s AND NOT t.tgisinternal
UNION ALL
SELECT 'sequence', s.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
 WHERE d.refobjid = %(oid)s AND s.relkind = 'S' AND d.deptype IN ('a', 'i')
UNION ALL
SELECT 'default_sequence', sn.nspname || '.' || s.relname
  FROM pg_attrdef ad JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
  JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S' JOIN pg_namespace sn ON sn.oid = s.relnamespace
 WHERE ad.adrelid = %(oid)s
"""

PARTITIONS_SQL = """
SELECT n.nspname, c.relname, pn.nspname, p.relname FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
WHERE c.relispartition
"""

FK_TARGETS_SQL = """
SELECT k.conname, fn.nspname, f.relname FROM pg_constraint k
JOIN pg_class f ON f.oid = k.confrelid JOIN pg_namespace fn ON fn.oid = f.relnamespace
WHERE k.conrelid = %(oid)s AND k.contype = 'f'
"""


@dataclass
class InspectOptions:
    estimate_above: int | None = None  # rows; None = always exact
    checksums: bool = False


def server_facts(cur: psycopg.Cursor) -> dict[str, Any]:
    cur.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, current_database(),"
        " pg_database_size(current_database()), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,"
        " (SELECT system_identifier::text FROM pg_control_system())"
        " FROM pg_database d WHERE d.datname = current_database()"
    )
    version, num, db, size, encoding, collate, ctype, sysid = cur.fetchone()
    cur.execute("SELECT extname, extversion FROM pg_extension ORDER BY 1")
    extensions = {name: ver for name, ver in cur.fetchall()}
    return {
        "server_version": version,
        "server_version_num": num,
        "server_major": num // 10000,
        "database": db,
        "database_size": size,
        "encoding": encoding,
        "collate": collate,
        "ctype": ctype,
        "system_identifier": sysid,
        "extensions": extensions,
    }


HYPERTABLES_SQL = """
SELECT h.hypertable_schema, h.hypertable_name, h.num_chunks,
       (SELECT count(*) FROM timescaledb_information.chunks c
         WHERE c.hypertable_schema = h.hypertable_schema AND c.hypertable_name = h.hypertable_name AND c.is_compressed)
FROM timescaledb_information.hypertables h ORDER BY 1, 2
"""

# What a restore must bring back of TimescaleDB's background jobs (ids included: pg_dump keeps them).
JOBS_SQL = """
SELECT job_id, application_name, proc_schema, proc_name, schedule_interval::text, coalesce(config::text, ''),
       coalesce(hypertable_schema, ''), coalesce(hypertable_name, ''), scheduled
FROM timescaledb_information.jobs WHERE job_id >= 1000 ORDER BY job_id
"""

# TimescaleDB's own storage: chunks (plain and compressed) and the internal compressed hypertables. Their
# rows are the hypertable's, counted and checksummed through it (a compressed chunk's table cannot even be
# read on its own: "chunk ... has no dimension slices"). A chunk whose table is gone (TimescaleDB before 2.26
# kept dropped chunks in its catalog, flagged ``dropped``; 2.26 removed that column) is left out by asking
# whether its table exists, which reads the same on every version.
STORAGE_SQL = """
SELECT schema_name, table_name, 'chunk' FROM _timescaledb_catalog.chunk
WHERE to_regclass(format('%I.%I', schema_name, table_name)) IS NOT NULL
UNION ALL
SELECT schema_name, table_name, CASE WHEN compression_state = 2 THEN 'chunk' ELSE 'hypertable' END
FROM _timescaledb_catalog.hypertable
"""


def timescale_facts(cur: psycopg.Cursor, extensions: dict[str, str]) -> dict[str, Any] | None:
    if "timescaledb" not in extensions:
        return None
    cur.execute(HYPERTABLES_SQL)
    hypertables = [
        {"schema": s, "table": t, "chunks": int(n), "compressed_chunks": int(c)} for s, t, n, c in cur.fetchall()
    ]
    return {"version": extensions["timescaledb"], "hypertables": hypertables, "jobs": timescale_jobs(cur)}


def timescale_jobs(cur: psycopg.Cursor) -> list[dict[str, Any]]:
    """The user-defined jobs and policies (ids from 1000; below are TimescaleDB's own, per installation)."""
    cur.execute(JOBS_SQL)
    keys = ("id", "application", "proc_schema", "proc", "schedule_interval", "config", "schema", "table", "scheduled")
    return [dict(zip(keys, row, strict=True)) for row in cur.fetchall()]


def timescale_storage(cur: psycopg.Cursor, extensions: dict[str, str]) -> dict[tuple[str, str], str]:
    """(schema, table) -> "hypertable" or "chunk" for TimescaleDB's relations; empty without the extension."""
    if "timescaledb" not in extensions:
        return {}
    cur.execute(STORAGE_SQL)
    return {(s, t): role for s, t, role in cur.fetchall()}


def _qualified(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def row_count_sql(qualified: sql.Composable, *, hypertable: bool) -> sql.Composed:
    """How a table's rows are counted, at backup and after a restore alike."""
    if hypertable:
        return sql.SQL("SELECT count(*) FROM {}").format(qualified)
    return sql.SQL("SELECT count(*) FROM ONLY {}").format(qualified)


def table_checksum(cur: psycopg.Cursor, schema: str, table: str) -> str:
    """SHA-256 of the table's rows as COPY text, in primary-key order (all columns' text when no key).

    Computed client-side from a COPY stream, so memory stays flat for tables of any size, and the same
    function run on a restored database must give the same digest for the same rows.
    """
    cur.execute(
        "SELECT a.attname FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey)"
        " WHERE x.indrelid = (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        "                    WHERE n.nspname = %s AND c.relname = %s)"
        " AND x.indisprimary ORDER BY array_position(x.indkey, a.attnum)",
        (schema, table),
    )
    keys = [r[0] for r in cur.fetchall()]
    order = sql.SQL(", ").join(sql.Identifier(k) for k in keys) if keys else sql.SQL('(t.*)::text COLLATE "C"')
    query = sql.SQL("COPY (SELECT * FROM {} t ORDER BY {}) TO STDOUT").format(_qualified(schema, table), order)
    digest = hashlib.sha256()
    with cur.copy(query) as copy:
        for block in copy:
            digest.update(block)
    return digest.hexdigest()


@dataclass
class TableCheck:
    """One recorded table against a restored database: what is wrong (or None), its rows, its checksum's verdict."""

    problem: str | None
    rows: int | None = None
    checksum_ok: bool | None = None  # None: not compared (none recorded, or checksums off)


def check_table(conn: psycopg.Connection, cur: psycopg.Cursor, t: dict[str, Any], *, checksums: bool,
                recorded_as: str = "backup") -> TableCheck:  # fmt: skip
    """Count (and checksum) one table as :func:`tables` recorded it, the same way, and compare.

    An estimated count (``"estimated": true``) proves nothing, so it is not compared; a checksum still is. Why one
    function: every restore (logical, PITR to a group's restore point) must judge a table by the same rules.
    """
    key = f"{t['schema']}.{t['name']}"
    try:
        cur.execute(row_count_sql(_qualified(t["schema"], t["name"]), hypertable=bool(t.get("hypertable"))))
    except psycopg.errors.UndefinedTable:
        conn.rollback()
        return TableCheck(f"{key} missing")
    rows = int(cur.fetchone()[0])
    if not t.get("estimated") and rows != int(t["rows"]):
        return TableCheck(f"{key} has {rows} rows, {recorded_as} had {t['rows']}", rows)
    if not (checksums and t.get("sha256")):
        return TableCheck(None, rows)
    if table_checksum(cur, t["schema"], t["name"]) != t["sha256"]:
        return TableCheck(f"{key} content checksum differs", rows, False)
    return TableCheck(None, rows, True)


def tables(
    cur: psycopg.Cursor, options: InspectOptions, storage: dict[tuple[str, str], str] | None = None
) -> list[dict[str, Any]]:
    """Per table: rows, dependents, foreign keys, checksum. ``storage``: :func:`timescale_storage`."""
    storage = storage or {}
    cur.execute(TABLES_SQL)
    rows = cur.fetchall()
    cur.execute(PARTITIONS_SQL)
    parents = {(s, t): f"{ps}.{pt}" for s, t, ps, pt in cur.fetchall()}
    out = []
    for schema, name, kind, estimate, is_partition, oid, size in rows:
        role = storage.get((schema, name))
        if role == "chunk":
            continue  # counted through its hypertable
        qualified = _qualified(schema, name)
        # bytes: the table with its indexes and TOAST (pg_total_relation_size), for a selective restore's space check.
        entry: dict[str, Any] = {"schema": schema, "name": name, "bytes": int(size)}
        if kind == "p":
            entry["partitioned"] = True
        if is_partition:
            entry["partition"] = True
            entry["parent"] = parents[(schema, name)]
        if role == "hypertable":
            entry["hypertable"] = True
        if options.estimate_above is not None and estimate > options.estimate_above:
            entry["rows"] = int(estimate)
            entry["estimated"] = True
        else:
            # ONLY: a partitioned parent's rows are counted in its partitions, not twice. A hypertable's rows
            # are all in its chunks, compressed ones included, so it is counted as a whole (and they are not).
            cur.execute(row_count_sql(qualified, hypertable=role == "hypertable"))
            entry["rows"] = int(cur.fetchone()[0])
            entry["estimated"] = False
        cur.execute(DEPENDENTS_SQL, {"oid": oid})
        deps: dict[str, list[str]] = {}
        for kind_, dep in cur.fetchall():
            deps.setdefault(kind_, []).append(dep)
        if deps:
            entry["dependents"] = {k: sorted(v) for k, v in deps.items()}
        cur.execute(FK_TARGETS_SQL, {"oid": oid})
        fks = {con: f"{s}.{t}" for con, s, t in cur.fetchall()}
        if fks:
            entry["fk_targets"] = fks
        if options.checksums and kind == "r":
            entry["sha256"] = table_checksum(cur, schema, name)
        out.append(entry)
    return out


def inspect(conn: psycopg.Connection, options: InspectOptions) -> dict[str, Any]:
    """Everything recorded about the database, from the connection's current (snapshot) transaction."""
    with conn.cursor() as cur:
        facts = server_facts(cur)
        facts["timescaledb"] = timescale_facts(cur, facts["extensions"])
        facts["tables"] = tables(cur, options, timescale_storage(cur, facts["extensions"]))
    facts["total_rows"] = sum(t["rows"] for t in facts["tables"])
    return facts
