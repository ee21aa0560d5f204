"""The one module that starts child processes (pg_dump, pg_restore, neo4j-admin, ...).

Why one module: secrets must never reach a child's argument vector (visible to every local user in
``ps`` and ``/proc/<pid>/cmdline``). Every secret seedvault loads is registered here with
:func:`register_secret`; :func:`spawn` refuses to start a child whose arguments contain one (raw, hex,
base64 or URL-encoded), and passes secrets only through the child's environment or a pipe. When
``SEEDVAULT_SPAWN_AUDIT`` names a file, each spawn appends its argv and the *names* of the extra
environment variables to it, so tests can audit every command line seedvault ran.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from seedvault.errors import ConfigError

AUDIT_ENV = "SEEDVAULT_SPAWN_AUDIT"
_SECRETS: set[bytes] = set()


def secret_forms(secret: bytes | str) -> set[str]:
    """The encodings under which a secret could leak: raw, hex, base64 (std/url), URL-quoted."""
    raw = secret.encode() if isinstance(secret, str) else secret
    forms = {raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("=")}
    try:
        text = raw.decode()
        forms |= {text, quote(text, safe="")}
    except UnicodeDecodeError:
        pass
    return {f for f in forms if len(f) >= 6}


def register_secret(secret: bytes | str | None) -> None:
    if secret:
        _SECRETS.add(secret.encode() if isinstance(secret, str) else bytes(secret))


def _check_argv(argv: Sequence[str]) -> None:
    joined = "\x00".join(argv)
    for secret in _SECRETS:
        if any(form in joined for form in secret_forms(secret)):
            raise ConfigError(f"refusing to run {os.path.basename(argv[0])}: a secret would appear in its arguments")


def _audit(argv: Sequence[str], extra_env: Mapping[str, str] | None) -> None:
    path = os.environ.get(AUDIT_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"argv": list(argv), "env": sorted(extra_env or {})}) + "\n")


# What a child started under another identity (the PostgreSQL server) may inherit: nothing secret.
MINIMAL_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR")


def child_env(extra_env: Mapping[str, str] | None = None, *, inherit: bool = True) -> dict[str, str]:
    """The child's environment: ours (or only MINIMAL_ENV when ``inherit`` is false) plus ``extra_env``.

    Servers run as another user get ``inherit=False``: seedvault's environment can hold AWS credentials
    or PGPASSWORD, which that user must not be able to read from /proc/<pid>/environ.
    """
    env = dict(os.environ) if inherit else {k: v for k, v in os.environ.items() if k in MINIMAL_ENV}
    env.update(extra_env or {})
    return env


def spawn(
    argv: Sequence[str], *, extra_env: Mapping[str, str] | None = None, inherit_env: bool = True, **kwargs: Any
) -> subprocess.Popen:
    """Start a child; secrets go in ``extra_env`` (never argv). Same keywords as ``subprocess.Popen``."""
    argv = [str(a) for a in argv]
    _check_argv(argv)
    _audit(argv, extra_env)
    return subprocess.Popen(argv, env=child_env(extra_env, inherit=inherit_env), **kwargs)


def run(
    argv: Sequence[str], *, extra_env: Mapping[str, str] | None = None, inherit_env: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess:
    """Run a child to completion; same rules as :func:`spawn`."""
    argv = [str(a) for a in argv]
    _check_argv(argv)
    _audit(argv, extra_env)
    return subprocess.run(argv, env=child_env(extra_env, inherit=inherit_env), **kwargs)


class _StderrTail:
    """Collect the last bytes of a child's stderr in a thread (a full pipe would block the child)."""

    def __init__(self, stream, limit: int = 65536) -> None:
        import threading

        self._buf = bytearray()
        self._limit = limit
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream) -> None:
        for line in iter(lambda: stream.read(4096), b""):
            self._buf += line
            if len(self._buf) > self._limit:
                del self._buf[: len(self._buf) - self._limit]

    def text(self) -> str:
        self._thread.join(timeout=5)
        return self._buf.decode("utf-8", "replace")


def exit_status(returncode: int) -> str:
    """``exit 1`` or ``killed by signal 9 (SIGKILL)``: Popen's negative codes are signals."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        name = f" ({signal.Signals(-returncode).name})"
    except ValueError:
        name = ""
    return f"killed by signal {-returncode}{name}"


_JAVA_EXCEPTION = re.compile(r"^(?:Caused by: )?[\w.$]+(?:Exception|Error): ")


def error_line(stderr: str, tool: str) -> str:
    """The most useful single line of a tool's stderr (its first error, else its last line).

    A Java stack trace (neo4j-admin --verbose) gives its first message and the first cause's, without the
    exception class names: "Dump failed for databases: 'neo4j': The database is in use. Stop database ...".
    """
    # neo4j-admin 5.x ends every failure with this hint, which would win as "the line with 'error'"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Run with '--verbose'")]
    causes = [_JAVA_EXCEPTION.sub("", ln) for ln in lines if ln.startswith("Caused by: ")]
    thrown = [ln for ln in lines if _JAVA_EXCEPTION.match(ln) and not ln.startswith("Caused by: ")]
    if thrown:  # a stack trace: its preamble (command line, VM arguments) is no error however it reads
        return (_JAVA_EXCEPTION.sub("", thrown[0]) + (f": {causes[0]}" if causes else ""))[:400]
    for ln in lines:
        low = ln.lower()
        if "error" in low or "fatal" in low or "failed" in low:
            return ln[:400]
    return lines[-1][:400] if lines else "no error output"


class ChildReader:
    """A child's stdout as a file-like reader that fails, at end of stream, if the child failed.

    So a dump that dies half-way is seen by the pipeline as an error, not as a short but clean stream.
    """

    def __init__(
        self, argv: Sequence[str], *, error: type[Exception], extra_env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> None:
        self.tool = os.path.basename(str(argv[0]))
        self._error = error
        self.proc = spawn(
            argv,
            extra_env=extra_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            **kwargs,
        )
        self._stderr = _StderrTail(self.proc.stderr)
        self._done = False

    def read(self, n: int = -1) -> bytes:
        data = self.proc.stdout.read(n)
        if not data and not self._done:
            self._done = True
            self.wait()
        return data

    def wait(self) -> None:
        rc = self.proc.wait()
        if rc != 0:
            raise self._error(f"{self.tool} failed ({exit_status(rc)}): {error_line(self._stderr.text(), self.tool)}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class ChildWriter:
    """A child's stdin as a sink; :meth:`finish` closes it and fails if the child failed."""

    def __init__(
        self, argv: Sequence[str], *, error: type[Exception], extra_env: Mapping[str, str] | None = None, **kwargs: Any
    ) -> None:
        self.tool = os.path.basename(str(argv[0]))
        self._error = error
        self.proc = spawn(
            argv, extra_env=extra_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs
        )
        self._output = _StderrTail(self.proc.stdout)
        self.closed_early = False

    def write(self, data: bytes) -> bool:
        """Feed the child; False once it has exited successfully without reading everything.

        (``pg_restore --list`` or ``--use-list`` stop reading once they have what they need.)
        """
        if self.closed_early:
            return False
        try:
            self.proc.stdin.write(data)
            return True
        except BrokenPipeError:
            self.finish()  # raises with the child's own message if it failed
            self.closed_early = True
            return False

    def finish(self) -> str:
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = self.proc.wait()
        out = self._output.text()
        if rc != 0:
            raise self._error(f"{self.tool} failed ({exit_status(rc)}): {error_line(out, self.tool)}")
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
