"""Text: the shipped SentencePiece model, exact round trips, reproducible training."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnipolicy.tokenizers import TextTokenizer, Tokenizer

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "tokenizers" / "assets"


@pytest.fixture(scope="module")
def text() -> TextTokenizer:
    return TextTokenizer.default()


def test_corpus_round_trip_exact(text: TextTokenizer) -> None:
    lines = (ASSETS / "corpus.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 200
    for line in lines:
        ids = text.encode(line)
        assert all(0 <= i < text.vocab_size for i in ids)
        assert text.decode(ids) == line
    whole = "\n".join(lines)
    assert text.decode(text.encode(whole)) == whole


def test_corpus_compresses(text: TextTokenizer) -> None:
    # The model learned the corpus: instructions take far fewer tokens than bytes.
    s = "Pick and place a puck to a goal."
    assert len(text.encode(s)) <= len(s.encode()) / 2.5


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.text(alphabet="\u2581 \t\n\r\x00abc\u00e9\U0001f600", max_size=30))
def test_any_string_round_trips(text: TextTokenizer, s: str) -> None:
    ids = text.encode(s)
    assert all(0 <= i < text.vocab_size for i in ids)
    assert text.decode(ids) == s


@pytest.mark.parametrize("s", ["", " ", "  two  spaces  ", "\u2581", "a\u2581\u2581b", "\x00", "日本語", "\ufeffBOM",
                               "e\u0301", "<unk>", "<0x41>", "\r\n\t"])
def test_tricky_strings(text: TextTokenizer, s: str) -> None:
    assert text.decode(text.encode(s)) == s


def test_unknown_characters_use_bytes_not_unk(text: TextTokenizer) -> None:
    assert 0 not in text.encode("\U0001f916 robot \u4e2d")  # id 0 is <unk>


def test_decode_rejects_ids_outside_text_range(text: TextTokenizer) -> None:
    with pytest.raises(ValueError, match=rf"Text id {text.vocab_size} is outside the text range \[0, {text.vocab_size}\)"):
        text.decode([1, text.vocab_size])


def test_encode_batch_pads_and_dedupes(text: TextTokenizer) -> None:
    ids, lengths = text.encode_batch(["Open the door.", "", "Open the door.", "Reach the goal."])
    assert ids.shape == (4, lengths.max())
    for row, n, s in zip(ids, lengths, ["Open the door.", "", "Open the door.", "Reach the goal."]):
        assert text.decode(row[:n]) == s and (row[n:] == -1).all()
    with pytest.raises(TypeError, match="Field 'instruction': expected a sequence of strings"):
        text.encode_batch("Open the door.", field="instruction")
    with pytest.raises(TypeError, match="Field 'instruction': text at timestep 1 must be str, got int"):
        text.encode_batch(["a", 3], field="instruction")


def test_pickle_round_trip() -> None:
    tok = Tokenizer.default()
    tok2 = pickle.loads(pickle.dumps(tok))
    assert tok2.layout == tok.layout
    s = "Close the window \u2581 now"
    np.testing.assert_array_equal(tok2.encode_text(s), tok.encode_text(s))
    assert tok2.decode_text(tok.encode_text(s)) == s


def test_shipped_model_is_reproducible_from_corpus(load_script) -> None:
    module = load_script("train_text_tokenizer")
    fresh = module.train(ASSETS / "corpus.txt", vocab_size=1000)
    assert fresh == (ASSETS / "text.model").read_bytes(), "retrain with scripts/train_text_tokenizer.py and commit"
