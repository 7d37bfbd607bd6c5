"""The one ONNX runner: session options, right-padded collation, valid steps, slicing.

The service, the export check, `cpc-embed eval` and `cpc-embed quantize` all
run bundles through this module, so a model sees the same batch layout
everywhere. Right padding is safe because the encoders never look right and
the autoregressors are causal (docs/architecture.md): step t of a padded input
equals step t of the input alone, so each result is cut back to its valid steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.bundle import AudioPreprocess, ImagePreprocess, Preprocess, TextPreprocess
from service.errors import BundleError
from service.preprocess import pad_token_batch

StepVectors = tuple[np.ndarray, np.ndarray]  # (z [steps, Z], c [steps, C]) of one input


def open_session(
    path: str | Path, *, intra_op_threads: int = 0, spinning: bool = False
) -> ort.InferenceSession:
    """An onnxruntime CPU session for `path`; BundleError names the file if it cannot load."""
    opts = ort.SessionOptions()
    # Memory patterns are planned per input shape; with variable lengths they
    # only add memory with every new length, so they are off.
    opts.enable_mem_pattern = False
    opts.log_severity_level = 3
    if intra_op_threads > 0:
        opts.intra_op_num_threads = intra_op_threads
    # Spinning worker threads keep their cores busy between calls, which starves
    # the event loop and the decoders on a small machine; off unless asked for.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise BundleError(f"{path}: onnxruntime cannot load it ({exc})") from exc


def valid_steps(array: np.ndarray, pre: Preprocess) -> int:
    """Output steps of one model input: audio frames, image grid cells or text sentences."""
    if isinstance(pre, AudioPreprocess):
        return pre.num_steps(int(array.shape[0]))
    if isinstance(pre, ImagePreprocess):
        rows, cols = pre.grid
        return rows * cols
    return int(array.shape[0])


def collate(arrays: Sequence[np.ndarray], pre: Preprocess) -> np.ndarray:
    """Model inputs stacked into one batch, right-padded to the longest.

    Audio pads with zeros, text with `pad_id`; image inputs (patch grids) all
    have one shape.
    """
    if isinstance(pre, AudioPreprocess):
        longest = max(a.shape[0] for a in arrays)
        batch = np.zeros((len(arrays), longest), dtype=np.float32)
        for i, a in enumerate(arrays):
            batch[i, : a.shape[0]] = a
        return batch
    if isinstance(pre, TextPreprocess):
        return pad_token_batch(list(arrays), pre.pad_id)
    return np.stack(arrays).astype(np.float32, copy=False)


def slice_valid(z: np.ndarray, c: np.ndarray, steps: Sequence[int]) -> list[StepVectors]:
    """Each row of a batch's (z, c) cut to its valid steps, as float32 copies."""
    out: list[StepVectors] = []
    for i, n in enumerate(steps):
        zi = z[i].reshape(-1, z.shape[-1])  # images: [rows, cols, D] -> [cells, D]
        ci = c[i].reshape(-1, c.shape[-1])
        if zi.shape[0] < n or ci.shape[0] < n:
            raise RuntimeError(f"the model returned {ci.shape[0]} steps for an input of {n}")
        out.append((np.array(zi[:n], dtype=np.float32), np.array(ci[:n], dtype=np.float32)))
    return out


@dataclass
class OnnxRunner:
    """A session with the names of its input and of its z and c outputs."""

    session: ort.InferenceSession
    input_name: str
    encoder_output: str = "z"
    context_output: str = "c"

    @classmethod
    def open(
        cls,
        path: str | Path,
        input_name: str,
        encoder_output: str = "z",
        context_output: str = "c",
        *,
        intra_op_threads: int = 0,
        spinning: bool = False,
    ) -> OnnxRunner:
        """Load `path`; BundleError if it lacks the named input or outputs."""
        session = open_session(path, intra_op_threads=intra_op_threads, spinning=spinning)
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if input_name not in inputs:
            raise BundleError(f"{path}: has inputs {inputs}, bundle.json names {input_name!r}")
        for name in (encoder_output, context_output):
            if name not in outputs:
                raise BundleError(f"{path}: has outputs {outputs}, bundle.json names {name!r}")
        return cls(session, input_name, encoder_output, context_output)

    @property
    def threads(self) -> int:
        """onnxruntime intra-op threads per call (0: its default, one per core)."""
        return int(self.session.get_session_options().intra_op_num_threads)

    def forward(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One onnxruntime call on a collated batch: (z, c) as the graph returns them."""
        z, c = self.session.run(
            [self.encoder_output, self.context_output], {self.input_name: batch}
        )
        return np.asarray(z), np.asarray(c)

    def run(
        self, arrays: Sequence[np.ndarray], steps: Sequence[int], pre: Preprocess
    ) -> list[StepVectors]:
        """Collate, run once, and cut each input's (z, c) to its `steps`, in input order."""
        if not arrays:
            return []
        z, c = self.forward(collate(arrays, pre))
        return slice_valid(z, c, steps)

    def release_arena(self, batch: np.ndarray) -> None:
        """Run `batch` (a small valid one) with arena shrinkage on, freeing idle chunks.

        onnxruntime's arena keeps what the largest call needed. It can shrink
        only at the end of a call, and a batch's own outputs still hold their
        chunk then; so a small call with shrinking on, once the last batch's
        outputs are gone, frees every chunk but the first.
        """
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        self.session.run([self.context_output], {self.input_name: batch}, options)
