"""Linear-probe evaluation: the probe, the baselines, pooling, frames, labels, `eval` end to end."""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from service.bundle import AudioPreprocess, load_bundle_spec
from service.preprocess.text import TextTokenizer
from tests.conftest import TOPICS
from tests.training.tiny import LENIENT, tiny_config
from training.data import text_spec
from training.evaluation import evaluate as evaluate_module
from training.evaluation.baselines import mfcc, mfcc_features, pixel_features, tfidf_features
from training.evaluation.cli import add_eval_command, run_eval_command, summary_lines, write_report
from training.evaluation.evaluate import (
    FRAME_KEYS,
    AnyPreprocess,
    ForwardFn,
    embed_inputs,
    evaluate,
    even_rows,
    first_frame_step,
    frame_steps,
    input_reader,
    load_frozen_model,
    pool_steps,
    probe_accuracy,
    random_forward,
    read_labels,
)
from training.export.onnx_export import export_run, preprocess_spec
from training.tokenizer import train_tokenizer
from training.train import train

RESULT_KEYS = {
    "cpc_context",
    "cpc_context_stats",
    "cpc_encoder",
    "random_init",
    "random_init_stats",
    "chance",
    "majority",
}
BASELINES = {"audio": "baseline_mfcc", "image": "baseline_pixels", "text": "baseline_tfidf"}
RATE = 16000


# --- the probe -------------------------------------------------------------------------


def _planted(n: int, classes: int, informative: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    x = rng.standard_normal((n, 51))
    if informative:
        x[:, 17] = 3.0 * y + 0.3 * rng.standard_normal(n)  # one dimension says the class
    return x, np.array([f"class{k}" for k in y])


def test_probe_finds_a_planted_feature() -> None:
    train_x, train_y = _planted(300, 3, True, seed=0)
    test_x, test_y = _planted(200, 3, True, seed=1)
    assert probe_accuracy(train_x, train_y, test_x, test_y) >= 0.95


def test_probe_on_noise_is_near_chance() -> None:
    train_x, train_y = _planted(400, 4, False, seed=2)
    test_x, test_y = _planted(400, 4, False, seed=3)
    assert abs(probe_accuracy(train_x, train_y, test_x, test_y) - 0.25) < 0.1


def test_probe_needs_two_classes() -> None:
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="two classes"):
        probe_accuracy(x, ["a"] * 4, x, ["a", "b", "a", "b"])


# --- the baselines ---------------------------------------------------------------------


