"""The ``seedvault`` console script.

``wal-push``/``wal-fetch`` first try a running archiver daemon through :mod:`seedvault.wal.client`,
which imports only the standard library: PostgreSQL starts one process per WAL file, and importing the
full CLI (typer, the engine) is most of such a process's cost. Everything else, and every fallback,
runs the full CLI.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if "wal-push" in argv or "wal-fetch" in argv:
        from seedvault.wal.client import fast_main

        code = fast_main(argv)
        if code is not None:
            sys.stdout.flush()
            raise SystemExit(code)
    from seedvault.cli.app import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
