"""Train the subword tokenizer a text bundle ships.

A byte-level BPE from the `tokenizers` library: NFKC then lower-case
normalisation, byte-level pre-tokenisation (so no input is ever unknown), and
the special tokens "[PAD]" (id 0) and "[UNK]" (id 1) first in the vocabulary.
The service loads the saved `tokenizer.json` with
`service.preprocess.text.TextTokenizer`. No torch here.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

logger = logging.getLogger(__name__)

PAD_TOKEN, UNK_TOKEN = "[PAD]", "[UNK]"
SPECIAL_TOKENS = [PAD_TOKEN, UNK_TOKEN]
TOKENIZER_FILE = "tokenizer.json"


def build_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE with the normaliser and special tokens set."""
    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def _target(out_path: Path) -> Path:
    """`out_path` itself, or `out_path/tokenizer.json` when it is a folder."""
    if out_path.is_dir() or out_path.suffix == "":
        return out_path / TOKENIZER_FILE
    return out_path


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_path: Path) -> Path:
    """Train on `texts` and save; returns the path of the written tokenizer.json.

    `out_path` is the file to write, or a folder (existing, or a path with no
    suffix) to write `tokenizer.json` into. The same texts in the same order
    give the same file. The vocabulary always holds the 2 special tokens and
    the 256 byte symbols, so a `vocab_size` below 258 yields 258 entries.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    tok = build_tokenizer()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(SPECIAL_TOKENS) + len(alphabet):
        logger.warning(
            "vocab_size %d is below the %d special and byte tokens; using those only",
            vocab_size,
            len(SPECIAL_TOKENS) + len(alphabet),
        )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=sorted(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != i:
            raise RuntimeError(f"{token} did not get id {i}")
    target = _target(Path(out_path))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tokenizer-", suffix=".json")
    os.close(fd)
    try:
        tok.save(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("tokenizer with %d entries written to %s", tok.get_vocab_size(), target)
    return target
