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


def child_env(extra_env: Mapping[str, str] | None = None, *, drop: Sequence[str] = ()) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra_env or {})
    return env


def spawn(argv: Sequence[str], *, extra_env: Mapping[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    """Start a child; secrets go in ``extra_env`` (never argv). Same keywords as ``subprocess.Popen``."""
    argv = [str(a) for a in argv]
    _check_argv(argv)
    _audit(argv, extra_env)
    return subprocess.Popen(argv, env=child_env(extra_env), **kwargs)


def run(
    argv: Sequence[str], *, extra_env: Mapping[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess:
    argv = [str(a) for a in argv]
    _check_argv(argv)
    _audit(argv, extra_env)
    return subprocess.run(argv, env=child_env(extra_env), **kwargs)
