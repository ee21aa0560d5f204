"""Connection settings for PostgreSQL: DSNs without passwords, passwords only through the environment.

A DSN on a command line is visible to every local user (``ps``), so seedvault refuses one that carries a
password. Passwords come from a Prefect block (handed over in memory), ``PGPASSFILE``/``~/.pgpass``, or
``PGPASSWORD`` in seedvault's own environment; child processes (pg_dump, pg_restore, psql) get them
only in their environment, never in argv.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from seedvault import process
from seedvault.errors import ConfigError, DatabaseRefused, DatabaseUnreachable


@dataclass(frozen=True)
class PgTarget:
    """Where a database is: conninfo parameters (never a password) plus an optional in-memory password."""

    params: dict[str, str]
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_dsn(cls, dsn: str, *, password: str | None = None) -> PgTarget:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise ConfigError("invalid PostgreSQL DSN (expected postgresql://user@host:port/db or key=value)") from None
        if "password" in params:
            raise ConfigError(
                "the DSN contains a password; seedvault refuses passwords on command lines",
                hint="use PGPASSFILE/~/.pgpass, PGPASSWORD in the environment, or the Prefect target block",
            )
        if not params.get("dbname"):
            raise ConfigError("the DSN names no database (add /dbname or dbname=...)")
        process.register_secret(password)
        return cls({k: str(v) for k, v in params.items()}, password)

    @property
    def dbname(self) -> str:
        return self.params["dbname"]

    def with_db(self, dbname: str) -> PgTarget:
        return replace(self, params={**self.params, "dbname": dbname})

    def conninfo(self) -> str:
        """The conninfo for child processes' ``--dbname``: no password, ever."""
        return make_conninfo("", **self.params)

    def display(self) -> str:
        p = self.params
        return f"{p.get('user', '')}@{p.get('host', 'local socket')}:{p.get('port', '5432')}/{p['dbname']}"

    def child_env(self) -> dict[str, str]:
        """Extra environment for pg_dump/pg_restore: the password (if we hold one) and no prompting."""
        env = {"PGCONNECT_TIMEOUT": self.params.get("connect_timeout", "10")}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def connect(self, *, autocommit: bool = True, dbname: str | None = None) -> psycopg.Connection:
        params = dict(self.params)
        if dbname:
            params["dbname"] = dbname
        params.setdefault("connect_timeout", "10")
        params.setdefault("application_name", "seedvault")
        try:
            return psycopg.connect(make_conninfo("", **params), password=self.password, autocommit=autocommit)
        except psycopg.OperationalError as exc:
            detail = _first_line(exc)
            where = self.with_db(params["dbname"]).display()
            if _REFUSED_RE.search(detail):
                raise DatabaseRefused(f"PostgreSQL {where} refused the connection: {detail}") from None
            raise DatabaseUnreachable(f"cannot connect to PostgreSQL {where}: {detail}") from None


# libpq reports connection failures without an SQLSTATE; these server answers are permanent (retrying a wrong
# password or a missing database cannot help), unlike a refused TCP connection or a server starting up.
_REFUSED_RE = re.compile(
    r"password authentication failed|authentication failed for user|no password supplied|"
    r"no pg_hba\.conf entry|(database|role) \"[^\"]*\" does not exist|permission denied for database"
)


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[0].rsplit("failed: ", 1)[-1]
    return line.replace("FATAL:  ", "").strip()
