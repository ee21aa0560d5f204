"""Sample data for the demo and the DR drill: a small relational schema plus a time series.

``public``: customers -> orders -> order_items (serial keys, foreign keys, a check constraint, an index,
a trigger keeping ``orders.updated_at``), and ``telemetry.readings``, a time series keyed by
(sensor_id, ts) with a BRIN index, the shape TimescaleDB hypertables have. When the timescaledb
extension is installed and preloaded, ``telemetry.readings`` becomes a hypertable.
"""

from __future__ import annotations

import psycopg

SCHEMA_SQL = """
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers(id),
    total numeric(12, 2) NOT NULL CHECK (total >= 0),
    status text NOT NULL DEFAULT 'new',
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE TABLE order_items (
    order_id bigint NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    line int NOT NULL,
    sku text NOT NULL,
    qty int NOT NULL,
    PRIMARY KEY (order_id, line)
);
CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE SCHEMA telemetry;
CREATE TABLE telemetry.readings (
    sensor_id int NOT NULL,
    ts timestamptz NOT NULL,
    value double precision NOT NULL,
    PRIMARY KEY (sensor_id, ts)
);
CREATE INDEX readings_ts_brin ON telemetry.readings USING brin (ts);
CREATE VIEW telemetry.latest AS SELECT DISTINCT ON (sensor_id) sensor_id, ts, value
    FROM telemetry.readings ORDER BY sensor_id, ts DESC;
"""


def load_sample(conn: psycopg.Connection, *, customers: int = 200, orders: int = 2000, readings: int = 20000) -> dict:
    """Create the sample schema and rows in the connected (empty) database; returns the row counts."""
    with conn.cursor() as cur:
        cur.execute(SCHEMA_SQL)
        cur.execute(
            "INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.test'"
            " FROM generate_series(1, %s) g",
            (customers,),
        )
        cur.execute(
            "INSERT INTO orders (customer_id, total, status) SELECT 1 + (g %% %s), (g %% 997) * 1.25,"
            " (ARRAY['new','paid','shipped'])[1 + g %% 3] FROM generate_series(1, %s) g",
            (customers, orders),
        )
        cur.execute(
            "INSERT INTO order_items SELECT o.id, l, 'SKU-' || (o.id * l % 503), 1 + l"
            " FROM orders o, generate_series(1, 3) l"
        )
        cur.execute(
            "INSERT INTO telemetry.readings SELECT 1 + g %% 20, timestamptz '2026-11-01' + g * interval '15 seconds',"
            " sin(g / 100.0) * 50 + 20 FROM generate_series(1, %s) g",
            (readings,),
        )
        if timescaledb_usable(cur):
            cur.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            cur.execute("SELECT create_hypertable('telemetry.readings', 'ts', migrate_data => true)")
    if not conn.autocommit:
        conn.commit()
    return {"customers": customers, "orders": orders, "order_items": orders * 3, "readings": readings}


def timescaledb_usable(cur: psycopg.Cursor) -> bool:
    """The extension is installed *and* preloaded (CREATE EXTENSION fails on a server that lists it only)."""
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"
        " AND 'timescaledb' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ','))"
    )
    return bool(cur.fetchone()[0])
