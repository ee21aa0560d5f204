"""What a logical backup records about its database, read in the same snapshot as the dump.

Row counts and checksums are only meaningful if they describe exactly the data the dump contains, so
every query here runs inside the REPEATABLE READ transaction whose snapshot pg_dump imports
(``--snapshot``). Exact ``count(*)`` is the default; tables whose planner estimate exceeds
``estimate_above`` rows get ``pg_class.reltuples`` instead, flagged ``"estimated": true`` (and not
compared exactly after restore).

Per table we also record the names of its indexes, constraints, triggers and owned sequences, which a
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
       c.relispartition
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


def timescale_facts(cur: psycopg.Cursor, extensions: dict[str, str]) -> dict[str, Any] | None:
    if "timescaledb" not in extensions:
        return None
    cur.execute(
        "SELECT hypertable_schema, hypertable_name, num_chunks FROM timescaledb_information.hypertables ORDER BY 1, 2"
    )
    hypertables = [{"schema": s, "table": t, "chunks": int(n)} for s, t, n in cur.fetchall()]
    return {"version": extensions["timescaledb"], "hypertables": hypertables}


def _qualified(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def table_checksum(cur: psycopg.Cursor, schema: str, table: str) -> str:
    """SHA-256 of the table's rows as COPY text, in primary-key order (all columns' text when no key).

    Computed client-side from a COPY stream, so memory stays flat for tables of any size, and the same
    function run on a restored database must give the same digest for the same rows.
    """
    cur.execute(
        "SELECT a.attname FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY(x.indkey)"
        " WHERE x.indrelid = %s::regclass AND x.indisprimary ORDER BY array_position(x.indkey, a.attnum)",
        (f'"{schema}"."{table}"',),
    )
    keys = [r[0] for r in cur.fetchall()]
    order = sql.SQL(", ").join(sql.Identifier(k) for k in keys) if keys else sql.SQL('(t.*)::text COLLATE "C"')
    query = sql.SQL("COPY (SELECT * FROM {} t ORDER BY {}) TO STDOUT").format(_qualified(schema, table), order)
    digest = hashlib.sha256()
    with cur.copy(query) as copy:
        for block in copy:
            digest.update(block)
    return digest.hexdigest()


def tables(cur: psycopg.Cursor, options: InspectOptions) -> list[dict[str, Any]]:
    cur.execute(TABLES_SQL)
    rows = cur.fetchall()
    out = []
    for schema, name, kind, estimate, is_partition in rows:
        qualified = _qualified(schema, name)
        entry: dict[str, Any] = {"schema": schema, "name": name}
        if kind == "p":
            entry["partitioned"] = True
        if is_partition:
            entry["partition"] = True
        if options.estimate_above is not None and estimate > options.estimate_above:
            entry["rows"] = int(estimate)
            entry["estimated"] = True
        else:
            # ONLY: a partitioned parent's rows are counted in its partitions, not twice.
            cur.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(qualified))
            entry["rows"] = int(cur.fetchone()[0])
            entry["estimated"] = False
        cur.execute("SELECT %s::regclass::oid", (f'"{schema}"."{name}"',))
        oid = cur.fetchone()[0]
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
        facts["tables"] = tables(cur, options)
    facts["total_rows"] = sum(t["rows"] for t in facts["tables"])
    return facts
