"""The `cpc-embed` command line.

`serve`, `index`, `check` and `embed-folder` live in the service; `data`, `train`, `export`,
`quantize` and `eval` live in the training package and are imported only when called, so a
serving install never loads torch; without torch they say how to install it and exit 2.
`serve` configures logging first (`service.logging_setup`) and runs uvicorn without its own
logging setup or access log; a SIGTERM drains and exits 0 (SIGINT: 130), as
docs/architecture.md (Serving) describes.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.config import Settings

TRAINING_COMMANDS = ("data", "train", "export", "quantize", "eval")
INSTALL_HINT = (
    "cpc-embed {cmd}: needs the `train` extra (torch); install it with "
    "pip install 'cpc-embed[train]' (or `make test`, which does)"
)


def _vector_poolings() -> tuple[str, ...]:
    """What `--pooling` takes: the poolings that give one vector per file."""
    from service.inference.pooling import VECTOR_POOLINGS

    return VECTOR_POOLINGS


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the HTTP API")
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="API processes (more than 1 needs CPC_COLLECTION_BACKEND=milvus: the embedded "
        "backend keeps the collections inside one process)",
    )


def _add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index",
        help="bulk-embed a folder into a collection (no server; stop any server on the data dir)",
        description="Embed every file of DIR into COLLECTION (ids: paths relative to DIR). "
        "Resumable: files already stored are skipped. A running server does not see what this "
        "writes, so the command refuses to run while one uses the data folder.",
    )
    p.add_argument("collection", metavar="COLLECTION", help="created when it does not exist")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, metavar="DIR", help="folder of files to embed")
    source.add_argument(
        "--vectors",
        type=Path,
        metavar="FILE.npz",
        help="ids and vectors from `cpc-embed embed-folder` (nothing is embedded)",
    )
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
    p.add_argument(
        "--batch",
        type=int,
        help="files (default 32) or, with --vectors, items (default 1024) per transaction",
    )
    p.add_argument("--workers", type=int, help="decoding threads (default: one per core, >= 2)")
    p.add_argument("--index", choices=("flat", "ivf"), default="flat", help="for a new collection")
    p.add_argument(
        "--pooling",
        choices=_vector_poolings(),
        help="for a new collection (default mean, or that of --vectors); an existing "
        "collection keeps its own",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write even if a server uses the data dir (then restart the server)",
    )


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check",
        help="report every damaged file of a data folder (read only; exit 1 on problems)",
        description="Check every collection of DATA_DIR: the SQLite store (SQLite's full "
        "integrity_check), the index snapshot, and what interrupted operations left behind. "
        "Changes nothing, so it may run beside a server. Exit 0: sound; 1: problems; 2: no "
        "such folder.",
    )
    p.add_argument(
        "data_dir", type=Path, nargs="?", metavar="DATA_DIR", help="default: CPC_DATA_DIR"
    )


def _add_embed_folder(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed-folder",
        help="embed every file of a folder offline into a .npz of ids and vectors (resumable)",
        description="Embed every file of DIR with BUNDLE, in this process (no server), into "
        "FILE.npz: `ids` (paths relative to DIR), `vectors` (pooled, L2-normalised c), "
        "`failed_ids`/`failed_reasons` and `meta`. Resumable: a rerun skips what is done. "
        "`cpc-embed index COLLECTION --vectors FILE.npz` loads it into a collection.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder, or a bundle name")
    p.add_argument("data", type=Path, metavar="DIR", help="folder of files")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.npz", help="the output")
    p.add_argument("--models-dir", type=Path, help="bundles folder (default: CPC_MODELS_DIR)")
    p.add_argument("--batch", type=int, default=32, help="files per onnxruntime call")
    p.add_argument("--workers", type=int, help="decoding threads (default: one per core, >= 2)")
    p.add_argument(
        "--shard-size",
        type=int,
        default=2048,
        help="vectors saved per shard (an interruption loses at most this many)",
    )
    p.add_argument(
        "--pooling",
        choices=_vector_poolings(),
        default="mean",
        help="mean (default), last, or stats: mean ⊕ standard deviation over valid steps, "
        "dimension 2·D",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The settings (CPC_* environment) with the command's --data-dir and --models-dir on top."""
    from service.config import Settings

    overrides = {
        name: value
        for name in ("data_dir", "models_dir")
        if (value := getattr(args, name, None)) is not None
    }
    return Settings(**overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpc-embed", description="Learn and serve CPC embeddings of audio, images and text."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_index(sub)
    _add_embed_folder(sub)
    _add_check(sub)
    from training.cli import add_training_commands  # argument parsing only: no torch

    add_training_commands(sub)
    return parser


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


SHUTDOWN_GRACE_S = 5  # beyond CPC_REQUEST_TIMEOUT_S, for the answers to be written


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    """What SIGTERM (0) and SIGINT (130) do outside uvicorn's handling: exit, no traceback."""
    raise SystemExit(0 if signum == signal.SIGTERM else 128 + signum)


def _data_dir_refused(command: str, settings: Settings) -> bool:
    """Whether the data folder cannot take collections: then one line on stderr says why."""
    from service.vectors.storage import data_dir_problem

    problem = data_dir_problem(settings.data_dir)
    if problem is not None:
        sys.stderr.write(f"cpc-embed {command}: {problem}\n")
    return problem is not None


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.config import Settings
    from service.logging_setup import configure_logging

    settings = Settings()
    if args.workers < 1:
        sys.stderr.write("cpc-embed serve: --workers must be 1 or more\n")
        return 2
    if args.workers > 1 and settings.collection_backend != "milvus":
        sys.stderr.write(
            f"cpc-embed serve --workers {args.workers}: the embedded collection backend keeps "
            "the collections inside one process; run one worker, or set "
            "CPC_COLLECTION_BACKEND=milvus so that the processes share them\n"
        )
        return 2
    if args.workers > 1 and settings.milvus_consistency == "Session":
        sys.stderr.write(
            f"cpc-embed serve --workers {args.workers}: CPC_MILVUS_CONSISTENCY=Session only "
            "shows each process its own writes; use Strong (the default) with several workers\n"
        )
        return 2
    if settings.collection_backend == "embedded" and _data_dir_refused("serve", settings):
        return 2
    configure_logging(settings.log_format, args.log_level)
    # uvicorn replaces these while it runs and re-raises the signal once it has drained;
    # they turn that re-raise (or a signal during start-up) into a clean exit.
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGINT, _exit_quietly)
    uvicorn.run(
        "service.api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=math.ceil(settings.request_timeout_s) + SHUTDOWN_GRACE_S,
        workers=args.workers,
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
        settings = settings_from_args(args)
        if _data_dir_refused("index", settings):
            return 2
        from service.offline.index_command import main as index_main

        return index_main(args, settings)
    if args.command == "check":
        from service.offline.check import main as check_main

        return check_main(settings_from_args(args).data_dir)
    if args.command == "embed-folder":
        from service.offline.embed_folder import main as embed_folder_main

        return embed_folder_main(args, settings_from_args(args))
    from training.cli import run_training_command

    return run_training_command(args)


if __name__ == "__main__":
    sys.exit(main())
