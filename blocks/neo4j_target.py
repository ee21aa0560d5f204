"""The Neo4j block: where the database is, how neo4j-admin is reached, and the Bolt password as a secret.

Two sides, as in the engine (:mod:`seedvault.ops.neo4j_backup`):

* **neo4j-admin** runs where the store files are: locally, or behind ``command_prefix``
  (``docker exec CONTAINER``, ``kubectl exec -n NS POD --``, ``ssh HOST``). Its command lines never hold
  a secret. ``stop_command``/``start_command`` run *locally* (e.g. ``systemctl stop neo4j``, or
  ``docker stop graph1``) and are what an offline Community dump uses to stop the database.
* **Bolt** (optional, ``uri``): counts of nodes per label and relationships per type recorded with every
  backup and compared after a restore, and ``STOP/START DATABASE`` on Enterprise. Without a URI no counts
  are recorded or checked. The password reaches the engine only inside the graph object
  (``seedvault.sources.neo4j.bolt.BoltGraph``), in memory, and is registered with
  :mod:`seedvault.process` so no child process can be started with it in its arguments.

:meth:`Neo4jTarget.graph` is the one place the Bolt side is made (tests replace it with a fake graph, and
:meth:`Neo4jTarget.neo4j_job` also takes one); :meth:`Neo4jTarget.open_job` closes it after use.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from typing import Literal

from prefect.blocks.core import Block
from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from seedvault import process
from seedvault.errors import ConfigError
from seedvault.ops.neo4j_backup import Graph, Neo4jJob
from seedvault.sources.neo4j.admin import Admin, AdminConfig

BOLT_SCHEMES = ("neo4j", "neo4j+s", "neo4j+ssc", "bolt", "bolt+s", "bolt+ssc")


def _split(value: str | None, what: str) -> list[str]:
    try:
        return shlex.split(value or "")
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid command line: {exc}") from None


class Neo4jTarget(Block):
    """One Neo4j server and database to back up or restore into (dump, online backup or Bolt export)."""

    _block_type_name = "Seedvault Neo4j Target"
    _block_type_slug = "seedvault-neo4j-target"
    _description = "Neo4j database for seedvault: neo4j-admin access (prefix, paths, stop/start) and Bolt."
    # A validation error must not echo the input: it holds the secret.
    model_config = ConfigDict(hide_input_in_errors=True)

    uri: str | None = Field(
        default=None,
        description="Bolt URI (neo4j://host:7687) for counts and STOP/START DATABASE; empty: no counts.",
    )
    user: str = Field(default="neo4j", description="Bolt user.")
    password: SecretStr | None = Field(default=None, description="Bolt password (needed with a URI).")
    database: str = Field(default="neo4j", description="Default database (flows may name another).")
    command_prefix: str | None = Field(
        default=None,
        description="Where neo4j-admin runs: empty (here), 'docker exec CONTAINER', "
        "'kubectl exec -n NS POD --' or 'ssh HOST'.",
    )
    neo4j_home: str | None = Field(default=None, description="NEO4J_HOME on the Neo4j side (bin/neo4j-admin).")
    neo4j_conf: str | None = Field(default=None, description="NEO4J_CONF on the Neo4j side, if not under home.")
    staging_dir: str | None = Field(
        default=None, description="Parent of staging directories on the Neo4j side (default /tmp)."
    )
    stop_command: str | None = Field(
        default=None, description="Run here to stop the database for a dump (Community), e.g. 'systemctl stop neo4j'."
    )
    start_command: str | None = Field(default=None, description="Run here to start it again.")
    edition: Literal["auto", "community", "enterprise"] = Field(
        default="auto", description="auto: as neo4j-admin --version reports it."
    )
    backup_from: str | None = Field(
        default=None, description="Online backups (Enterprise): HOST:PORT of the backup server (--from)."
    )

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, value: str | None) -> str | None:
        if not value:
            return None
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in BOLT_SCHEMES:
            raise ValueError(f"the Bolt URI must start with one of {', '.join(s + '://' for s in BOLT_SCHEMES)}")
        if "@" in rest.split("/", 1)[0]:
            # Never echo it: the part before "@" is a password.
            raise ValueError("the Bolt URI contains credentials; put the user and password in their own fields")
        return value

    @field_validator("command_prefix")
    @classmethod
    def _check_prefix(cls, value: str | None) -> str | None:
        words = _split(value, "the command prefix")
        if not words:
            return None
        program = words[0].rsplit("/", 1)[-1]
        if program in ("docker", "podman") and (len(words) < 3 or words[1] != "exec"):
            raise ValueError(f"a {program} prefix is '{program} exec [OPTIONS] CONTAINER'")
        if program == "kubectl" and ("exec" not in words or words[-1] != "--"):
            raise ValueError("a kubectl prefix is 'kubectl exec [-n NAMESPACE] POD [-c CONTAINER] --'")
        if program == "ssh" and len(words) < 2:
            raise ValueError("an ssh prefix is 'ssh [OPTIONS] HOST'")
        return value

    @field_validator("stop_command", "start_command")
    @classmethod
    def _check_command(cls, value: str | None) -> str | None:
        return value if _split(value, "the stop/start command") else None

    @model_validator(mode="after")
    def _check_pairs(self) -> Neo4jTarget:
        if bool(self.stop_command) != bool(self.start_command):
            raise ValueError("set both stop_command and start_command, or neither")
        if self.uri and (self.password is None or not self.password.get_secret_value()):
            raise ValueError("a Bolt URI needs the password")
        return self

    def admin_config(self) -> AdminConfig:
        """The engine's neo4j-admin settings (no secrets)."""
        return AdminConfig.from_strings(
            self.command_prefix,
            neo4j_home=self.neo4j_home,
            neo4j_conf=self.neo4j_conf,
            staging_dir=self.staging_dir,
            stop_command=self.stop_command,
            start_command=self.start_command,
        )

    def graph(self, database: str | None = None) -> Graph | None:
        """The Bolt side for ``database``, or None without a URI (the Bolt driver is imported only then)."""
        if not self.uri:
            return None
        if self.password is None:
            raise ConfigError("the Neo4j block has a Bolt URI but no password")
        secret = self.password.get_secret_value()
        process.register_secret(secret)
        from seedvault.sources.neo4j.bolt import BoltGraph

        return BoltGraph(self.uri, self.user, secret, database=database or self.database)

    def neo4j_job(self, database: str | None = None, *, graph: Graph | None = None) -> Neo4jJob:
        """The engine's job for ``database`` (default: the block's); ``graph`` replaces the Bolt side."""
        name = database or self.database
        return Neo4jJob(
            name,
            Admin(self.admin_config()),
            graph=graph if graph is not None else self.graph(name),
            edition=None if self.edition == "auto" else self.edition,
            backup_from=self.backup_from or None,
        )

    @contextlib.contextmanager
    def open_job(self, database: str | None = None, *, graph: Graph | None = None) -> Iterator[Neo4jJob]:
        """:meth:`neo4j_job`, with the Bolt connection closed afterwards (what the flows use)."""
        job = self.neo4j_job(database, graph=graph)
        try:
            yield job
        finally:
            close = getattr(job.graph, "close", None)  # the engine's Graph protocol has no close()
            if callable(close):
                with contextlib.suppress(Exception):
                    close()

    def display(self, database: str | None = None) -> str:
        """Where the database is, for logs and artifacts (never the password)."""
        where = shlex.join(_split(self.command_prefix, "the command prefix")) or "local"
        return f"neo4j {database or self.database} ({where}{', ' + self.uri if self.uri else ''})"
