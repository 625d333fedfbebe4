"""Train the shipped SentencePiece text model from the project's own corpus.

Reads ``tokenizers/assets/corpus.txt`` (task instructions, task descriptions and
general robot/game sentences written for this project) and writes
``tokenizers/assets/text.model``. Training is deterministic (one thread, no
sampling or shuffling), so running it twice gives the same file byte for byte.

The model keeps text exactly: identity normalisation, no dummy prefix, no
whitespace folding, and byte fallback so that any character outside the
learned pieces becomes UTF-8 byte pieces instead of ``<unk>``.

Usage::

    .venv/bin/python scripts/train_text_tokenizer.py [--vocab-size 1000] [--check]
"""

from __future__ import annotations

import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
import tyro

from omnipolicy.files import write_bytes_atomic

ASSETS = Path(__file__).resolve().parent.parent / "tokenizers" / "assets"


@dataclass(frozen=True)
class Args:
    corpus: Path = ASSETS / "corpus.txt"
    """Plain-text corpus, one sentence per line."""
    out: Path = ASSETS / "text.model"
    """Where to write the SentencePiece model (atomically)."""
    vocab_size: int = 1000
    """Number of pieces, including the 256 byte-fallback pieces and <unk>."""
    check: bool = False
    """Only check that the committed model equals a fresh training run; exit 1 if not."""


def train(corpus: Path, vocab_size: int) -> bytes:
    """Train on ``corpus`` and return the serialized model proto."""
    lines = [line for line in corpus.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"Corpus {corpus} has no non-empty lines")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may support slightly fewer pieces; never fail on it
        character_coverage=1.0,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        seed_sentencepiece_size=1_000_000,
        minloglevel=2,
    )
    return model.getvalue()


def main(argv: list[str] | None = None) -> None:
    args = tyro.cli(Args, args=argv)
    data = train(args.corpus, args.vocab_size)
    sp = spm.SentencePieceProcessor(model_proto=data)
    digest = hashlib.sha256(data).hexdigest()[:16]
    if args.check:
        same = args.out.exists() and args.out.read_bytes() == data
        print(f"{args.out}: {'matches' if same else 'DIFFERS FROM'} a fresh training run (sha256 {digest})")
        sys.exit(0 if same else 1)
    write_bytes_atomic(args.out, data)
    lines = [line for line in args.corpus.read_text(encoding="utf-8").splitlines()]
    exact = sum(sp.decode(sp.encode(line)) == line for line in lines)
    n_tokens = sum(len(sp.encode(line)) for line in lines)
    n_chars = sum(len(line) for line in lines)
    print(f"wrote {args.out} (vocab {sp.get_piece_size()}, sha256 {digest}); "
          f"corpus round trip exact on {exact}/{len(lines)} lines; {n_chars / max(n_tokens, 1):.2f} chars/token")


if __name__ == "__main__":
    main()
