"""Training curves: a CSV row per logged step and a PNG of loss, accuracy per k and MI bound.

`train` appends a row every `log_every` steps and redraws RUN_DIR/curves.png at every
checkpoint, so the picture follows a run while it trains. Three panels: the InfoNCE loss
(training, and validation where measured), the prediction accuracy for each step ahead k
(one colour per k, from dark for k = 1 to light for the farthest), and the mutual-
information bound log N - L in nats.
"""

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
        try:
            import matplotlib
        except ImportError:
            logger.warning("matplotlib is not installed: %s is not drawn", CURVES_PNG)
            return None

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import BoundaryNorm, ListedColormap

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
        ks = [int(key[5:]) for key in acc_keys]
        viridis = plt.get_cmap("viridis")
        shades = [viridis(0.9 * i / max(1, len(ks) - 1)) for i in range(len(ks))]
        for key, shade in zip(acc_keys, shades, strict=True):
            axes[1].plot(*series(key), color=shade, linewidth=1.2)
        if ks:  # a colour bar, not a legend: a dozen k would cover the curves
            bounds = [k - 0.5 for k in ks] + [ks[-1] + 0.5]
            scale = ScalarMappable(BoundaryNorm(bounds, len(ks)), ListedColormap(shades))
            bar = fig.colorbar(scale, ax=axes[1], ticks=ks, pad=0.02)
            bar.set_label("k (steps ahead)")
        axes[1].set_title("prediction accuracy per k")
        axes[2].plot(*series("mi_bound"), label="log N − L")
        axes[2].set_title("mutual-information bound (nats)")
        for ax in axes:
            ax.set_xlabel("step")
            if ax is not axes[1]:
                ax.legend(fontsize="small")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        out = self.path.with_name(CURVES_PNG)
        fig.savefig(out, dpi=90)
        plt.close(fig)
        return out
