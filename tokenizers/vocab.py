"""The vocabulary layout: every id range of the token space, written down once.

Ids are laid out contiguously, text first (Gato section 2.1, but with the
discrete range separate from text instead of overlapping it)::

    [0, text_size)                                 text (SentencePiece)
    [continuous_offset, continuous_offset + 1024)  continuous bins
    [discrete_offset, discrete_offset + 1024)      discrete values
    [special_offset, special_offset + n_special)   separator '|', padding, image-patch marker, ...
    [image_offset, image_offset + image_codes)     image codes (only with an image tokenizer; 0 ids otherwise)

With an image tokenizer (:class:`~omnipolicy.tokenizers.image_vq.ImageTokenizer`) the specials also hold
the ``<image>`` and ``</image>`` markers (``image_start``, ``image_end``) that frame each image's codes, and
``image_model`` names the tokenizer's weights: codes of another image tokenizer are another layout.

The layout is saved with every checkpoint and token cache; anything that reads
tokens compares its layout against the stored one first.

>>> layout = VocabLayout(text_size=1000)
>>> layout.continuous_offset, layout.discrete_offset, layout.separator_id
(1000, 2024, 3048)
>>> VocabLayout.from_json(layout.to_json()) == layout
True
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field

NUM_BINS: int = 1024
"""Number of continuous bins (Gato: 1024 uniform bins over [-1, 1]); the tokenizer works with this many only."""
NUM_DISCRETE: int = 1024
"""Size of the discrete id range (Gato: 1024); the tokenizer works with this many only."""

SPECIAL_TOKENS: tuple[str, ...] = ("separator", "pad", "patch")
"""Names of the special tokens, in id order after the discrete range.

``separator`` is Gato's ``|`` between observation and action tokens, ``pad``
fills unused context, ``patch`` marks a slot whose embedding comes from an
image patch instead of the embedding table.
"""
IMAGE_MARKERS: tuple[str, ...] = ("image_start", "image_end")
"""The special tokens ``<image>`` and ``</image>`` around an image's codes (layouts with image codes only)."""


@dataclass(frozen=True)
class VocabLayout:
    """Every id range of the token space.

    Attributes:
        text_size: number of text (SentencePiece) ids, ``[0, text_size)``.
        num_bins: number of continuous bins (Gato: 1024).
        num_discrete: number of discrete values (Gato: 1024).
        special: names of the special tokens, in id order.
        version: layout format version; bump when the meaning of ids changes.
        text_model: first 16 hex digits of the SHA-256 of the SentencePiece
            model the text ids come from (``""``: unspecified). Two layouts with
            different text models are different layouts, so caches and
            checkpoints built with another text model are caught.
        image_codes: size of the image-code range after the specials (0: images are patches, no codes).
        image_model: first 16 hex digits of the image tokenizer's SHA-256 (``""`` without image codes).
    """

    text_size: int
    num_bins: int = NUM_BINS
    num_discrete: int = NUM_DISCRETE
    special: tuple[str, ...] = field(default=SPECIAL_TOKENS)
    version: int = 1
    text_model: str = ""
    image_codes: int = 0
    image_model: str = ""

    def __post_init__(self) -> None:
        for name in ("text_size", "num_bins", "num_discrete"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"VocabLayout.{name} must be a positive int, got {value!r}")
        missing = [s for s in SPECIAL_TOKENS if s not in self.special]
        if missing:
            raise ValueError(f"VocabLayout.special must contain {list(SPECIAL_TOKENS)}, missing {missing}")
        object.__setattr__(self, "special", tuple(self.special))
        if isinstance(self.image_codes, bool) or not isinstance(self.image_codes, int) or self.image_codes < 0:
            raise ValueError(f"VocabLayout.image_codes must be an int >= 0 (0: no image codes), got {self.image_codes!r}")
        if self.image_codes:
            missing = [s for s in IMAGE_MARKERS if s not in self.special]
            if missing or not self.image_model:
                raise ValueError(f"VocabLayout with image_codes={self.image_codes} needs the specials {list(IMAGE_MARKERS)} "
                                 f"(missing {missing}) and an image_model hash (got {self.image_model!r}); build it "
                                 "with layout.with_image_codes(n, image_model)")
        elif self.image_model:
            raise ValueError(f"VocabLayout.image_model is {self.image_model!r} but image_codes is 0; expected both or neither")

    def with_image_codes(self, image_codes: int, image_model: str) -> "VocabLayout":
        """This layout with an image-code range of ``image_codes`` ids and the ``<image>``/``</image>`` markers.

        >>> layout = VocabLayout(text_size=1000).with_image_codes(1000, "0123456789abcdef")
        >>> layout.image_start_id, layout.image_end_id, layout.ranges()["image"], layout.vocab_size
        (3051, 3052, (3053, 4053), 4053)
        """
        special = self.special + tuple(s for s in IMAGE_MARKERS if s not in self.special)
        return dataclasses.replace(self, special=special, image_codes=int(image_codes), image_model=str(image_model))

    @property
    def continuous_offset(self) -> int:
        return self.text_size

    @property
    def discrete_offset(self) -> int:
        return self.continuous_offset + self.num_bins

    @property
    def special_offset(self) -> int:
        return self.discrete_offset + self.num_discrete

    @property
    def image_offset(self) -> int:
        """First image-code id (just after the specials)."""
        return self.special_offset + len(self.special)

    @property
    def vocab_size(self) -> int:
        """Total number of ids (the size of the embedding table and logits)."""
        return self.image_offset + self.image_codes

    def special_id(self, name: str) -> int:
        """Id of a special token by name.

        Raises:
            KeyError: the name is not a special token of this layout.
        """
        try:
            return self.special_offset + self.special.index(name)
        except ValueError:
            raise KeyError(f"Unknown special token {name!r}; this layout has {list(self.special)}") from None

    @property
    def separator_id(self) -> int:
        return self.special_id("separator")

    @property
    def pad_id(self) -> int:
        return self.special_id("pad")

    @property
    def patch_id(self) -> int:
        return self.special_id("patch")

    @property
    def image_start_id(self) -> int:
        """``<image>`` (layouts with image codes only)."""
        return self.special_id("image_start")

    @property
    def image_end_id(self) -> int:
        """``</image>`` (layouts with image codes only)."""
        return self.special_id("image_end")

    def ranges(self) -> dict[str, tuple[int, int]]:
        """Every named id range as ``name -> (start, stop)``."""
        out = {
            "text": (0, self.text_size),
            "continuous": (self.continuous_offset, self.continuous_offset + self.num_bins),
            "discrete": (self.discrete_offset, self.discrete_offset + self.num_discrete),
        }
        for name in self.special:
            i = self.special_id(name)
            out[name] = (i, i + 1)
        if self.image_codes:
            out["image"] = (self.image_offset, self.image_offset + self.image_codes)
        return out

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.image_codes:  # layouts without image codes keep their JSON (checkpoints, cache digests) as before
            del d["image_codes"], d["image_model"]
        d["special"] = list(self.special)
        d["ranges"] = {k: list(v) for k, v in self.ranges().items()}  # informative, ignored on load
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "VocabLayout":
        d = {k: v for k, v in d.items() if k != "ranges"}
        d["special"] = tuple(d.get("special", SPECIAL_TOKENS))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "VocabLayout":
        return cls.from_dict(json.loads(text))

    def diff(self, other: "VocabLayout") -> list[str]:
        """Human-readable differences between two layouts (empty when equal)."""
        a, b = self.to_dict(), other.to_dict()
        keys = sorted((set(a) | set(b)) - {"ranges"})  # ranges are derived from the fields
        return [f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