def _tone(freq: float, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_mfcc_features_shape_finite_and_pitch_sensitive() -> None:
    low, high = mfcc_features(_tone(200), RATE), mfcc_features(_tone(3000), RATE)
    assert low.shape == (80,) and low.dtype == np.float32
    assert np.isfinite(low).all() and np.isfinite(high).all()
    assert np.linalg.norm(low - high) > 0.1 * np.linalg.norm(low)
    assert mfcc_features(_tone(200), RATE, n_mfcc=13, deltas=False).shape == (26,)
    silent_and_short = mfcc_features(np.zeros(50, np.float32), RATE)  # shorter than a frame
    assert np.isfinite(silent_and_short).all()


def test_pixel_features_shape() -> None:
    img = Image.fromarray(np.zeros((30, 50, 3), np.uint8))
    feats = pixel_features(img)
    assert feats.shape == (16 * 16 * 3,) and feats.dtype == np.float32


def test_tfidf_is_fitted_on_train_only() -> None:
    train_x, test_x, vec = tfidf_features(["the cat sat", "a dog ran"], ["zebra zebra the cat"])
    assert "zebra" not in vec.vocabulary_ and "cat sat" in vec.vocabulary_
    assert train_x.shape[0] == 2 and test_x.shape == (1, train_x.shape[1])
    assert test_x.nnz > 0  # "the", "cat" and "the cat" are known words


# --- embedding ------------------------------------------------------------------------


def tiny_inputs(
    modality: str,
    tmp_path: Path,
    seed: int,
    samples: tuple[int, ...],
    words: list[str],
    sentences: tuple[int, ...],
) -> tuple[ForwardFn, AnyPreprocess, list[np.ndarray]]:
    """A random-weight tiny model, its preprocess spec and prepared inputs of unequal lengths:
    noise clips of `samples` samples, or the first k of `words` for each k in `sentences`."""
    cfg = tiny_config(modality)
    if modality == "audio":
        rng = np.random.default_rng(seed)
        inputs = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in samples]
        return random_forward(cfg), preprocess_spec(cfg), inputs
    tok = train_tokenizer(words * 5, 300, tmp_path / "tok.json")
    tokenizer = TextTokenizer.from_file(tok, text_spec(cfg.model))  # type: ignore[arg-type]
    inputs = [tokenizer.encode_sentences(words[:k]) for k in sentences]
    return random_forward(cfg), tokenizer.spec, inputs


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_padding_in_a_batch_changes_no_pooled_vector(modality: str, tmp_path: Path) -> None:
    words = ["one two three.", "four five six seven.", "eight."]
    forward, prep, inputs = tiny_inputs(modality, tmp_path, 0, (465, 3000, 9999), words, (1, 3, 2))
    alone_c, alone_z = embed_inputs(forward, inputs, prep, batch_size=1)
    batched_c, batched_z = embed_inputs(forward, inputs, prep, batch_size=3)
    assert alone_c.shape == (3, 16) and alone_z.shape == (3, 16)
    np.testing.assert_allclose(batched_c, alone_c, atol=1e-5)
    np.testing.assert_allclose(batched_z, alone_z, atol=1e-5)


@pytest.mark.parametrize("modality", ["audio", "text"])
def test_stats_pooling_is_mean_and_std_over_valid_steps(modality: str, tmp_path: Path) -> None:
    words = ["one two three.", "four five six seven.", "eight.", "nine ten."]
    forward, prep, inputs = tiny_inputs(modality, tmp_path, 1, (9999, 465, 4000), words, (4, 1, 2))
    pooled = pool_steps(forward, inputs, prep, batch_size=3)  # one right-padded batch
    assert pooled.context_stats.shape == (3, 32)
    for i, x in enumerate(inputs):
        c = forward(x[None])[1].reshape(-1, 16)  # alone: every step is valid
        expected = np.concatenate([c.mean(axis=0), c.std(axis=0)])
        np.testing.assert_allclose(pooled.context_stats[i], expected, atol=1e-5)
        np.testing.assert_allclose(pooled.context[i], c.mean(axis=0), atol=1e-5)
    assert pooled.context_std[1].max() < 1e-6  # one valid step: no spread
    assert all(f.shape == (0, 16) for f in pooled.frames)  # none asked for


# --- frames ---------------------------------------------------------------------------


