"""Training curves: a CSV row per logged step and a PNG of loss, accuracy per k and MI bound."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)
CURVES_CSV = "curves.csv"
CURVES_PNG = "curves.png"


class CurveWriter:
    """Appends rows to RUN_DIR/curves.csv; on resume drops rows past the checkpoint's step."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = run_dir / CURVES_CSV
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= resume_step]
        self._rewrite()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._rewrite()

    def _rewrite(self) -> None:
        keys: list[str] = []
        for row in self.rows:
            keys.extend(k for k in row if k not in keys)
        with open(self.path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys or ["step"])
            writer.writeheader()
            writer.writerows(self.rows)

    def plot(self) -> Path | None:
        """Draw RUN_DIR/curves.png; a missing matplotlib only costs the picture."""
        if not self.rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(key: str) -> tuple[list[int], list[float]]:
            pts = [
                (int(r["step"]), float(r[key])) for r in self.rows if r.get(key) not in (None, "")
            ]
            return [p[0] for p in pts], [p[1] for p in pts]

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for key in ("loss", "val_loss"):
            axes[0].plot(*series(key), label=key)
        axes[0].set_title("InfoNCE loss")
        acc_keys = sorted(
            (k for k in self.rows[-1] if k.startswith("acc_k")), key=lambda k: int(k[5:])
        )
        for key in acc_keys:
            axes[1].plot(*series(key), label=f"k={key[5:]}")
        axes[1].set_title("prediction accuracy per k")
        axes[2].plot(*series("mi_bound"), label="log N − L")
        axes[2].set_title("mutual-information bound (nats)")
        for ax in axes:
            ax.set_xlabel("step")
            ax.legend(fontsize="small")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.path.with_name(CURVES_PNG)
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return out
