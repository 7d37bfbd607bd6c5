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
from pathlib import Path

TRAINING_COMMANDS = ("data", "train", "export", "eval")
INSTALL_HINT = (
    "cpc-embed {cmd}: needs the `train` extra (torch); install it with "
    "pip install 'cpc-embed[train]' (or `make test`, which does)"
)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP API")
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--log-level", default="info")


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="bulk-embed a folder into a collection (no server; stop any server on the data dir)",
        description="Embed every file of DIR into COLLECTION (ids: paths relative to DIR). "
        "Resumable: files already stored are skipped. A running server does not see what this "
        "writes, so the command refuses to run while one uses the data folder.",
    )
    p.add_argument("collection", metavar="COLLECTION", help="created when it does not exist")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="folder of files")
    p.add_argument(
        "--metadata",
        type=Path,
        metavar="CSV",
        help="a `path` (or `id`) column plus metadata columns (default: DIR/manifest.csv if any)",
    )
    p.add_argument(
        "--model",
        help="bundle name (default: the collection's model, or the "
        "default bundle of the files' modality)",
    )
    p.add_argument("--data-dir", type=Path, help="where collections live (default: CPC_DATA_DIR)")
    p.add_argument("--models-dir", type=Path, help="bundles folder (default: CPC_MODELS_DIR)")
    p.add_argument("--batch", type=int, default=32, help="files per batch and transaction")
    p.add_argument("--index", choices=("flat", "ivf"), default="flat", help="for a new collection")
    p.add_argument(
        "--force",
        action="store_true",
        help="write even if a server uses the data dir (then restart the server)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpc-embed", description="Learn and serve CPC embeddings of audio, images and text."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_index(sub)
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
    if args.command == "index":
        from service.indexer import main as index_main

        return index_main(args)
    from training.cli import run_training_command

    return run_training_command(args)


if __name__ == "__main__":
    sys.exit(main())
