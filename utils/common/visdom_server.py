"""Start a Visdom server whose web page works without a network.

``python -m utils.common.visdom_server --port 8097`` runs visdom's own server
(``visdom.server.run_server.main``) without its download step: the page's scripts, styles
and fonts must already be in visdom's ``static/`` folder, installed from the npm registry by
``python -m utils.common.visdom_assets`` (``scripts/setup_env.sh`` does it). Missing assets
stop it with one line that says how to install them, instead of a page that stays blank.
Environments are saved to and reloaded from ``--env_path``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from utils.common.cli import UsageError, make_parser, run_command
from utils.common.visdom_assets import missing_assets, static_dir

PROG = "utils.common.visdom_server"


def visdom_argv(
    port: int, hostname: str, env_path: Path, bind_local: bool = False, logging_level: str = "INFO"
) -> list[str]:
    """The command line of ``visdom.server.run_server.main`` for these settings."""
    argv = [
        "visdom",
        "-port",
        str(port),
        "--hostname",
        hostname,
        "-env_path",
        str(env_path),
        "-logging_level",
        logging_level,
    ]
    return argv + (["-bind_local"] if bind_local else [])


def _main(argv: Sequence[str] | None = None) -> int:
    p = make_parser(PROG, __doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=8097, help="port to listen on")
    p.add_argument(
        "--hostname", default="localhost", help="host name printed in the page's address"
    )
    p.add_argument(
        "--env_path",
        type=Path,
        default=Path("output/visdom"),
        help="folder of the saved environments (created if absent)",
    )
    p.add_argument(
        "--bind_local", action="store_true", help="accept connections from this machine only"
    )
    p.add_argument("--logging_level", default="INFO", help="logging level of the server")
    a = p.parse_args(argv)
    if not 0 < a.port < 65536:
        raise UsageError(f"--port {a.port}: not a port number")
    missing = missing_assets()
    if missing:
        raise UsageError(
            f"visdom's page assets are missing from {static_dir()} ({len(missing)} files, e.g. "
            f"{missing[0]}): install them with `python -m utils.common.visdom_assets` "
            "(needs registry.npmjs.org once) or `bash scripts/setup_env.sh`"
        )
    try:
        a.env_path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--env_path {a.env_path}: {e}") from e
    from visdom.server.run_server import main as visdom_main

    sys.argv = visdom_argv(a.port, a.hostname, a.env_path, a.bind_local, a.logging_level)
    try:
        visdom_main()
    except OSError as e:  # the port is taken, the address cannot be bound
        raise UsageError(f"--port {a.port}: cannot listen: {e}") from e
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(PROG, _main, argv)


if __name__ == "__main__":
    sys.exit(main())
