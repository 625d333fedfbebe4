"""Everything an agent perceives and does, as one token sequence (Gato, section 2.1).

>>> from omnipolicy.tokenizers import Tokenizer
>>> tok = Tokenizer.default()
>>> tok.layout.continuous_offset == tok.layout.text_size
True
"""

from .continuous import decode_continuous, encode_continuous, mu_law_decode, mu_law_encode
from .discrete import encode_discrete
from .episode import TokenizedEpisode, Tokenizer
from .image import image_to_patches, normalize_patches
from .image_vq import FSQConfig, ImageTokenizer
from .spec import FieldSpec, TimestepSpec, check_observation
from .text import TextTokenizer
from .vocab import SPECIAL_TOKENS, VocabLayout

__all__ = [
    "SPECIAL_TOKENS",
    "FSQConfig",
    "FieldSpec",
    "ImageTokenizer",
    "TextTokenizer",
    "TimestepSpec",
    "TokenizedEpisode",
    "Tokenizer",
    "VocabLayout",
    "check_observation",
    "decode_continuous",
    "encode_continuous",
    "encode_discrete",
    "image_to_patches",
    "mu_law_decode",
    "mu_law_encode",
    "normalize_patches",
]
