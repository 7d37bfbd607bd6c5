"""bench.peer_cpc without the reference: its summary, its Markdown, and its argument checks.

Timing the real steps takes minutes and a CPC_audio checkout; see docs/performance.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import peer_cpc
from bench.machine import machine_info


def test_summary_and_markdown_report_both_ratios_and_the_targets() -> None:
    times = {
        "reference-fp32": [6.0, 12.0, 6.0],  # the load doubled in round 2
        "ours-sampled-fp32": [1.0, 2.0, 1.5],
        "ours-sampled-bf16": [0.5, 1.0, 0.5],
        "ours-all-fp32": [1.0, 1.0, 1.0],
        "ours-all-bf16": [0.5, 0.5, 0.5],
    }
    first_loss = dict.fromkeys(times, 4.86)
    rows = {r["variant"]: r for r in peer_cpc.summarise(times, first_loss)}
    assert rows["reference-fp32"]["vs_reference_fp32"] == 1.0
    assert rows["ours-sampled-fp32"]["step_s_median"] == 1.5
    assert rows["ours-sampled-fp32"]["vs_reference_fp32"] == 4.0  # 6 / 1.5
    assert rows["ours-sampled-fp32"]["vs_reference_fp32_per_round_median"] == 6.0  # 6, 6, 4
    assert rows["ours-sampled-bf16"]["vs_reference_fp32"] == 12.0
    report = {
        "machine": machine_info(),
        "torch_threads": 2,
        "reference": {"revision": "abc123"},
        "config": {
            "batch": 8,
            "window": 20480,
            "channels": 512,
            "context": 256,
            "steps_k": 12,
            "negatives": 128,
        },
        "rounds": 3,
        "warmup": 1,
        "results": list(rows.values()),
        "targets": peer_cpc.TARGETS,
        "load_average_per_round": [[0.5, 0.6, 0.7], [1.5, 0.8, 0.7], [0.9, 0.8, 0.7]],
        "load_average_after": [0.8, 0.7, 0.7],
        "note": "a note",
    }
    text = peer_cpc.to_markdown(report)
    assert "| facebookresearch/CPC_audio, fp32 | 6.000 | 6.000 | 1.00x | 1.00x | 4.86 |" in text
    assert "4.00x (the lower figure), target 4x: met" in text
    assert "12.00x (the lower figure), target 10x: met" in text
    assert "0.50 to 1.50" in text and "abc123" in text


def test_the_reference_must_be_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        peer_cpc.main(["--reference", str(tmp_path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
