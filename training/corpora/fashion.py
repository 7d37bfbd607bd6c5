"""Fashion-MNIST: Zalando's 28x28 grayscale article images in 10 classes, as PNG files.

The IDX files come from the Debian package `dataset-fashion-mnist` (nothing is
downloaded) and are read with NumPy. Layout of `out`:

    out/manifest.csv                      columns path,label,split,index
    out/<class>/<split>-<index>.png       e.g. out/ankle-boot/train-00000.png

`index` is the image's position in its IDX file; the official split is kept,
and `per_class` keeps the first N images of each class in each split. The IDX
format and the licence: docs/training.md (Built-in corpora).
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from training.corpora import CorpusError
from training.corpora.manifest import SPLITS, Row, prepare_output, write_manifest

logger = logging.getLogger(__name__)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
# split -> (images file, labels file), each read as-is or with a .gz suffix
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension
MISSING = "{src} holds no {name}[.gz]: apt-get install dataset-fashion-mnist (or pass --src)"


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The uint8 array of one IDX file (gzipped when its name ends in .gz)."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        found = raw[:4].hex() if len(raw) >= 4 else "too short"
        raise CorpusError(f"{path} is not an IDX file with magic {magic:08x} (found {found})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(shape)):
        raise CorpusError(f"{path}: header says {shape}, data holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find(src: Path, name: str) -> Path:
    for candidate in (src / name, src / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise CorpusError(MISSING.format(src=src, name=name))


def read_fashion(src: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (N x H x W) and labels (N) of one split, checked against each other."""
    images_name, labels_name = FILES[split]
    images = read_idx(_find(src, images_name), IMAGES_MAGIC)
    labels = read_idx(_find(src, labels_name), LABELS_MAGIC)
    if len(images) != len(labels):
        raise CorpusError(f"{src}: {len(images)} {split} images but {len(labels)} labels")
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise CorpusError(f"{src}: {split} label {int(labels.max())} is not one of 0..9")
    return images, labels


def build_fashion(out: Path, *, per_class: int | None = None, src: Path = FASHION_DIR) -> Path:
    """Build the Fashion-MNIST corpus in `out` (see the module docstring); returns `out`.

    `per_class`: at most this many images per class and split (None: all)."""
    if per_class is not None and per_class < 1:
        raise CorpusError("--per-class must be at least 1")
    src, out = Path(src), Path(out)
    data = {split: read_fashion(src, split) for split in SPLITS}  # read all before writing
    prepare_output(out)
    for name in CLASSES:
        (out / name).mkdir()
    rows = []
    for split, (images, labels) in data.items():
        width = len(str(max(len(labels) - 1, 0)))
        kept = [0] * len(CLASSES)
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            if per_class is not None and kept[label] >= per_class:
                continue
            kept[label] += 1
            name = CLASSES[label]
            rel = f"{name}/{split}-{index:0{width}d}.png"
            Image.fromarray(pixels).save(out / rel, format="PNG")
            rows.append(Row(path=rel, label=name, split=split, extra={"index": str(index)}))
        logger.info("%s: %d images written", split, sum(kept))
    write_manifest(out, rows)
    return out
