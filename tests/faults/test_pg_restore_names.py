"""``restore postgres --table/--schema`` with names pg_restore's ``--list`` cannot show unambiguously (issue 13.4).

pg_restore prints TOC lines as ``<id>; <tableoid> <oid> <TYPE> <schema> <name> <owner>`` without quoting, so
spaces, quotes, dots, a leading "-", non-ASCII, line breaks (printed as spaces) and names equal to TOC type
words ("TABLE DATA", a schema "DATA") all make a line ambiguous. Each test restores through the CLI from a real
backup, then looks at what the restored database holds.
"""

from __future__ import annotations

import json

import pytest

from seedvault.sources.postgres import toc
from seedvault.sources.postgres.inspect import InspectOptions, tables
from tests.helpers import run_cli

ROLES = ("App User", "-dash")

NASTY_SQL = """
CREATE SCHEMA "My Schema" AUTHORIZATION "App User";
CREATE TABLE "My Schema"."Order" (id int PRIMARY KEY);
CREATE TABLE "My Schema"."Order Items" (
    id serial PRIMARY KEY,
    "order" int NOT NULL,
    "the qty" int NOT NULL CONSTRAINT "qty positive" CHECK ("the qty" > 0),
    note text DEFAULT 'n'
);
ALTER TABLE "My Schema"."Order Items" ADD CONSTRAINT "Order Items order fk"
    FOREIGN KEY ("order") REFERENCES "My Schema"."Order" (id);
CREATE INDEX "Order Items qty idx" ON "My Schema"."Order Items" ("the qty");
COMMENT ON TABLE "My Schema"."Order Items" IS 'line items';
COMMENT ON COLUMN "My Schema"."Order Items"."the qty" IS 'how many';
ALTER TABLE "My Schema"."Order" OWNER TO "App User";
ALTER TABLE "My Schema"."Order Items" OWNER TO "App User";
INSERT INTO "My Schema"."Order" SELECT g FROM generate_series(1, 5) g;
INSERT INTO "My Schema"."Order Items" ("order", "the qty") SELECT 1 + g % 5, g FROM generate_series(1, 30) g;

CREATE TABLE public."we""ird.na me" (id int PRIMARY KEY, v text);
CREATE TABLE public."TABLE DATA" (id int);
CREATE SCHEMA "DATA";
CREATE TABLE "DATA"."x y" (id int);
CREATE TABLE public."-dash" (id int PRIMARY KEY);
ALTER TABLE public."-dash" OWNER TO "-dash";
CREATE TABLE public."Zürich Straße ☃" (id int);
CREATE TABLE public."line
break" (id int);
CREATE SCHEMA "a.b";
CREATE TABLE "a.b"."c.d" (id int);
INSERT INTO public."we""ird.na me" SELECT g, 'v' FROM generate_series(1, 3) g;
INSERT INTO public."TABLE DATA" SELECT generate_series(1, 4);
INSERT INTO "DATA"."x y" SELECT generate_series(1, 5);
INSERT INTO public."-dash" SELECT generate_series(1, 6);
INSERT INTO public."Zürich Straße ☃" SELECT generate_series(1, 7);
INSERT INTO public."line
break" SELECT generate_series(1, 8);
INSERT INTO "a.b"."c.d" SELECT generate_series(1, 9);
"""

# --table spelling -> (schema, table, rows)
ODD_TABLES = {
    'public.we"ird.na me': ("public", 'we"ird.na me', 3),
    "public.TABLE DATA": ("public", "TABLE DATA", 4),
    "DATA.x y": ("DATA", "x y", 5),
    "public.-dash": ("public", "-dash", 6),
    "public.Zürich Straße ☃": ("public", "Zürich Straße ☃", 7),
    "public.line\nbreak": ("public", "line\nbreak", 8),
    "a.b.c.d": ("a.b", "c.d", 9),
}


def _dsn(pg_server, db: str) -> str:
    return f"postgresql://{pg_server.user}@{pg_server.host}:{pg_server.port}/{db}"


def _drop_roles(conn) -> None:
    for role in ROLES:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists:
            conn.execute(f'DROP OWNED BY "{role}" CASCADE')
            conn.execute(f'DROP ROLE "{role}"')


