"""Logical PostgreSQL backup and restore against a real server (the pg_server fixture)."""

from __future__ import annotations

import json

import pytest

from seedvault.errors import (
    ConfigError,
    DatabaseRefused,
    DatabaseUnreachable,
    RestoreVerificationFailed,
    TargetError,
)
from seedvault.sources.postgres.sample import load_sample
from tests.helpers import run_cli


@pytest.fixture
def sample_db(pg_server, pg_db):
    with pg_server.connect(pg_db) as conn:
        counts = load_sample(conn)
    return pg_db, counts


@pytest.fixture
def pg_env(local_repo, pg_server):
    return dict(local_repo.env, **pg_server.env())


def _dsn(pg_server, db: str) -> str:
    return f"postgresql://{pg_server.user}@{pg_server.host}:{pg_server.port}/{db}"


def _backup(pg_env, pg_server, db, *extra) -> dict:
    res = run_cli(["backup", "postgres", "--dsn", _dsn(pg_server, db), "--json", *extra], pg_env, check=True)
    return json.loads(res.stdout)


def _restore(env, pg_server, backup_id: str, target: str, *extra: str, check: bool = False):
    """``seedvault restore postgres BACKUP --target-dsn <target on pg_server> [extra...]`` through the CLI."""
    argv = ["restore", "postgres", backup_id, "--target-dsn", _dsn(pg_server, target), *extra]
    return run_cli(argv, env, check=check)


def _counts(pg_server, db) -> dict[str, int]:
    with pg_server.connect(db) as conn:
        rows = conn.execute(
            "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname IN ('public', 'telemetry') ORDER BY 1"
        ).fetchall()
        return {r[0]: conn.execute(f"SELECT count(*) FROM {r[0]}").fetchone()[0] for r in rows}


def test_backup_records_snapshot_metadata(pg_env, pg_server, sample_db):
    db, counts = sample_db
    summary = _backup(pg_env, pg_server, db, "--checksums")
    body = json.loads(run_cli(["show", summary["id"], "--json"], pg_env, check=True).stdout)
    src = body["source"]
    assert body["kind"] == "postgres-logical" and [o["name"] for o in body["objects"]] == ["dump", "globals"]
    assert src["server_major"] == pg_server.major and src["snapshot"] and src["database_size"] > 0
    assert "plpgsql" in src["extensions"]
    tables = {f"{t['schema']}.{t['name']}": t for t in src["tables"]}
    assert tables["public.orders"]["rows"] == counts["orders"]
    assert tables["telemetry.readings"]["rows"] == counts["readings"]
    assert all(not t["estimated"] and len(t["sha256"]) == 64 for t in tables.values())
    assert "orders_customer_idx" in tables["public.orders"]["dependents"]["index"]
    assert tables["public.order_items"]["fk_targets"]
    # The manifest never carries the password; the globals object is encrypted like the dump.
    assert pg_server.password not in json.dumps(body)


def test_round_trip_into_new_database_verifies_counts(pg_env, pg_server, sample_db):
    db, _ = sample_db
    summary = _backup(pg_env, pg_server, db, "--checksums")
    target = f"{db}_restored"
    try:
        res = _restore(pg_env, pg_server, summary["id"], target, "--json", check=True)
        report = json.loads(res.stdout)
        assert report["tables_verified"] == 4 and report["checksums_verified"] == 4
        assert _counts(pg_server, target) == _counts(pg_server, db)
        # Refuses to overwrite an existing database without --replace.
        again = _restore(pg_env, pg_server, summary["id"], target)
        assert again.returncode == TargetError.exit_code and b"already exists" in again.stderr
    finally:
        pg_server.drop_database(target)


def test_parallel_restore_spools_and_cleans_up(pg_env, pg_server, sample_db, tmp_path):
    db, _ = sample_db
    summary = _backup(pg_env, pg_server, db)
    target = f"{db}_par"
    spool = tmp_path / "spool"
    spool.mkdir()
    try:
        _restore(pg_env, pg_server, summary["id"], target, "--jobs", "2", "--spool-dir", str(spool), check=True)
        assert _counts(pg_server, target) == _counts(pg_server, db)
        assert list(spool.iterdir()) == [], "the spooled archive must be removed"
    finally:
        pg_server.drop_database(target)


