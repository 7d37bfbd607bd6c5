"""The `cpc-embed eval` command and its report: eval.json, eval.png, bundle metrics.

Importing this module loads neither torch nor matplotlib; `run_eval_command`
imports `training.evaluate` (torch, onnxruntime, scikit-learn) when it runs.
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
    "cpc_encoder": "CPC encoder z",
    "random_init": "random-weight CPC c",
    "baseline_mfcc": "MFCC statistics",
    "baseline_pixels": "raw pixels",
    "baseline_tfidf": "TF-IDF",
    "majority": "majority class",
    "chance": "chance",
}
REFERENCES = ("chance", "majority")


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
    names = [n for n in results if n not in REFERENCES] + [n for n in REFERENCES if n in results]
    values = [results[n] for n in names]
    colours = [
        "#1f77b4" if n.startswith("cpc_") else "#9e9e9e" if n in REFERENCES else "#ff7f0e"
        for n in names
    ]
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(names) + 1.4))
    bars = ax.barh([LABELS.get(n, n) for n in names], values, color=colours)
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
    from training.evaluate import evaluate

    is_bundle = (args.model / BUNDLE_FILE).is_file()
    if args.update_bundle and not is_bundle:
        raise ValueError(
            f"--update-bundle needs a bundle folder; {args.model} has no {BUNDLE_FILE}"
        )
    report = evaluate(
        args.model, args.data, quantized=args.quantized, max_per_split=args.max_per_split
    )
    json_path, png_path = write_report(report, args.out or args.model)
    logger.info(
        "accuracies: %s",
        ", ".join(f"{k} {v:.3f}" for k, v in report["results"].items()),
    )
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
