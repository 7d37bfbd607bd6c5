"""The `cpc-embed` command line.

`serve` and `index` live in the service; `data`, `train`, `export` and `eval`
live in the training package and are imported only when called, so a serving
install never loads torch. Without torch those subcommands say how to install
it, in one line, and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

TRAINING_COMMANDS = ("data", "train", "export", "eval")
INSTALL_HINT = (
    "cpc-embed {cmd}: needs the `train` extra (torch); install it with "
    "pip install 'cpc-embed[train]' (or `make test`, which does)"
)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP API")
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    p.add_argument("--log-level", default="info")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpc-embed", description="Learn and serve CPC embeddings of audio, images and text."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    from training.cli import add_training_commands  # argument parsing only: no torch

    add_training_commands(sub)
    return parser


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAINING_COMMANDS and not torch_available():
        sys.stderr.write(INSTALL_HINT.format(cmd=argv[0]) + "\n")
        return 2
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    from training.cli import run_training_command

    return run_training_command(args)


if __name__ == "__main__":
    sys.exit(main())