@pytest.fixture
def nasty(local_repo, pg_server, pg_db):
    """A database full of awkward names, backed up once: (env, backup id, source database)."""
    with pg_server.connect() as conn:
        for role in ROLES:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
    with pg_server.connect(pg_db) as conn:
        conn.execute(NASTY_SQL)
    env = dict(local_repo.env, **pg_server.env())
    res = run_cli(["backup", "postgres", "--dsn", _dsn(pg_server, pg_db), "--json"], env, check=True)
    created: list[str] = []
    try:
        yield env, json.loads(res.stdout)["id"], pg_db, created
    finally:
        for db in created:
            pg_server.drop_database(db)
        pg_server.drop_database(pg_db)
        with pg_server.connect() as conn:
            _drop_roles(conn)


def _restore(pg_server, env, backup_id: str, target: str, created: list[str], *extra: str):
    created.append(target)
    argv = ["restore", "postgres", backup_id, "--target-dsn", _dsn(pg_server, target), "--json", *extra]
    return run_cli(argv, env)


def _tables(conn) -> set[tuple[str, str]]:
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
    ).fetchall()
    return {(s, t) for s, t in rows}


def test_table_with_spaces_owned_by_a_role_with_a_space(nasty, pg_server):
    env, bid, db, created = nasty
    target = f"{db}_items"
    res = _restore(pg_server, env, bid, target, created, "--table", "My Schema.Order Items")
    assert res.returncode == 0, res.stderr.decode()
    report = json.loads(res.stdout)
    assert report["tables_verified"] == 1 and report["rows_verified"] == 30
    # Its foreign key references a table that is not restored: left out, and said so.
    assert any("Order Items order fk" in n and "not restored" in n for n in report["notes"]), report["notes"]
    with pg_server.connect(target) as conn:
        assert _tables(conn) == {("My Schema", "Order Items")}
        owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = 'My Schema' AND tablename = 'Order Items'"
        ).fetchone()[0]
        assert owner == "App User"
        cons = {
            r[0]
            for r in conn.execute(
                """SELECT conname FROM pg_constraint WHERE conrelid = '"My Schema"."Order Items"'::regclass"""
            )
        }
        assert cons == {"Order Items_pkey", "qty positive"}
        idx = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'My Schema'")}
        assert idx == {"Order Items_pkey", "Order Items qty idx"}
        comments = conn.execute(
            """SELECT obj_description('"My Schema"."Order Items"'::regclass),"""
            """ col_description('"My Schema"."Order Items"'::regclass, 3)"""
        ).fetchone()
        assert comments == ("line items", "how many")
        new_id = conn.execute(
            """INSERT INTO "My Schema"."Order Items" ("order", "the qty") VALUES (1, 1) RETURNING id"""
        ).fetchone()[0]
        assert new_id == 31, "the owned sequence came with its value"


def test_table_whose_name_starts_another_tables_name(nasty, pg_server):
    """ "Order" is a prefix of "Order Items": the other table's constraints ("Order Items ...") stay out."""
    env, bid, db, created = nasty
    target = f"{db}_order"
    res = _restore(pg_server, env, bid, target, created, "--table", "My Schema.Order")
    assert res.returncode == 0, res.stderr.decode()
    assert json.loads(res.stdout)["rows_verified"] == 5
    with pg_server.connect(target) as conn:
        assert _tables(conn) == {("My Schema", "Order")}
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_constraint WHERE connamespace = '\"My Schema\"'::regnamespace"
            ).fetchone()[0]
            == 1
        )


def test_quoted_spelling_and_both_tables_bring_the_foreign_key(nasty, pg_server):
    env, bid, db, created = nasty
    target = f"{db}_both"
    res = _restore(
        pg_server, env, bid, target, created, "--table", '"My Schema"."Order Items"', "--table", "My Schema.Order"
    )
    assert res.returncode == 0, res.stderr.decode()
    assert json.loads(res.stdout)["tables_verified"] == 2
    with pg_server.connect(target) as conn:
        fk = conn.execute("SELECT conname FROM pg_constraint WHERE contype = 'f'").fetchall()
        assert fk == [("Order Items order fk",)]


def test_schema_with_a_space(nasty, pg_server):
    env, bid, db, created = nasty
    target = f"{db}_schema"
    res = _restore(pg_server, env, bid, target, created, "--schema", "My Schema")
    assert res.returncode == 0, res.stderr.decode()
    assert json.loads(res.stdout)["tables_verified"] == 2
    with pg_server.connect(target) as conn:
        assert _tables(conn) == {("My Schema", "Order"), ("My Schema", "Order Items")}
        assert (
            conn.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'My Schema'").fetchone()[0]
            == '"App User"'
        )