def test_frame_steps_start_after_one_second_evenly_spaced() -> None:
    prep = preprocess_spec(tiny_config("audio"))
    assert isinstance(prep, AudioPreprocess)
    first = first_frame_step(prep)
    assert prep.hop_samples == 160 and first == 100  # 1 s at 10 ms a step
    assert frame_steps(100, first).size == 0  # exactly 1 s: no step after it
    assert frame_steps(101, first).tolist() == [100]
    assert frame_steps(110, first).tolist() == list(range(100, 110))
    steps = frame_steps(397, first, per_file=20)  # a 4 s clip
    assert len(steps) == 20 == len(set(steps.tolist()))
    assert steps[0] == 100 and steps[-1] < 397 and np.all(np.diff(steps) >= 14)
    assert even_rows(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert even_rows(10, 4).tolist() == [0, 2, 5, 7]


def _two_voice_corpus(root: Path) -> tuple[Path, list[tuple[str, str, str]]]:
    """Two "speakers" (different sine pairs) with 1.5-2.5 s clips, plus 0.6 s ones (no frames)."""
    rng = np.random.default_rng(3)
    rows = []
    for k, freqs in enumerate(((220.0, 660.0), (700.0, 1900.0))):
        (root / f"s{k}").mkdir(parents=True)
        for i in range(8):
            seconds = 0.6 if i >= 6 else rng.uniform(1.5, 2.5)
            t = np.arange(int(seconds * RATE)) / RATE
            wave = sum(rng.uniform(0.2, 0.3) * np.sin(2 * np.pi * f * t) for f in freqs)
            wave = wave + 0.01 * rng.standard_normal(len(t))
            sf.write(root / f"s{k}/{i}.wav", wave.astype(np.float32), RATE)
            rows.append((f"s{k}/{i}.wav", f"speaker{k}", "test" if i % 2 else "train"))
    _write_manifest(root, rows)
    return root, rows


def test_frame_probe_fits_train_frames_after_one_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, rows = _two_voice_corpus(tmp_path / "data")
    train(tiny_config("audio", steps=2), data, tmp_path / "run", progress=False)
    calls: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    real_probe = evaluate_module.probe_accuracy

    def spy(train_x: Any, train_y: Any, test_x: Any, test_y: Any, **kw: Any) -> float:
        calls.append((np.asarray(train_x), np.asarray(train_y), np.asarray(test_x), test_y))
        return real_probe(train_x, train_y, test_x, test_y, **kw)

    monkeypatch.setattr(evaluate_module, "probe_accuracy", spy)
    report = evaluate(tmp_path / "run", data)

    frozen = load_frozen_model(tmp_path / "run")
    prep = frozen.preprocess
    assert isinstance(prep, AudioPreprocess)
    read = input_reader(prep, None)
    expected: dict[str, tuple[list[np.ndarray], list[str]]] = {"train": ([], []), "test": ([], [])}
    train_mfcc: list[np.ndarray] = []
    for path, label, split in rows:  # each clip alone, at the steps the probe should use
        wave = read(data / path)
        steps = frame_steps(prep.num_steps(len(wave)), first_frame_step(prep))
        assert (steps.size == 0) == (len(wave) < 1.5 * RATE)  # the 0.6 s clips give none
        assert np.all(steps >= 100)
        c = frozen.forward(wave[None])[1][0]
        expected[split][0].append(c[steps])
        expected[split][1].extend([label] * len(steps))
        if split == "train":
            train_mfcc.append(mfcc(wave, RATE)[steps])  # MFCC frame t starts where step t does
    train_c, test_c = (np.concatenate(expected[s][0]) for s in ("train", "test"))
    assert len(train_c) == len(test_c) == 6 * 20  # 3 long clips per speaker and split
    fitted = [
        call
        for call in calls
        if call[0].shape == train_c.shape and np.allclose(call[0], train_c, atol=1e-5)
    ]
    assert len(fitted) == 1, "one probe is fitted on exactly the train files' c_t"
    assert fitted[0][1].tolist() == expected["train"][1]
    np.testing.assert_allclose(fitted[0][2], test_c, atol=1e-5)
    assert list(fitted[0][3]) == expected["test"][1]
    mfcc_rows = np.concatenate(train_mfcc)
    assert any(
        call[0].shape == mfcc_rows.shape and np.allclose(call[0], mfcc_rows, atol=1e-4)
        for call in calls
    ), "the MFCC frame probe is fitted on the MFCCs of the same frames"

    results, dims, frames = report["results"], report["dims"], report["protocol"]["frames"]
    assert set(results) == RESULT_KEYS | {"baseline_mfcc", *FRAME_KEYS}
    frame_dims = {"cpc_frames": 16, "random_init_frames": 16, "baseline_mfcc_frames": 20}
    assert {key: dims[key] for key in FRAME_KEYS} == frame_dims
    assert (dims["cpc_context_stats"], dims["random_init_stats"]) == (32, 32)
    assert results["baseline_mfcc_frames"] >= 0.9  # the two voices differ in every frame
    assert frames["skipped"] is None and frames["first_step"] == 100
    assert (frames["train_frames"], frames["test_frames"]) == (120, 120)
    assert (frames["train_files"], frames["test_files"]) == (6, 6)
    written = json.loads(write_report(report, tmp_path / "out")[0].read_text(encoding="utf-8"))
    assert set(FRAME_KEYS) <= set(written["results"]) and set(FRAME_KEYS) <= set(written["dims"])
    assert written["protocol"]["frames"]["frames_per_file"] == 20
    assert (tmp_path / "out" / "eval.png").stat().st_size > 1000
    assert any(line.startswith("frame accuracies (120 train") for line in summary_lines(report))

    capped = evaluate(tmp_path / "run", data, max_frames_per_split=50)["protocol"]["frames"]
    assert (capped["train_frames"], capped["train_frames_available"]) == (50, 120)


# --- labels ----------------------------------------------------------------------------


def test_class_folders_give_labels_and_a_stable_split(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(30):
            (tmp_path / label / f"{i}.txt").write_text("x.", encoding="utf-8")
    (tmp_path / "loose.txt").write_text("no class.", encoding="utf-8")
    items, source = read_labels(tmp_path, (".txt",))
    assert source == "folders" and len(items) == 60
    assert {it.label for it in items} == {"a", "b"}
    assert 0 < sum(it.split == "test" for it in items) < 30
    assert read_labels(tmp_path, (".txt",))[0] == items
    capped, _ = read_labels(tmp_path, (".txt",), max_per_split=4)
    assert sum(it.split == "train" for it in capped) == 4
    assert {it.label for it in capped if it.split == "train"} == {"a", "b"}


def test_a_split_with_one_class_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("x.", encoding="utf-8")
    (tmp_path / "manifest.csv").write_text(
        "path,label,split\nx.txt,a,train\nx.txt,b,train\nx.txt,a,test\n", encoding="utf-8"
    )
    with pytest.raises(ValueError, match="test split holds one class"):
        read_labels(tmp_path, (".txt",))


# --- end to end ------------------------------------------------------------------------


def _write_manifest(root: Path, rows: list[tuple[str, str, str]]) -> None:
    with open(root / "manifest.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "note"])
        writer.writerows([(*row, "ignored") for row in rows])


def make_labelled_corpus(modality: str, root: Path, per_class: int = 6) -> Path:
    """Three classes (tone sets, stripe directions, topics), 2/3 train, in class folders."""
    rng = np.random.default_rng(0)
    rows = []
    yy, xx = np.mgrid[0:40, 0:40]
    for k in range(3):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            name = f"c{k}/{i}"
            if modality == "audio":
                t = np.arange(int(0.4 * RATE)) / RATE
                freqs = (150 * (k + 1), 400 * (k + 1) + rng.uniform(0, 20))
                wave = sum(np.sin(2 * np.pi * f * t) for f in freqs) / 4
                wave = wave + 0.02 * rng.standard_normal(len(t))
                sf.write(root / f"{name}.wav", wave.astype(np.float32), RATE)
                name += ".wav"
            elif modality == "image":
                grid = (xx, yy, xx + yy)[k] / rng.uniform(3, 6)
                img = 0.5 + 0.4 * np.sin(2 * np.pi * grid)[..., None] * rng.uniform(0.3, 1, 3)
                Image.fromarray((img * 255).astype(np.uint8)).save(root / f"{name}.png")
                name += ".png"
            else:
                words = TOPICS[k]
                doc = " ".join(
                    " ".join(rng.choice(words, size=5)).capitalize() + "." for _ in range(8)
                )
                (root / f"{name}.txt").write_text(doc, encoding="utf-8")
                name += ".txt"
            rows.append((name, f"class{k}", "test" if i % 3 == 0 else "train"))
    _write_manifest(root, rows)
    return root


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cpc-embed")
    add_eval_command(parser.add_subparsers(dest="command", required=True))
    return run_eval_command(parser.parse_args(argv))


@pytest.fixture(scope="module", params=["audio", "image", "text"])
def trained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    """A labelled corpus, a 2-step run on it and its bundle, under one folder."""
    modality: str = request.param
    root = tmp_path_factory.mktemp(f"eval-{modality}")
    data = make_labelled_corpus(modality, root / "data")
    train(tiny_config(modality, steps=2), data, root / "run", progress=False)
    export_run(
        root / "run", root / "bundle", quantize_weights=modality == "audio", calibration=LENIENT
    )
    return root, modality


def _check_report(report: dict, modality: str) -> None:
    assert report["modality"] == modality
    assert set(report["results"]) == RESULT_KEYS | {BASELINES[modality]}  # no frame keys
    assert set(report["dims"]) == set(report["results"]) - {"chance", "majority"}
    assert report["dims"]["cpc_context_stats"] == 2 * report["dims"]["cpc_context"]
    assert "stats_pooling" in report["protocol"]
    if modality == "audio":  # every clip is 0.4 s: no frame after 1 s, the probe is skipped
        assert report["protocol"]["frames"]["skipped"]
        assert report["protocol"]["frames"]["train_frames"] == 0
    else:
        assert "frames" not in report["protocol"]
    assert all(0.0 <= v <= 1.0 for v in report["results"].values())
    assert report["results"]["chance"] == pytest.approx(1 / 3)
    assert report["classes"] == ["class0", "class1", "class2"]
    assert (report["train_size"], report["test_size"]) == (12, 6)


def test_eval_of_a_run_writes_json_and_png(
    trained: tuple[Path, str], caplog: pytest.LogCaptureFixture
) -> None:
    root, modality = trained
    with caplog.at_level(logging.INFO):
        assert _run_cli(["eval", str(root / "run"), "--data", str(root / "data")]) == 0
    assert ("frame probe skipped" in caplog.text) == (modality == "audio")  # 0.4 s clips
    assert "file accuracies: cpc_context" in caplog.text
    report = json.loads((root / "run" / "eval.json").read_text(encoding="utf-8"))
    _check_report(report, modality)
    assert report["model_kind"] == "run" and report["labels_from"] == "manifest.csv"
    assert (root / "run" / "eval.png").stat().st_size > 1000
    if modality != "text":  # the baselines separate these classes
        assert report["results"][BASELINES[modality]] >= 0.8


def test_eval_of_a_bundle_matches_the_run_and_updates_it(trained: tuple[Path, str]) -> None:
    root, modality = trained
    direct = evaluate(root / "run", root / "data")
    out = root / "report"
    argv = ["eval", str(root / "bundle"), "--data", str(root / "data"), "--out", str(out)]
    assert _run_cli([*argv, "--update-bundle"]) == 0
    report = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    _check_report(report, modality)
    assert report["model_kind"] == "bundle" and (out / "eval.png").is_file()
    for key in ("cpc_context", "random_init", BASELINES[modality]):  # onnx == torch features
        assert report["results"][key] == pytest.approx(direct["results"][key], abs=0.2)
    metrics = load_bundle_spec(root / "bundle").metrics
    assert metrics["eval"]["results"] == report["results"]
    assert metrics["step"] == 2  # the export's own metrics are kept
    if modality == "audio":
        quant = evaluate(root / "bundle", root / "data", quantized=True, max_per_split=3)
        assert quant["quantized"] and (quant["train_size"], quant["test_size"]) == (3, 3)


def test_cli_errors_are_one_line(
    trained: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "loose.wav").write_bytes(b"")
    root = trained[0]
    run = str(root / "run")
    for argv in (
        ["eval", run, "--data", str(tmp_path)],  # no manifest, no class folders
        ["eval", str(tmp_path / "missing"), "--data", str(root / "data")],
        ["eval", run, "--data", str(root / "data"), "--update-bundle"],  # not a bundle
    ):
        assert _run_cli(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("cpc-embed eval: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "eval.json").exists()
