"""Whole episodes -> one token sequence, and action tokens -> actions.

One timestep is laid out as (Gato, section 2.1)::

    [text tokens (text fields sorted by key, each padded to the longest
     encoding in the call)] [image patch slots (images sorted by key, raster
     order)] [continuous / discrete tensor tokens (keys sorted, row-major)]
    [separator '|'] [action tokens (row-major)]

A tokenizer that carries an image tokenizer (:meth:`Tokenizer.with_image_tokenizer`) writes each image as
``<image>`` + one code per 16x16 patch (ids of the layout's image range) + ``</image>`` instead of patch
slots, so an image is ordinary tokens of the shared vocabulary and no patches come out.

Every timestep of one call has the same length ``L``. The whole episode is
produced with numpy array operations over the time axis; there is no Python
loop per timestep (only per field).

>>> from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec
>>> spec = TimestepSpec((FieldSpec("state", "continuous", (3,), "float64"),),
...                     FieldSpec("action", "discrete", (), "int64", n=2))
>>> tok = Tokenizer.default()
>>> ep = tok.tokenize_episode(spec, {"state": np.zeros((5, 3))}, np.array([0, 1, 1, 0, 1]))
>>> ep.tokens_per_timestep, ep.obs_tokens_per_timestep, ep.action_size, ep.tokens.shape
(5, 4, 1, (25,))
>>> tok.decode_actions(spec, ep.tokens.reshape(5, 5)[:, 4:]).tolist()
[0, 1, 1, 0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple, Sequence

import numpy as np

from .continuous import decode_continuous, encode_continuous
from .discrete import encode_discrete
from .image import PATCH, image_to_patches, normalize_patches
from .image_vq import ImageTokenizer
from .spec import FieldSpec, TimestepSpec
from .text import END_OF_TEXT, TextTokenizer
from .vocab import NUM_BINS, NUM_DISCRETE, VocabLayout


@dataclass
class TokenizedEpisode:
    """A tokenized episode (``N = T * L`` tokens, ``P`` image patches).

    Attributes:
        tokens: int32 ``(N,)`` token ids; ``layout.patch_id`` where a patch goes.
        loss_mask: bool ``(N,)``, True on action tokens and non-pad text tokens.
        local_pos: int32 ``(N,)`` position within the timestep, ``0..L-1``.
        timestep: int32 ``(N,)`` timestep index, ``0..T-1``.
        patches: float32 ``(P, 3, 16, 16)`` in [-0.25, 0.25], or uint8
            ``(P, 16, 16, 3)`` when tokenized with ``raw_patches=True``; the k-th
            ``patch_id`` token in ``tokens`` is ``patches[k]`` (with ``image_slots``, see :meth:`Tokenizer.tokenize_episode`).
        patch_pos: int32 ``(P, 2)`` ``(row, col)`` of each patch in its image.
        tokens_per_timestep: ``L``.
        obs_tokens_per_timestep: tokens of a timestep up to and including the separator.
        action_size: ``A``, the number of action tokens per timestep (0 without actions).
        clipped: number of clipped values per continuous field (observations and action).
        segments: ``(name, kind, start, stop)`` of every field within a timestep, in
            order; the separator is ``("|", "separator", ...)``.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray
    local_pos: np.ndarray
    timestep: np.ndarray
    patches: np.ndarray
    patch_pos: np.ndarray
    tokens_per_timestep: int
    obs_tokens_per_timestep: int
    action_size: int
    clipped: dict[str, int] = field(default_factory=dict)
    segments: tuple[tuple[str, str, int, int], ...] = ()

    @property
    def num_timesteps(self) -> int:
        """``T``."""
        return self.tokens.shape[0] // self.tokens_per_timestep if self.tokens_per_timestep else 0

    def per_timestep(self, array: np.ndarray | None = None) -> np.ndarray:
        """View of a per-token array (default ``tokens``) as ``(T, L)``."""
        array = self.tokens if array is None else array
        return array.reshape(self.num_timesteps, self.tokens_per_timestep)

    def action_tokens(self) -> np.ndarray:
        """int32 ``(T, A)`` action tokens (``(T, 0)`` when tokenized without actions)."""
        return self.per_timestep()[:, self.obs_tokens_per_timestep:]


class _Block(NamedTuple):
    """One field's tokens within every timestep."""

    name: str
    kind: str
    ids: np.ndarray  # (T, k) or (1, k) when the same for every timestep
    loss: np.ndarray | bool  # (T, k) or one value for the whole block


