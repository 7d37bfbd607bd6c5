"""The `cpc-embed data KIND --out DIR` subcommand: build a labelled corpus with its manifest.

Synthetic or generated: speech, text (the fortunes), images. Real data from
Debian packages: voices (recorded speakers), fashion (Fashion-MNIST photos),
manpages (Linux man pages by section).

Importing this module only declares arguments; the builders are imported when
the command runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from training.corpora import CorpusError

logger = logging.getLogger(__name__)

KINDS = ("speech", "text", "images", "voices", "fashion", "manpages")


def add_data_command(sub: argparse._SubParsersAction) -> None:
    """Register `data` on the `cpc-embed` subparsers."""
    p = sub.add_parser(
        "data",
        help="build a labelled corpus (speech, voices, text, manpages, images, fashion) "
        "with its manifest.csv",
    )
    p.add_argument("kind", choices=KINDS, help="which corpus to build")
    p.add_argument("--out", required=True, type=Path, help="corpus folder to write")
    p.add_argument("--seed", type=int, default=0, help="same seed, same corpus (default 0)")
    p.add_argument("--speakers", type=int, default=24, help="speech: speakers (default 24)")
    p.add_argument(
        "--utterances", type=int, default=40, help="speech: utterances per speaker (default 40)"
    )
    p.add_argument("--workers", type=int, default=2, help="speech: parallel espeak-ng processes")
    p.add_argument(
        "--per-class",
        type=int,
        help="images: images per class (default 200); fashion: at most N per class and split "
        "(default: all)",
    )
    p.add_argument("--size", type=int, default=64, help="images: side in pixels (default 64)")
    p.add_argument("--no-digits", action="store_true", help="images: skip the 8x8 digits set")
    p.add_argument(
        "--src",
        type=Path,
        help="text: a folder of .txt files (label = parent folder) to use "
        "instead of the fortune quotes; voices: a folder of speaker folders to use "
        "instead of the packages; fashion: the folder of the IDX files; manpages: a folder "
        "of manN/*.N[.gz] pages",
    )
    p.add_argument(
        "--min-per-category", type=int, default=40, help="text: drop smaller fortune categories"
    )
    p.add_argument("--max-per-category", type=int, help="text: cap quotes per fortune category")
    p.add_argument(
        "--max-words",
        type=int,
        default=400,
        help="manpages: words kept after the NAME line (default 400; 0: the whole page)",
    )
    p.add_argument(
        "--sources",
        default="asterisk",
        help="voices: comma-separated packages to take speakers from: asterisk (default), "
        "ktuberling, klettres",
    )
    p.add_argument(
        "--min-files", type=int, default=100, help="voices: fewest recordings for a speaker"
    )


def _build(args: argparse.Namespace) -> Path:
    if args.kind == "speech":
        from training.corpora.speech import build_speech

        return build_speech(
            args.out,
            speakers=args.speakers,
            utterances_per_speaker=args.utterances,
            seed=args.seed,
            workers=args.workers,
        )
    if args.kind == "images":
        from training.corpora.images import build_images

        return build_images(
            args.out,
            per_class=200 if args.per_class is None else args.per_class,
            size=args.size,
            seed=args.seed,
            digits=not args.no_digits,
        )
    if args.kind == "voices":
        from training.corpora.voices import build_voices, folder_source, sources_named

        names = [s.strip() for s in args.sources.split(",") if s.strip()]
        sources = [folder_source(args.src)] if args.src else sources_named(names)
        return build_voices(args.out, sources=sources, seed=args.seed, min_files=args.min_files)
    if args.kind == "fashion":
        from training.corpora.fashion import FASHION_DIR, build_fashion

        return build_fashion(args.out, per_class=args.per_class, src=args.src or FASHION_DIR)
    if args.kind == "manpages":
        from training.corpora.manpages import build_manpages

        return build_manpages(
            args.out, seed=args.seed, max_words=args.max_words or None, src=args.src
        )
    from training.corpora.text import build_fortunes, build_text_folder

    if args.src is not None:
        return build_text_folder(args.src, args.out, seed=args.seed)
    return build_fortunes(
        args.out,
        seed=args.seed,
        min_per_category=args.min_per_category,
        max_per_category=args.max_per_category,
    )


def run_data_command(args: argparse.Namespace) -> int:
    """Build the corpus `args` asks for and log a one-line summary; 1 on a `CorpusError`."""
    from training.corpora.manifest import read_manifest, summarize

    start = time.perf_counter()
    try:
        out = _build(args)
    except CorpusError as exc:
        sys.stderr.write(f"cpc-embed data: error: {exc}\n")
        return 1
    summary = summarize(args.kind, out, read_manifest(out))
    logger.info("%s (%.1f s)", summary, time.perf_counter() - start)
    return 0
