"""Tests of service.preprocess.text and training.tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.bundle import TextPreprocess
from service.errors import BundleError, InvalidInput
from service.preprocess import TextTokenizer, pad_token_batch, sniff_modality, split_sentences
from training.tokenizer import train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Contrastive predictive coding learns representations by predicting the future.",
    "Dr. Smith measured 3.14 units of rain in the U.S. last year!",
    "Is this the real life? Is this just fantasy?",
    "Caught in a landslide, no escape from reality.",
] * 20


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello world. How are you? Fine!", ["Hello world.", "How are you?", "Fine!"]),
        ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
        (
            "Use tools, e.g. hammers, i.e. heavy ones. Then stop.",
            ["Use tools, e.g. hammers, i.e. heavy ones.", "Then stop."],
        ),
        (
            "Pi is 3.14 roughly. The U.S. economy grew.",
            ["Pi is 3.14 roughly.", "The U.S. economy grew."],
        ),
        ("Apples, pears, etc. are fruit. Yes.", ["Apples, pears, etc. are fruit.", "Yes."]),
        ("Wait… what?! Really.", ["Wait…", "what?!", "Really."]),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("今天天气很好。我们去公园吧！好吗？", ["今天天气很好。", "我们去公园吧！", "好吗？"]),
        ("A title\n\nFirst paragraph\nwraps here.", ["A title", "First paragraph wraps here."]),
        ("  spaced\t\tout   text  ", ["spaced out text"]),
        (
            "J. R. R. Tolkien wrote books. So do I. Fine.",
            ["J. R. R. Tolkien wrote books.", "So do I.", "Fine."],
        ),
        ("", []),
        ("   \n\n\t  ", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_split_sentences_normalises_to_nfc() -> None:
    decomposed = "Cafe\u0301 is open. Come in."
    assert split_sentences(decomposed) == ["Caf\u00e9 is open.", "Come in."]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tokenizer(iter(CORPUS), 300, tmp_path_factory.mktemp("tok") / "tokenizer.json")


def test_tokenizer_training_is_deterministic(tmp_path: Path, tokenizer_file: Path) -> None:
    again = train_tokenizer(list(CORPUS), 300, tmp_path)
    assert again == tmp_path / "tokenizer.json"
    assert again.read_bytes() == tokenizer_file.read_bytes()
    tok = TextTokenizer.from_file(again, TextPreprocess.model_validate({}))
    assert 258 <= tok.vocab_size <= 300
    assert tok.unk_id == 1


def test_special_tokens_and_normaliser(tokenizer_file: Path) -> None:
    tok = TextTokenizer.from_file(tokenizer_file, TextPreprocess.model_validate({}))
    upper = tok.encode_sentences(["THE QUICK FOX"])
    lower = tok.encode_sentences(["the quick fox"])
    np.testing.assert_array_equal(upper, lower)
    assert (upper != 0).all()


def test_encode_shapes_truncation_and_padding(tokenizer_file: Path) -> None:
    spec = TextPreprocess(max_tokens=8, max_sentences=3, pad_id=0)
    tok = TextTokenizer.from_file(tokenizer_file, spec)
    long = "the quick brown fox jumps over the lazy dog again and again"
    ids = tok.encode_sentences(["fox", long])
    assert ids.dtype == np.int64 and ids.shape == (2, 8)
    assert ids[0, 0] != 0 and (ids[0, 1:] == 0).any()
    assert (ids[1] != 0).all()
    short = tok.encode_sentences(["fox", "dog"])
    assert short.shape[1] < 8
    empty = tok.encode_sentences([""])
    assert empty.shape == (1, 1) and empty[0, 0] == tok.unk_id


def test_encode_document(tokenizer_file: Path) -> None:
    spec = TextPreprocess(max_tokens=16, max_sentences=3)
    tok = TextTokenizer.from_file(tokenizer_file, spec)
    ids, sentences = tok.encode_document("One. Two. Three. Four. Five.")
    assert sentences == ["One.", "Two.", "Three."]
    assert ids.shape[0] == 3 and ids.shape[1] <= 16
    for text in ["", "   \n\t "]:
        with pytest.raises(InvalidInput) as err:
            tok.encode_document(text)
        assert err.value.status_code == 400


def test_chunk_splitter_gives_short_texts_several_steps(tokenizer_file: Path) -> None:
    spec = TextPreprocess(sentence_splitter="chunks-v1", chunk_tokens=3, max_sentences=4)
    tok = TextTokenizer.from_file(tokenizer_file, spec)
    text = "The quick brown fox jumps over the lazy dog."
    ids, units = tok.encode_document(text)
    stream = tok.encode_sentences([text])[0]
    stream = stream[stream != spec.pad_id]
    # one sentence, cut into units of 3 consecutive tokens (the last may be shorter)
    assert ids.shape == (min(4, -(-len(stream) // 3)), 3)
    np.testing.assert_array_equal(ids.reshape(-1)[: min(12, len(stream))], stream[:12])
    # each unit's text is what its tokens read: together, the start of the text
    assert len(units) == ids.shape[0]
    assert text.lower().replace(" ", "").startswith("".join(units).replace(" ", ""))
    # sentences are joined: the same words as one or two sentences give the same units
    two, _ = tok.encode_document("The quick brown fox.\n\nJumps over the lazy dog.")
    one, _ = tok.encode_document("The quick brown fox. Jumps over the lazy dog.")
    np.testing.assert_array_equal(two, one)
    with pytest.raises(InvalidInput):
        tok.encode_document("  ")
    with pytest.raises(BundleError, match="chunk_tokens"):
        TextTokenizer.from_file(tokenizer_file, TextPreprocess(sentence_splitter="chunks-v1"))
    with pytest.raises(BundleError, match="not supported"):
        TextTokenizer.from_file(tokenizer_file, TextPreprocess(sentence_splitter="words-v9"))


def test_pad_token_batch() -> None:
    a = np.array([[5, 6, 7]], dtype=np.int64)
    b = np.array([[1], [2]], dtype=np.int64)
    out = pad_token_batch([a, b], pad_id=9)
    assert out.shape == (2, 2, 3) and out.dtype == np.int64
    np.testing.assert_array_equal(out[0], [[5, 6, 7], [9, 9, 9]])
    np.testing.assert_array_equal(out[1], [[1, 9, 9], [2, 9, 9]])
    assert pad_token_batch([], 0).shape == (0, 0, 0)


def test_text_is_not_sniffed_as_media() -> None:
    for text in CORPUS[:5]:
        assert sniff_modality(text.encode()) is None


@pytest.mark.timeout(10)
def test_split_sentences_is_linear_on_long_punctuation_runs() -> None:
    assert split_sentences("." * 100_000 + "a") == ["." * 100_000 + "a"]
    assert len(split_sentences("!?" * 50_000 + " x")) == 2