def _field_array(observations: Mapping, f: FieldSpec, t: int | None) -> np.ndarray:
    if f.name not in observations:
        raise KeyError(f"Observation field {f.name!r} is missing; got keys {sorted(observations)}")
    x = np.asarray(observations[f.name])
    if x.ndim == len(f.shape) + 1 and x.shape[1:] == f.shape and (t is None or x.shape[0] == t):
        return x
    want = ("T" if t is None else t, *f.shape)
    raise ValueError(f"Observation field {f.name!r} ({f.kind}) must have shape {want}, got {x.shape}")


class _Chunks(NamedTuple):
    """An episode's actions and, per kept timestep, the ticks of its chunk (clipped to the last action)."""

    actions: np.ndarray  # (T_episode, *action shape)
    ticks: np.ndarray  # int64 (T, chunk): indices into actions
    valid: np.ndarray  # bool (T, chunk): False where the episode had ended (the last action repeats)


def _strided(spec: TimestepSpec, observations: Mapping, actions: np.ndarray | None, chunk: int,
             stride: int) -> tuple[dict, _Chunks | None]:
    """The observations at ticks ``0, stride, ...`` and each kept tick's chunk of actions."""
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride <= chunk:
        raise ValueError(f"stride must be an int in [1, chunk={chunk}], got {stride!r}")
    if actions is not None:
        actions, t = _checked_actions(spec, actions)
        for f in spec.observation:
            if f.name in observations and len(observations[f.name]) != t:
                raise ValueError(f"Observation field {f.name!r} has {len(observations[f.name])} timesteps, "
                                 f"expected {t} (one per action)")
    obs = {}
    for f in spec.observation:
        if f.name in observations:
            x = observations[f.name]
            obs[f.name] = list(x)[::stride] if f.kind == "text" and not isinstance(x, np.ndarray) else np.asarray(x)[::stride]
    if actions is None:
        return obs, None
    ticks = np.arange(0, t, stride)[:, None] + np.arange(chunk)  # (T, chunk)
    return obs, _Chunks(actions, np.minimum(ticks, t - 1), ticks < t)


def _checked_actions(spec: TimestepSpec, actions: np.ndarray | _Chunks | None) -> tuple[np.ndarray | _Chunks | None, int | None]:
    """Actions as an array (or chunks) and the number of timesteps they fill (None without actions)."""
    if actions is None:
        return None, None
    if isinstance(actions, _Chunks):
        return actions, len(actions.ticks)
    actions = np.asarray(actions)
    if actions.ndim < 1:
        raise ValueError(f"Actions need a leading time axis (T, ...) for field {spec.action.name!r}, got a scalar")
    return actions, actions.shape[0]


def _lay_out_blocks(
    blocks: Sequence[_Block], t: int, length: int
) -> tuple[np.ndarray, np.ndarray, tuple[tuple[str, str, int, int], ...]]:
    """The blocks side by side: int32 tokens ``(T, L)``, bool loss ``(T, L)`` and each block's segment."""
    tokens = np.empty((t, length), dtype=np.int32)  # (T, L)
    loss = np.zeros((t, length), dtype=bool)  # (T, L)
    col, segments = 0, []
    for b in blocks:
        k = b.ids.shape[1]
        segments.append((b.name, b.kind, col, col + k))
        tokens[:, col:col + k] = b.ids  # broadcasts (1, k) constant blocks over T
        if b.loss is not False:
            loss[:, col:col + k] = b.loss
        col += k
    return tokens, loss, tuple(segments)


def _episode_patches(
    raw_list: Sequence[np.ndarray], pos_list: Sequence[np.ndarray], t: int, raw_patches: bool
) -> tuple[np.ndarray, np.ndarray]:
    """All images' patches ``(P, ...)``, timestep-major like the tokens, and their positions ``(P, 2)``."""
    if raw_list:
        raw = np.concatenate(raw_list, axis=1) if len(raw_list) > 1 else raw_list[0]  # (T, n, 16, 16, 3)
        raw = raw.reshape(-1, PATCH, PATCH, 3)  # (P, 16, 16, 3), timestep-major like the tokens
        patches = raw if raw_patches else normalize_patches(raw)
        patch_pos = np.tile(np.concatenate(pos_list, axis=0), (t, 1))  # (P, 2)
    else:
        patches = np.zeros((0, PATCH, PATCH, 3), np.uint8) if raw_patches else np.zeros((0, 3, PATCH, PATCH), np.float32)
        patch_pos = np.zeros((0, 2), np.int32)
    return patches, patch_pos


