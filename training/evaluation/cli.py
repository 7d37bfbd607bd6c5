"""The `cpc-embed eval` command and its report: eval.json, eval.png, bundle metrics.

The chart and the logged summary list the per-file accuracies (mean- and
stats-pooled CPC vectors, random weights, the baseline, then chance and
majority) and, for audio, the per-frame ones (hatched, below a dashed line).

Importing this module loads neither torch nor matplotlib; `run_eval_command`
imports `training.evaluation.evaluate` (torch, onnxruntime, scikit-learn) when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from service.bundle import BUNDLE_FILE, load_bundle_spec, write_bundle_spec
from service.errors import CPCError

logger = logging.getLogger(__name__)

REPORT_JSON = "eval.json"
REPORT_PNG = "eval.png"
LABELS = {
    "cpc_context": "CPC context c",
    "cpc_context_stats": "CPC c, mean+std",
    "cpc_encoder": "CPC encoder z",
    "random_init": "random-weight CPC c",
    "random_init_stats": "random-weight c, mean+std",
    "baseline_mfcc": "MFCC statistics",
    "baseline_pixels": "raw pixels",
    "baseline_tfidf": "TF-IDF",
    "majority": "majority class",
    "chance": "chance",
    "cpc_frames": "CPC c_t, one frame",
    "random_init_frames": "random-weight c_t, one frame",
    "baseline_mfcc_frames": "MFCCs, one frame",
}
REFERENCES = ("chance", "majority")
FRAME_SUFFIX = "_frames"  # results scored per audio frame rather than per file


def _split_results(results: dict[str, float]) -> tuple[list[str], list[str]]:
    """Result names scored per file (references last) and those scored per frame."""
    frames = [n for n in results if n.endswith(FRAME_SUFFIX)]
    files = [n for n in results if n not in REFERENCES and n not in frames]
    return files + [n for n in REFERENCES if n in results], frames


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The accuracies as log lines: per file, then per frame with the frame counts."""
    dims: dict[str, int] = report.get("dims", {})
    files, frames = _split_results(report["results"])

    def listed(names: list[str]) -> str:
        return ", ".join(
            f"{n} {report['results'][n]:.3f}" + (f" ({dims[n]}-d)" if n in dims else "")
            for n in names
        )

    lines = [f"file accuracies: {listed(files)}"]
    info = report.get("protocol", {}).get("frames")
    if frames and info:
        lines.append(
            f"frame accuracies ({info['train_frames']} train / {info['test_frames']} test "
            f"frames after {info['context_seconds']:g} s): {listed(frames)}"
        )
    elif info and info.get("skipped"):
        lines.append(f"frame probe skipped: {info['skipped']}")
    return lines


def add_eval_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="linear-probe accuracy of a run or bundle on a labelled folder",
        description=(
            "Freeze the model, embed every labelled file, fit a logistic regression on the "
            "train split and report test accuracy, against random weights and a hand-made "
            "baseline. Labels: DATA/manifest.csv (path,label,split) or class sub-folders."
        ),
    )
    p.add_argument("model", type=Path, metavar="RUN_DIR_OR_BUNDLE")
    p.add_argument("--data", required=True, type=Path, help="labelled folder")
    p.add_argument("--out", type=Path, help="report folder (default: the run or bundle folder)")
    p.add_argument("--max-per-split", type=int, help="at most this many files per split")
    p.add_argument("--quantized", action="store_true", help="use the bundle's quantized model")
    p.add_argument(
        "--update-bundle",
        action="store_true",
        help="copy the accuracies into the bundle's bundle.json (metrics.eval)",
    )


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """A horizontal bar chart of every accuracy, with the numbers on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results: dict[str, float] = report["results"]
    files, frames = _split_results(results)
    names = files + frames
    values = [results[n] for n in names]
    colours = [
        "#1f77b4" if n.startswith("cpc_") else "#9e9e9e" if n in REFERENCES else "#ff7f0e"
        for n in names
    ]
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(names) + 1.4))
    bars = ax.barh([LABELS.get(n, n) for n in names], values, color=colours)
    for bar in bars[len(files) :]:
        bar.set_hatch("//")  # a per-frame accuracy, not a per-file one
    if frames:
        ax.axhline(len(files) - 0.5, color="black", linewidth=0.8, linestyle="--")
    for bar, value in zip(bars, values, strict=True):
        ax.text(
            bar.get_width() + 0.01,
            bar.get_y() + bar.get_height() / 2,
            f"{100 * value:.1f}%",
            va="center",
            fontsize=9,
        )
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    info = report.get("protocol", {}).get("frames")
    if frames and info:
        ax.set_xlabel(
            f"test accuracy\nhatched: per frame after {info['context_seconds']:g} s of context, "
            f"{info['train_frames']} train / {info['test_frames']} test frames",
            fontsize=9,
        )
    else:
        ax.set_xlabel("test accuracy")
    ax.set_title(
        f"{report['modality']} linear probe: {report['num_classes']} classes, "
        f"{report['train_size']} train / {report['test_size']} test files",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write `eval.json` and `eval.png` into `out_dir`; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / REPORT_JSON
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return json_path, plot_report(report, out / REPORT_PNG)


def update_bundle_metrics(bundle_dir: str | Path, report: dict[str, Any]) -> None:
    """Set bundle.json's `metrics["eval"]` to the accuracies and what they were measured on."""
    spec = load_bundle_spec(bundle_dir)
    spec.metrics["eval"] = {
        "results": report["results"],
        "data": report["data"],
        "labels_from": report["labels_from"],
        "num_classes": report["num_classes"],
        "train_size": report["train_size"],
        "test_size": report["test_size"],
        "quantized": report["quantized"],
        "date": report["date"],
    }
    write_bundle_spec(bundle_dir, spec)


def _run(args: argparse.Namespace) -> int:
    from training.evaluation.evaluate import evaluate

    is_bundle = (args.model / BUNDLE_FILE).is_file()
    if args.update_bundle and not is_bundle:
        raise ValueError(
            f"--update-bundle needs a bundle folder; {args.model} has no {BUNDLE_FILE}"
        )
    report = evaluate(
        args.model, args.data, quantized=args.quantized, max_per_split=args.max_per_split
    )
    json_path, png_path = write_report(report, args.out or args.model)
    for line in summary_lines(report):
        logger.info("%s", line)
    logger.info("report written to %s and %s", json_path, png_path)
    if args.update_bundle:
        update_bundle_metrics(args.model, report)
        logger.info("metrics.eval updated in %s", args.model / BUNDLE_FILE)
    return 0


def run_eval_command(args: argparse.Namespace) -> int:
    """Run `eval`; a user error is one line on stderr and exit status 1."""
    from training.data import DataError

    try:
        return _run(args)
    except (CPCError, DataError, ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"cpc-embed eval: error: {' '.join(str(exc).split())}\n")
        return 1
