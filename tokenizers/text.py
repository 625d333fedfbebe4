"""Text <-> SentencePiece ids, exact for any Unicode string.

The shipped model (``assets/text.model``, trained by
``scripts/train_text_tokenizer.py`` from ``assets/corpus.txt``) uses identity
normalisation, no dummy prefix and byte fallback, so characters it never saw
become UTF-8 byte pieces. SentencePiece writes spaces as ``U+2581`` internally,
so a literal ``U+2581`` in the input would come back as a space; this module
encodes that one character as its three byte pieces and decodes ids with its
own piece table, which makes ``decode(encode(s)) == s`` hold for every string.

>>> text = TextTokenizer.default()
>>> s = "Open the drawer ▁ 😀"
>>> text.decode(text.encode(s)) == s
True
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

DEFAULT_MODEL: Path = Path(__file__).resolve().parent / "assets" / "text.model"
_SPACE_MARK = "\u2581"  # SentencePiece's internal space symbol
END_OF_TEXT = "\n"
"""Ends a text action (an answer, a caption): one token of the shipped model (its byte piece), never inside an
answer, so a greedy decoder stops reading at the first one."""


class TextTokenizer:
    """A SentencePiece model with an exact round trip.

    Args:
        model_proto: the serialized SentencePiece model (bytes of a ``.model`` file).

    Raises:
        ValueError: the model has no byte-fallback pieces (it could not encode
            arbitrary text exactly).
    """

    def __init__(self, model_proto: bytes) -> None:
        self.model_proto = bytes(model_proto)
        self.sha256 = hashlib.sha256(self.model_proto).hexdigest()
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        n = self._sp.get_piece_size()
        pieces: list[bytes] = []
        byte_ids = {}
        for i in range(n):
            piece = self._sp.id_to_piece(i)
            if self._sp.is_byte(i):
                value = int(piece[3:5], 16)  # "<0xAB>"
                byte_ids[value] = i
                pieces.append(bytes([value]))
            elif self._sp.is_unknown(i):
                pieces.append("\ufffd".encode())
            elif self._sp.is_control(i):
                pieces.append(b"")
            else:
                pieces.append(piece.replace(_SPACE_MARK, " ").encode("utf-8"))
        if len(byte_ids) != 256:
            raise ValueError(f"SentencePiece model needs byte_fallback=True (256 byte pieces), it has {len(byte_ids)}")
        self._piece_bytes = pieces
        self._mark_ids = [byte_ids[b] for b in _SPACE_MARK.encode("utf-8")]
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> "TextTokenizer":
        """Load a ``.model`` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model {path} does not exist; train it with scripts/train_text_tokenizer.py")
        return cls(path.read_bytes())

    @classmethod
    def default(cls) -> "TextTokenizer":
        """The model shipped in ``tokenizers/assets/text.model``."""
        return cls.from_file(DEFAULT_MODEL)

    @property
    def vocab_size(self) -> int:
        """Number of text ids, ``[0, vocab_size)``."""
        return len(self._piece_bytes)

    def encode(self, text: str) -> list[int]:
        """Encode one string to ids in ``[0, vocab_size)``; ``decode`` gives it back exactly."""
        if not isinstance(text, str):
            raise TypeError(f"Text must be str, got {type(text).__name__}: {text!r}")
        cached = self._cache.get(text)
        if cached is None:
            ids: list[int] = []
            for k, part in enumerate(text.split(_SPACE_MARK)):
                if k:
                    ids.extend(self._mark_ids)
                if part:
                    ids.extend(self._sp.encode(part))
            cached = tuple(ids)
            if len(self._cache) < 65536:
                self._cache[text] = cached
        return list(cached)

    def encode_batch(self, texts: Sequence[str], field: str = "text") -> tuple[np.ndarray, np.ndarray]:
        """Encode many strings (duplicates encoded once).

        Returns:
            ``(ids, lengths)``: int64 ``(len(texts), max_len)`` right-padded with
            ``-1``, and int64 ``(len(texts),)`` lengths.
        """
        if isinstance(texts, str):
            raise TypeError(f"Field {field!r}: expected a sequence of strings (one per timestep), got one str")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"Field {field!r}: text at timestep {i} must be str, got {type(t).__name__}: {t!r}")
        uniq, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True) if texts else ([], np.zeros(0, np.int64))
        encoded = [self.encode(u) for u in uniq]
        lengths_u = np.array([len(e) for e in encoded], dtype=np.int64)
        width = int(lengths_u.max()) if len(encoded) else 0
        table = np.full((len(encoded), width), -1, dtype=np.int64)
        for i, e in enumerate(encoded):
            table[i, : len(e)] = e
        inverse = np.asarray(inverse, dtype=np.int64).reshape(-1)
        return table[inverse], lengths_u[inverse]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> string; invalid UTF-8 (only possible from ids no encoder produced) becomes U+FFFD.

        Raises:
            ValueError: an id is outside ``[0, vocab_size)``.
        """
        pieces = self._piece_bytes
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(pieces):
                raise ValueError(f"Text id {i} is outside the text range [0, {len(pieces)})")
            out.append(pieces[i])
        return b"".join(out).decode("utf-8", errors="replace")

    def __getstate__(self) -> dict:
        return {"model_proto": self.model_proto}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["model_proto"])