def test_quotes_dots_dashes_type_words_non_ascii_and_line_breaks(nasty, pg_server):
    env, bid, db, created = nasty
    target = f"{db}_odd"
    args = [f"--table={spec}" for spec in ODD_TABLES]
    res = _restore(pg_server, env, bid, target, created, *args)
    assert res.returncode == 0, res.stderr.decode()
    report = json.loads(res.stdout)
    assert report["tables_verified"] == len(ODD_TABLES) and not report["notes"], report
    with pg_server.connect(target) as conn:
        assert _tables(conn) == {(s, t) for s, t, _ in ODD_TABLES.values()}
        for schema, table, rows in ODD_TABLES.values():
            quoted = '"{}"."{}"'.format(schema.replace('"', '""'), table.replace('"', '""'))
            assert conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0] == rows, (schema, table)
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = '-dash'").fetchone()[0]
        assert owner == "-dash"


def test_ambiguous_dotted_spelling_is_refused_and_quotes_settle_it(nasty, pg_server):
    """ "a.b.c.d" is "a.b"."c.d" or "a"."b.c.d": with both in the backup, seedvault asks for quotes."""
    env, _, db, created = nasty
    with pg_server.connect(db) as conn:
        conn.execute('CREATE SCHEMA a; CREATE TABLE a."b.c.d" (id int)')
    res = run_cli(["backup", "postgres", "--dsn", _dsn(pg_server, db), "--json"], env, check=True)
    bid = json.loads(res.stdout)["id"]
    res = _restore(pg_server, env, bid, f"{db}_amb", created, "--table", "a.b.c.d")
    assert res.returncode == 2 and res.stderr.count(b"\n") == 1, res.stderr
    assert b"ambiguous" in res.stderr and b'"a.b"."c.d"' in res.stderr and b'"a"."b.c.d"' in res.stderr
    res = _restore(pg_server, env, bid, f"{db}_amb", created, "--table", '"a"."b.c.d"')
    assert res.returncode == 0, res.stderr.decode()
    with pg_server.connect(f"{db}_amb") as conn:
        assert _tables(conn) == {("a", "b.c.d")}


def test_a_listing_longer_than_64_kib(local_repo, pg_server, pg_db):
    """The TOC listing of a database with many tables is far longer than a child's captured stderr tail."""
    with pg_server.connect(pg_db) as conn:
        conn.execute(
            "DO $$ BEGIN FOR i IN 1..900 LOOP"
            " EXECUTE format('CREATE TABLE %I (id int PRIMARY KEY, v text)', 'table_number_' || lpad(i::text, 4, '0'));"
            " END LOOP; END $$"
        )
        conn.execute("INSERT INTO table_number_0001 SELECT g, 'x' FROM generate_series(1, 11) g")
    env = dict(local_repo.env, **pg_server.env())
    res = run_cli(["backup", "postgres", "--dsn", _dsn(pg_server, pg_db), "--json"], env, check=True)
    bid = json.loads(res.stdout)["id"]
    target = f"{pg_db}_first"
    try:
        res = run_cli(
            ["restore", "postgres", bid, "--target-dsn", _dsn(pg_server, target), "--table", "table_number_0001"],
            env,
        )
        assert res.returncode == 0, res.stderr.decode()
        with pg_server.connect(target) as conn:
            assert conn.execute("SELECT count(*) FROM table_number_0001").fetchone()[0] == 11
            assert _tables(conn) == {("public", "table_number_0001")}
    finally:
        pg_server.drop_database(target)


# --- the parser on its own: the archive's own TOC and the text fallback agree ------------------------------
def _listing_and_archive(pg_server, db: str, pg_dump: str = "pg_dump", pg_restore: str = "pg_restore"):
    import os
    import subprocess

    env = dict(os.environ, **pg_server.env())
    dump = subprocess.run(
        [pg_dump, "--format=custom", "--compress=0", f"--dbname={pg_server.conninfo(db)}"],
        env=env,
        capture_output=True,
        check=True,
    ).stdout
    listing = subprocess.run([pg_restore, "--list"], input=dump, capture_output=True, check=True).stdout.decode()
    pieces = (dump[i : i + 1000] for i in range(0, len(dump), 1000))  # the TOC spans many pieces
    return listing, toc.read_archive(pieces)


def _bindirs() -> list[str]:
    """pg_dump/pg_restore of every major at hand (each writes its own archive version)."""
    from seedvault.sources.postgres.binaries import pgserver_bindir, system_majors

    dirs = [f"/usr/lib/postgresql/{m}/bin" for m in system_majors()]
    wheel = pgserver_bindir()
    return dirs + ([str(wheel)] if wheel else [])