def test_replace_keeps_safety_copy_and_failure_leaves_original(pg_env, pg_server, sample_db):
    db, _ = sample_db
    summary = _backup(pg_env, pg_server, db)
    with pg_server.connect(db) as conn:
        conn.execute("DELETE FROM order_items WHERE order_id > 100")
        conn.execute("INSERT INTO customers (name, email) VALUES ('after', 'after@example.test')")
    damaged = _counts(pg_server, db)
    res = _restore(pg_env, pg_server, summary["id"], db, "--replace", "--json", check=True)
    report = json.loads(res.stdout)
    safety = report["safety_copy"]
    try:
        assert safety.startswith(f"{db}_before_")
        assert _counts(pg_server, safety) == damaged
        restored = _counts(pg_server, db)
        assert restored["public.order_items"] == 6000 and restored["public.customers"] == 200
    finally:
        pg_server.drop_database(safety)


def test_selective_table_restore_brings_indexes_and_constraints(pg_env, pg_server, sample_db):
    db, counts = sample_db
    summary = _backup(pg_env, pg_server, db)
    scratch = f"{db}_one"
    try:
        res = _restore(
            pg_env,
            pg_server,
            summary["id"],
            scratch,
            "--table",
            "public.orders",
            "--table",
            "public.customers",
            check=True,
        )
        assert b"2 tables" in res.stdout
        with pg_server.connect(scratch) as conn:
            tables = {
                r[0]
                for r in conn.execute(
                    "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace"
                )
            }
            assert tables == {"orders", "customers"}
            idx = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'orders'")}
            assert {"orders_pkey", "orders_customer_idx"} <= idx
            cons = {r[0] for r in conn.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'orders'::regclass")}
            assert any(c.endswith("_fkey") for c in cons) and any(c.endswith("_check") for c in cons)
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == counts["orders"]
            # the sequence came along and continues after the restored ids
            new_id = conn.execute("INSERT INTO customers (name, email) VALUES ('n', 'n@x') RETURNING id").fetchone()[0]
            assert new_id == counts["customers"] + 1
        res = _restore(pg_env, pg_server, summary["id"], f"{db}_ts", "--schema", "telemetry")
        if _is_hypertable(pg_server, db, "telemetry.readings"):  # where TimescaleDB is installed
            assert res.returncode == 2 and b"telemetry.readings is a TimescaleDB hypertable" in res.stderr, res.stderr
        else:
            assert res.returncode == 0, res.stderr
            with pg_server.connect(f"{db}_ts") as conn:
                assert conn.execute("SELECT count(*) FROM telemetry.readings").fetchone()[0] == counts["readings"]
    finally:
        pg_server.drop_database(scratch)
        pg_server.drop_database(f"{db}_ts")


def _is_hypertable(pg_server, db: str, table: str) -> bool:
    with pg_server.connect(db) as conn:
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone() is None:
            return False
        schema, name = table.split(".")
        query = (
            "SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_schema = %s AND hypertable_name = %s"
        )
        return conn.execute(query, (schema, name)).fetchone() is not None


PAGILA_LIKE_SQL = """
CREATE SEQUENCE rental_rental_id_seq;
CREATE TABLE rental (
    rental_id integer DEFAULT nextval('rental_rental_id_seq'::regclass) PRIMARY KEY, customer text NOT NULL
);
INSERT INTO rental (customer) SELECT 'c' || g FROM generate_series(1, 40) g;
CREATE TABLE payment (
    payment_id serial, payment_date timestamptz NOT NULL, amount numeric(5, 2) NOT NULL,
    PRIMARY KEY (payment_date, payment_id)
) PARTITION BY RANGE (payment_date);
CREATE TABLE payment_p2022_01 PARTITION OF payment FOR VALUES FROM ('2022-01-01') TO ('2022-02-01');
CREATE TABLE payment_p2022_02 PARTITION OF payment FOR VALUES FROM ('2022-02-01') TO ('2022-03-01')
    PARTITION BY RANGE (payment_date);
CREATE TABLE payment_p2022_02a PARTITION OF payment_p2022_02 FOR VALUES FROM ('2022-02-01') TO ('2022-02-15');
CREATE TABLE payment_p2022_02b PARTITION OF payment_p2022_02 FOR VALUES FROM ('2022-02-15') TO ('2022-03-01');
CREATE INDEX payment_amount_idx ON payment (amount);
INSERT INTO payment (payment_date, amount)
    SELECT timestamptz '2022-01-01' + g * interval '1 hour', g % 100 FROM generate_series(0, 1400) g;
"""


INHERITANCE_SQL = (
    "SELECT c.relname, p.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " JOIN pg_class p ON p.oid = i.inhparent ORDER BY 1, 2"
)


def test_selective_restore_of_a_partitioned_table_brings_every_partition(pg_env, pg_server, pg_db):
    """``--table`` of a partitioned table restores its partitions (nested too); the check counts their rows."""
    with pg_server.connect(pg_db) as conn:
        conn.execute(PAGILA_LIKE_SQL)
        total = conn.execute("SELECT count(*) FROM payment").fetchone()[0]
        inheritance = conn.execute(INHERITANCE_SQL).fetchall()
    assert len(inheritance) == 12, inheritance  # 4 partitions, each with the primary key's and amount's index
    summary = _backup(pg_env, pg_server, pg_db)
    scratch = f"{pg_db}_pay"
    try:
        res = _restore(pg_env, pg_server, summary["id"], scratch, "--table", "public.payment", "--json", check=True)
        report = json.loads(res.stdout)
        assert report["rows_verified"] == total == 1401 and report["tables_verified"] == 5
        with pg_server.connect(scratch) as conn:
            assert conn.execute("SELECT count(*) FROM payment").fetchone()[0] == total
            assert conn.execute("SELECT count(*) FROM ONLY payment_p2022_02b").fetchone()[0] > 0
            # still partitions of it (attached), with the partitioned index on each
            assert conn.execute(INHERITANCE_SQL).fetchall() == inheritance
            conn.execute("INSERT INTO payment (payment_date, amount) VALUES ('2022-01-05', 1)")
    finally:
        pg_server.drop_database(scratch)


def test_selective_restore_of_a_table_whose_default_uses_a_sequence_it_does_not_own(pg_env, pg_server, pg_db):
    with pg_server.connect(pg_db) as conn:
        conn.execute(PAGILA_LIKE_SQL)
    summary = _backup(pg_env, pg_server, pg_db)
    scratch = f"{pg_db}_rent"
    try:
        _restore(pg_env, pg_server, summary["id"], scratch, "--table", "public.rental", check=True)
        with pg_server.connect(scratch) as conn:
            assert conn.execute("SELECT count(*) FROM rental").fetchone()[0] == 40
            new_id = conn.execute("INSERT INTO rental (customer) VALUES ('new') RETURNING rental_id").fetchone()[0]
            assert new_id == 41, "the sequence came with its value"
    finally:
        pg_server.drop_database(scratch)


def test_show_prints_what_the_backup_recorded_of_its_source(pg_env, pg_server, sample_db):
    db, counts = sample_db
    summary = _backup(pg_env, pg_server, db, "--checksums")
    out = run_cli(["show", summary["id"]], pg_env, check=True).stdout.decode()
    assert f"server      PostgreSQL {pg_server.major}." in out and f"database {db}" in out
    assert "extensions  plpgsql" in out
    assert f"public.orders: {counts['orders']} rows (checksum)" in out
    if _is_hypertable(pg_server, db, "telemetry.readings"):
        assert "hypertable  telemetry.readings:" in out and "telemetry.readings: 20000 rows (hypertable" in out


def test_verification_names_differing_tables(pg_env, pg_server, sample_db, local_repo, monkeypatch):
    db, _ = sample_db
    summary = _backup(pg_env, pg_server, db)
    monkeypatch.setenv("PGPASSFILE", str(pg_server.pgpass_file))
    # The restored side is the live database; the manifest's count is altered in memory only.
    from seedvault.ops.postgres_restore import RestoreOptions, _Restore
    from seedvault.sources.postgres.connection import PgTarget

    target = PgTarget.from_dsn(_dsn(pg_server, db))
    job = _Restore(local_repo.repository(), summary["id"], target, RestoreOptions(), None)
    for t in job.source["tables"]:
        if t["name"] == "orders":
            t["rows"] += 1
    with pytest.raises(RestoreVerificationFailed, match=r"public\.orders has 2000 rows, backup had 2001"):
        job.verify(db, None)


def test_clear_errors(pg_env, pg_server, sample_db):
    db, _ = sample_db
    res = run_cli(
        ["backup", "postgres", "--dsn", f"postgresql://postgres:secret@127.0.0.1:{pg_server.port}/{db}"], pg_env
    )
    assert res.returncode == ConfigError.exit_code and b"password" in res.stderr and b"secret" not in res.stderr
    res = run_cli(["backup", "postgres", "--dsn", "postgresql://postgres@127.0.0.1:1/x"], pg_env)
    assert res.returncode == DatabaseUnreachable.exit_code and res.stderr.count(b"\n") == 1
    assert run_cli(["list", "--json"], pg_env, check=True).stdout.strip() == b"[]"  # nothing half-written listed
    res = run_cli(["backup", "postgres", "--dsn", _dsn(pg_server, "no_such_db")], pg_env)
    assert res.returncode == DatabaseRefused.exit_code and b"no_such_db" in res.stderr


def test_failed_restore_leaves_original_untouched(pg_env, pg_server, sample_db, local_repo):
    from seedvault.format import layout

    db, _ = sample_db
    summary = _backup(pg_env, pg_server, db)
    before = _counts(pg_server, db)
    obj = local_repo.root / layout.data_key(summary["id"], "dump")
    blob = bytearray(obj.read_bytes())
    blob[len(blob) // 2] ^= 0x40  # corruption deep inside the dump: pg_restore has already started
    obj.write_bytes(bytes(blob))
    res = _restore(pg_env, pg_server, summary["id"], db, "--replace")
    assert res.returncode != 0 and b"authentication" in res.stderr
    assert _counts(pg_server, db) == before
    with pg_server.connect() as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
    assert not any(n.startswith(f"{db}_sv_") or n.startswith(f"{db}_before_") for n in names)
    res = _restore(pg_env, pg_server, summary["id"], f"{db}_new")
    assert res.returncode != 0
    with pg_server.connect() as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (f"{db}_new",)).fetchone() is None


def test_failing_pg_dump_never_yields_a_backup(pg_env, pg_server, sample_db):
    db, _ = sample_db
    with pg_server.connect(db) as conn:
        conn.execute("DROP ROLE IF EXISTS sv_limited")
        conn.execute("CREATE ROLE sv_limited LOGIN PASSWORD 'limited-pw-1'")
        conn.execute("GRANT SELECT ON customers TO sv_limited")  # but not the other tables
    dsn = f"postgresql://sv_limited@{pg_server.host}:{pg_server.port}/{db}"
    # PGPASSWORD in seedvault's environment is one of the supported password sources.
    res = run_cli(["backup", "postgres", "--dsn", dsn, "--no-globals"], dict(pg_env, PGPASSWORD="limited-pw-1"))
    assert res.returncode != 0 and b"permission denied" in res.stderr, res.stderr
    assert res.stderr.count(b"\n") == 1 and b"limited-pw-1" not in res.stderr
    assert json.loads(run_cli(["list", "--json"], pg_env, check=True).stdout) == []
    with pg_server.connect(db) as conn:
        conn.execute("REVOKE ALL ON customers FROM sv_limited")
        conn.execute("DROP ROLE sv_limited")


def test_with_globals_recreates_roles(pg_env, pg_server, pg_db):
    with pg_server.connect(pg_db) as conn:
        conn.execute("DROP ROLE IF EXISTS sv_app_owner")
        conn.execute("CREATE ROLE sv_app_owner NOLOGIN")
        conn.execute("CREATE TABLE owned (id int PRIMARY KEY)")
        conn.execute("INSERT INTO owned SELECT generate_series(1, 10)")
        conn.execute("ALTER TABLE owned OWNER TO sv_app_owner")
    summary = _backup(pg_env, pg_server, pg_db)
    pg_server.drop_database(pg_db)
    with pg_server.connect() as conn:
        conn.execute("DROP ROLE sv_app_owner")
    target = f"{pg_db}_g"
    try:
        # Without the role, restoring ownership fails, and the half-restored database is removed again.
        res = _restore(pg_env, pg_server, summary["id"], target)
        assert res.returncode == TargetError.exit_code and b"sv_app_owner" in res.stderr
        _restore(pg_env, pg_server, summary["id"], target, "--with-globals", check=True)
        with pg_server.connect(target) as conn:
            owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'owned'").fetchone()[0]
            assert owner == "sv_app_owner"
    finally:
        pg_server.drop_database(target)
        with pg_server.connect() as conn:
            conn.execute("DROP ROLE IF EXISTS sv_app_owner")


def test_database_password_never_leaks(local_repo, pg_server, sample_db, tmp_path):
    db, _ = sample_db
    audit = tmp_path / "audit.jsonl"
    # The password reaches seedvault only as PGPASSWORD in its environment.
    env = dict(
        local_repo.env,
        PGPASSWORD=pg_server.password,
        SEEDVAULT_SPAWN_AUDIT=str(audit),
        PGHOST=pg_server.host,
        PGPORT=str(pg_server.port),
    )
    outputs = []
    res = run_cli(["backup", "postgres", "--dsn", _dsn(pg_server, db), "--json"], env, check=True)
    outputs += [res.stdout, res.stderr]
    bid = json.loads(res.stdout)["id"]
    target = f"{db}_leak"
    try:
        res = _restore(env, pg_server, bid, target, "--json", check=True)
        outputs += [res.stdout, res.stderr]
        res = _restore(env, pg_server, bid, target)  # exists: error
        outputs += [res.stdout, res.stderr]
    finally:
        pg_server.drop_database(target)
    secret = pg_server.password.encode()
    assert all(secret not in out for out in outputs)
    assert audit.exists() and secret not in audit.read_bytes()
    rows = [json.loads(line) for line in audit.read_text().splitlines()]
    assert any(r["argv"][0].endswith("pg_dump") for r in rows)
    for path in local_repo.root.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path
