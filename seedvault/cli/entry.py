"""The ``seedvault`` console script.

``wal-push``/``wal-fetch`` first try a running archiver daemon through :mod:`seedvault.sources.postgres.wal.client`,
which imports only the standard library, then the direct path (:mod:`seedvault.sources.postgres.wal.direct`), which
imports the engine but not typer: PostgreSQL starts one process per WAL file, and imports are a large
part of such a process's cost. Everything else (and ``--help``) runs the full CLI.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if "wal-push" in argv or "wal-fetch" in argv:
        from seedvault.sources.postgres.wal.client import fast_main

        code = fast_main(argv)
        if code is None:  # no daemon: the direct path, still without the CLI framework
            from seedvault.sources.postgres.wal.direct import main as direct_main

            code = direct_main(argv)
        if code is not None:
            sys.stdout.flush()
            raise SystemExit(code)
    from seedvault.cli.app import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