def test_archive_toc_matches_pg_restore_list_and_the_fallback_agrees(nasty, pg_server):
    """Every pg_dump at hand (each writes its archive version): the archive's TOC read by seedvault gives
    exactly the lines pg_restore --list prints, and the text fallback reads the same entries from them."""
    _, _, db, _ = nasty
    with pg_server.connect(db) as conn:
        meta = tables(conn.cursor(), InspectOptions())
    seen_versions = set()
    for bindir in _bindirs():
        listing, archive = _listing_and_archive(pg_server, db, f"{bindir}/pg_dump", f"{bindir}/pg_restore")
        seen_versions.add(archive.version)
        exact = toc.parse(listing, archive=archive, tables_meta=meta)
        assert exact and all(e.exact for e in exact)
        by_tag = {(e.desc, e.schema, e.tag): e for e in exact}
        assert ("TABLE", "public", "line\nbreak") in by_tag  # --list prints the line break as a space
        assert by_tag[("TABLE", "My Schema", "Order Items")].owner == "App User"
        assert by_tag[("TABLE", "DATA", "x y")].owner == "postgres"
        assert by_tag[("FK CONSTRAINT", "My Schema", "Order Items Order Items order fk")].owner == "App User"
        # Without the archive's TOC: the same reading from the text and the backup's table list.
        guessed = toc.parse(listing, archive=None, tables_meta=meta)
        assert [(e.dump_id, e.desc, e.schema) for e in guessed] == [(e.dump_id, e.desc, e.schema) for e in exact]
        for g, e in zip(guessed, exact, strict=True):
            if e.desc in ("TABLE", "TABLE DATA", "SCHEMA", "CONSTRAINT", "FK CONSTRAINT", "INDEX", "SEQUENCE"):
                assert (g.tag, g.owner) == (e.tag, e.owner), (g, e)
    assert len(seen_versions) >= 1


FALLBACK_LINES = [
    # line, (desc, schema, tag, owner) -- tables known from the backup: public."TABLE DATA", "DATA"."x y",
    # "My Schema"."Order Items", public."-dash"
    ("219; 1259 16402 TABLE public TABLE DATA postgres", ("TABLE", "public", "TABLE DATA", "postgres")),
    ("3375; 0 16402 TABLE DATA public TABLE DATA postgres", ("TABLE DATA", "public", "TABLE DATA", "postgres")),
    ("220; 1259 16406 TABLE DATA x y postgres", ("TABLE", "DATA", "x y", "postgres")),
    ("3376; 0 16406 TABLE DATA DATA x y postgres", ("TABLE DATA", "DATA", "x y", "postgres")),
    ("217; 1259 16389 TABLE My Schema Order Items App User", ("TABLE", "My Schema", "Order Items", "App User")),
    ("221; 1259 16409 TABLE public -dash -dash", ("TABLE", "public", "-dash", "-dash")),
    ("6; 2615 16387 SCHEMA - My Schema App User", ("SCHEMA", None, "My Schema", "App User")),
    ("7; 2615 16405 SCHEMA - DATA postgres", ("SCHEMA", None, "DATA", "postgres")),
    ("3560; 0 0 ENCODING - ENCODING ", ("ENCODING", None, "ENCODING", "")),
    (
        "3227; 2606 16395 CONSTRAINT My Schema Order Items Order Items_pkey App User",
        ("CONSTRAINT", "My Schema", "Order Items Order Items_pkey", "App User"),
    ),
    (
        '3386; 0 0 COMMENT My Schema TABLE "Order Items" App User',
        ("COMMENT", "My Schema", 'TABLE "Order Items"', "App User"),
    ),
]


@pytest.mark.parametrize(("line", "want"), FALLBACK_LINES)
def test_text_fallback_splits_lines_with_the_backups_table_list(line, want):
    meta = [
        {"schema": "public", "name": "TABLE DATA"},
        {"schema": "DATA", "name": "x y"},
        {"schema": "public", "name": "-dash"},
        {
            "schema": "My Schema",
            "name": "Order Items",
            "dependents": {"constraint": ["Order Items_pkey"], "sequence": ["Order Items_id_seq"]},
        },
    ]
    (entry,) = toc.parse(line + "\n", archive=None, tables_meta=meta)
    assert (entry.desc, entry.schema, entry.tag, entry.owner) == want
    assert not entry.exact