class Tokenizer:
    """Turns episodes into tokens and action tokens back into actions.

    Args:
        text: the text tokenizer (SentencePiece).
        layout: the id layout; default ``VocabLayout(text_size=text.vocab_size)``
            tagged with the text model's hash (and with ``image``'s code range).
        image: an image tokenizer: images become ``<image>`` codes ``</image>`` instead of patch slots.

    Raises:
        ValueError: ``layout`` does not match the text model or the image tokenizer.
    """

    def __init__(self, text: TextTokenizer, layout: VocabLayout | None = None,
                 image: ImageTokenizer | None = None) -> None:
        expected = VocabLayout(text_size=text.vocab_size, text_model=text.sha256[:16])
        if image is not None:
            expected = expected.with_image_codes(image.num_codes, image.sha256[:16])
        layout = expected if layout is None else layout
        if layout.text_size != text.vocab_size or (layout.text_model and layout.text_model != expected.text_model):
            raise ValueError(f"VocabLayout does not match the text model: {'; '.join(layout.diff(expected))}")
        if (layout.image_codes, layout.image_model) != (expected.image_codes, expected.image_model):
            raise ValueError(f"VocabLayout does not match the image tokenizer ({image!r}): "
                             f"{'; '.join(layout.diff(expected))}")
        if layout.num_bins != NUM_BINS or layout.num_discrete != NUM_DISCRETE:
            raise ValueError(f"VocabLayout must have {NUM_BINS} bins and {NUM_DISCRETE} discrete ids, got {layout}")
        self.text = text
        self.layout = layout
        self.image = image
        end = text.encode(END_OF_TEXT)
        if len(end) != 1:
            raise ValueError(f"The text model must encode the end marker {END_OF_TEXT!r} as one id, got {end}")
        self.end_id = end[0]
        """The text id that ends a text action (:data:`~omnipolicy.tokenizers.text.END_OF_TEXT`)."""

    @classmethod
    def default(cls) -> "Tokenizer":
        """The tokenizer with the shipped SentencePiece model (``tokenizers/assets/text.model``)."""
        return cls(TextTokenizer.default())

    @classmethod
    def from_model_file(cls, path: str | Path) -> "Tokenizer":
        """A tokenizer with another SentencePiece model (trained with byte fallback)."""
        return cls(TextTokenizer.from_file(path))

    def with_image_tokenizer(self, image: ImageTokenizer | None) -> "Tokenizer":
        """This tokenizer writing images as ``image``'s codes (``None``: as patch slots), with the matching layout."""
        if image is None:
            return Tokenizer(self.text)
        return Tokenizer(self.text, image=image)

    def __repr__(self) -> str:
        return f"Tokenizer(layout={self.layout})"

    # ------------------------------------------------------------------ text
    def encode_text(self, text: str) -> np.ndarray:
        """One string -> int32 text ids in ``[0, layout.text_size)``."""
        return np.asarray(self.text.encode(text), dtype=np.int32)

    def decode_text(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text ids -> string (exact inverse of :meth:`encode_text`)."""
        return self.text.decode(np.asarray(ids).ravel().tolist())

    # --------------------------------------------------------------- tensors
    def _encode_tensor(self, f: FieldSpec, x: np.ndarray, t: int) -> tuple[np.ndarray, int]:
        """``(T, *shape)`` values -> int64 ``(T, size)`` token ids and the clipped count."""
        x = x.reshape(t, f.size)
        if f.kind == "continuous":
            bins, clipped = encode_continuous(x, f.low, f.high, field=f.name, element_ndim=1)
            bins += self.layout.continuous_offset
            return bins, clipped
        if f.kind == "discrete":
            return encode_discrete(x, f.n, field=f.name) + self.layout.discrete_offset, 0
        raise ValueError(f"Field {f.name!r}: kind {f.kind!r} is not a tensor kind (continuous, discrete)")

    def encode_actions(self, spec: TimestepSpec, actions: np.ndarray) -> tuple[np.ndarray, int]:
        """Actions ``(T, *spec.action.shape)`` -> int64 ``(T, A)`` token ids and the clipped count.

        Raises:
            ValueError: wrong shape, NaN/inf, or a discrete value out of range.
        """
        a = spec.action
        if a.kind == "text":
            return self.encode_text_actions(a, actions), 0
        x = np.asarray(actions)
        if x.ndim != len(a.shape) + 1 or x.shape[1:] != a.shape:
            raise ValueError(f"Actions must have shape (T, {', '.join(map(str, a.shape))}) for field "
                             f"{a.name!r}, got {x.shape}".replace(", )", ")"))
        return self._encode_tensor(a, x, x.shape[0])

    def encode_text_actions(self, a: FieldSpec, texts: Sequence[str] | np.ndarray) -> np.ndarray:
        """``T`` answers -> int64 ``(T, n)`` text ids: each answer, the end marker, the end marker repeated.

        Raises:
            ValueError: an answer holds the end marker or does not fit in ``n - 1`` tokens.
        """
        texts = [str(t) for t in np.asarray(texts, dtype=object).reshape(-1)]
        ids, lengths = self.text.encode_batch(texts, field=a.name)  # (T, k), -1 = pad
        for i, t in enumerate(texts):
            if END_OF_TEXT in t or lengths[i] >= a.n:
                raise ValueError(f"Text action {a.name!r} takes answers of at most {a.n - 1} tokens without "
                                 f"{END_OF_TEXT!r}; timestep {i} is {t!r} ({int(lengths[i])} tokens)")
        out = np.full((len(texts), a.n), self.end_id, np.int64)  # (T, n)
        out[:, : ids.shape[1]] = np.where(ids >= 0, ids, self.end_id)
        return out

    # --------------------------------------------------------------- episode
    def tokenize_episode(
        self,
        spec: TimestepSpec,
        observations: Mapping[str, np.ndarray | Sequence[str]],
        actions: np.ndarray | None,
        raw_patches: bool = False,
        chunk: int = 1,
        stride: int = 1,
        image_slots: int | None = None,
    ) -> TokenizedEpisode:
        """Tokenize ``T`` timesteps at once (see the module docstring for the layout).

        With action chunking (:mod:`~omnipolicy.tokenizers.chunking`) the timesteps are the ticks ``0, stride,
        2 * stride, ...`` of the episode, and the action part of the one at tick ``t`` holds the actions
        ``a_t .. a_{t+chunk-1}`` (``chunk * A`` tokens); past the episode's end the last action repeats with its
        loss masked off (ACT).

        Args:
            spec: the task's timestep spec.
            observations: every observation field with a leading time axis
                (images uint8 ``(T, H, W, C)``; continuous ``(T, *shape)``;
                discrete ints ``(T, *shape)``; text: ``T`` strings). Keys not in
                ``spec`` are ignored.
            actions: ``(T, *spec.action.shape)`` or ``None`` (each timestep then
                ends with the separator: what the policy sees before acting).
            raw_patches: return uint8 ``(P, 16, 16, 3)`` patches instead of floats
                (:func:`normalize_patches` converts them later).
            chunk: actions per timestep (``ActionChunking.for_action`` gives it; 1: Gato's one action).
            stride: ticks between timesteps (``1 <= stride <= chunk``); the observations at the ticks between are
                left out.
            image_slots: sequence slots (``patch_id`` tokens) per image: ``None`` for one per patch (Gato), ``N``
                for a model that encodes each image into ``N`` vectors (the k-th slot then reads vector
                ``k % N`` of image ``k // N``), 0 for a model that takes images outside the sequence. The
                patches are returned whole in every case. ``None`` with an image tokenizer (its images are codes).

        Returns:
            The :class:`TokenizedEpisode`.

        Raises:
            KeyError: an observation field is missing.
            ValueError: shapes or lengths disagree with the spec or each other,
                a continuous value is NaN/inf, a discrete value is out of range,
                or an image is not uint8, or a bad ``chunk`` / ``stride`` / ``image_slots``.
        """
        if chunk != 1 or stride != 1:
            observations, actions = _strided(spec, observations, actions, chunk, stride)
        actions, t = _checked_actions(spec, actions)
        text_blocks, t = self._text_blocks(spec, observations, t)
        image_blocks, raw_list, pos_list, t = self._image_blocks(spec, observations, t, image_slots)
        tensor_blocks, clipped, t = self._tensor_blocks(spec, observations, t)
        if t is None:
            raise ValueError("Cannot tokenize an episode with no observation fields and no actions")
        separator = _Block("|", "separator", np.full((1, 1), self.layout.separator_id, np.int64), False)
        blocks = [*text_blocks, *image_blocks, *tensor_blocks, separator]
        obs_len = sum(b.ids.shape[1] for b in blocks)
        if actions is not None:
            blocks.append(self._action_block(spec, actions, clipped, chunk))
        length = sum(b.ids.shape[1] for b in blocks)
        action_size = length - obs_len
        tokens, loss, segments = _lay_out_blocks(blocks, t, length)
        patches, patch_pos = _episode_patches(raw_list, pos_list, t, raw_patches)
        return TokenizedEpisode(
            tokens=tokens.reshape(-1),
            loss_mask=loss.reshape(-1),
            local_pos=np.tile(np.arange(length, dtype=np.int32), t),
            timestep=np.repeat(np.arange(t, dtype=np.int32), length),
            patches=patches,
            patch_pos=patch_pos.astype(np.int32, copy=False),
            tokens_per_timestep=length,
            obs_tokens_per_timestep=obs_len,
            action_size=action_size,
            clipped=clipped,
            segments=segments,
        )

    # The field steps of tokenize_episode, in layout order. Each takes ``t`` (the
    # number of timesteps once a field or the actions have fixed it, else None)
    # and returns it, fixed by its fields.
    def _text_blocks(self, spec: TimestepSpec, observations: Mapping, t: int | None) -> tuple[list[_Block], int | None]:
        """Text: ``(T, k)`` ids, padded with ``pad_id`` to the longest encoding in this call."""
        blocks = []
        for f in spec.fields("text"):
            if f.name not in observations:
                raise KeyError(f"Observation field {f.name!r} is missing; got keys {sorted(observations)}")
            texts = observations[f.name]
            texts = texts.tolist() if isinstance(texts, np.ndarray) else texts
            ids, lengths = self.text.encode_batch(texts, field=f.name)  # (T, k), -1 = pad
            if f.n is not None:  # per-step text: exactly n tokens
                if len(lengths) and lengths.max() > f.n:
                    i = int(lengths.argmax())
                    raise ValueError(f"Text field {f.name!r} holds at most {f.n} tokens, timestep {i} has "
                                     f"{int(lengths[i])}: {texts[i]!r}")
                ids = np.pad(ids, ((0, 0), (0, f.n - ids.shape[1])), constant_values=-1)
            if t is None:
                t = ids.shape[0]
            elif ids.shape[0] != t:
                raise ValueError(f"Observation field {f.name!r} has {ids.shape[0]} timesteps, expected {t}")
            keep = ids >= 0
            blocks.append(_Block(f.name, f.kind, np.where(keep, ids, self.layout.pad_id), keep))
        return blocks, t

    def _image_blocks(
        self, spec: TimestepSpec, observations: Mapping, t: int | None, image_slots: int | None = None
    ) -> tuple[list[_Block], list[np.ndarray], list[np.ndarray], int | None]:
        """Images: their slots (one per patch, or ``image_slots``), with each image's raw patches
        ``(T, n, 16, 16, 3)`` and positions ``(n, 2)``; with an image tokenizer ``<image>`` codes ``</image>``
        ``(T, n + 2)`` and no patches."""
        if image_slots is not None and (isinstance(image_slots, bool) or not isinstance(image_slots, (int, np.integer))
                                        or image_slots < 0):
            raise ValueError(f"image_slots must be None (one slot per patch) or an int >= 0, got {image_slots!r}")
        if image_slots is not None and self.image is not None:
            raise ValueError(f"image_slots={image_slots!r} lays out image slots, but this tokenizer writes images as "
                             "the codes of its image tokenizer; expected image_slots=None")
        blocks, raw_list, pos_list = [], [], []
        for f in spec.fields("image"):
            x = _field_array(observations, f, t)
            t = x.shape[0]
            if self.image is not None:
                codes = self.image.encode(x, field=f.name) + self.layout.image_offset  # (T, n)
                ids = np.empty((t, codes.shape[1] + 2), np.int64)
                ids[:, 0], ids[:, 1:-1], ids[:, -1] = self.layout.image_start_id, codes, self.layout.image_end_id
                blocks.append(_Block(f.name, f.kind, ids, False))
                continue
            raw, pos = image_to_patches(x, field=f.name)
            raw_list.append(raw)
            pos_list.append(pos)
            n = pos.shape[0] if image_slots is None else int(image_slots)
            if n:
                blocks.append(_Block(f.name, f.kind, np.full((1, n), self.layout.patch_id, np.int64), False))
        return blocks, raw_list, pos_list, t

    def _tensor_blocks(
        self, spec: TimestepSpec, observations: Mapping, t: int | None
    ) -> tuple[list[_Block], dict[str, int], int | None]:
        """Continuous / discrete tensors, keys sorted, with the clipped count of each continuous field."""
        tensor_fields = tuple(sorted((f for f in spec.observation if f.kind in ("continuous", "discrete")),
                                     key=lambda f: f.name))
        blocks, clipped = [], {}
        for f in tensor_fields:
            x = _field_array(observations, f, t)
            t = x.shape[0]
            ids, n_clip = self._encode_tensor(f, x, t)
            if f.kind == "continuous":
                clipped[f.name] = n_clip
            blocks.append(_Block(f.name, f.kind, ids, False))
        return blocks, clipped, t

    def _action_block(self, spec: TimestepSpec, actions: np.ndarray | _Chunks, clipped: dict[str, int],
                      chunk: int = 1) -> _Block:
        """Action tokens ``(T, chunk * A)``, adding a continuous action's clipped count to ``clipped``."""
        if chunk == 1 and not isinstance(actions, _Chunks):
            ids, n_clip = self.encode_actions(spec, actions)
            loss: np.ndarray | bool = True
        else:  # encode every action once, then gather each timestep's chunk
            ids, n_clip = self.encode_actions(spec, actions.actions)
            ids = ids[actions.ticks].reshape(len(actions.ticks), -1)  # (T, chunk * A)
            loss = np.repeat(actions.valid, ids.shape[1] // actions.valid.shape[1], axis=1)  # (T, chunk * A)
        if spec.action.kind == "continuous":
            clipped[spec.action.name] = n_clip
        return _Block(spec.action.name, "action", ids, loss)

    # --------------------------------------------------------------- actions
    def action_token_ranges(self, spec: TimestepSpec) -> np.ndarray:
        """int64 ``(A, 2)``: the valid ``[lo, hi)`` token ids of each action element."""
        a = spec.action
        if a.kind == "text":
            out = np.zeros((a.n, 2), dtype=np.int64)
            out[:, 1] = self.layout.text_size
            return out
        if a.kind == "continuous":
            lo, hi = self.layout.continuous_offset, self.layout.continuous_offset + NUM_BINS
        else:
            lo, hi = self.layout.discrete_offset, self.layout.discrete_offset + a.n
        out = np.empty((a.size, 2), dtype=np.int64)
        out[:, 0], out[:, 1] = lo, hi
        return out

    def decode_actions(self, spec: TimestepSpec, action_tokens: np.ndarray) -> np.ndarray:
        """Action tokens ``(..., A)`` -> actions ``(..., *spec.action.shape)`` in the action's dtype.

        Continuous: bin centre, then inverse mu-law (or inverse linear scaling
        in the bounded mode). Discrete: the value itself. Text: the string of
        the ids before the first end marker (a str array of shape ``(...)``).

        Raises:
            ValueError: the last axis is not ``A``, or a token is outside its
                element's range (see :meth:`action_token_ranges`).
        """
        a = spec.action
        tok = np.asarray(action_tokens)
        width = a.n if a.kind == "text" else a.size
        if tok.ndim < 1 or tok.shape[-1] != width:
            raise ValueError(f"Action tokens must have shape (..., {width}) for action {a.name!r}, got {tok.shape}")
        if tok.dtype.kind not in "iu":
            raise ValueError(f"Action tokens must be integers, got dtype {tok.dtype}")
        lo, hi = self.action_token_ranges(spec)[0]
        bad = (tok < lo) | (tok >= hi)
        if bad.any():
            idx = tuple(np.argwhere(bad)[0].tolist())
            raise ValueError(f"Action token {tok[idx]} at index {idx} is outside the valid range [{lo}, {hi}) "
                             f"for {a.kind} action {a.name!r}")
        if a.kind == "text":
            rows = tok.reshape(-1, width).tolist()
            texts = [self.decode_text(r[: r.index(self.end_id)] if self.end_id in r else r) for r in rows]
            return np.array(texts, dtype=object).reshape(tok.shape[:-1]).astype(str)
        values = tok.astype(np.int64) - lo  # (..., A)
        if a.kind == "continuous":
            values = decode_continuous(values, a.low, a.high, element_ndim=1)
        return values.reshape(*tok.shape[:-1], *a.shape).astype(np.dtype(a.dtype))
