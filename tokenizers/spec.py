"""What a task's observations and actions look like, as the tokenizer needs it.

A :class:`TimestepSpec` names every observation field with its modality
(image, continuous vector, discrete values, text) and the action field. It is
plain data (JSON round trip), so checkpoints and token caches carry it and
inference checks live observations against it before running.

>>> spec = TimestepSpec(
...     observation=(FieldSpec("state", "continuous", (39,), "float64"),
...                  FieldSpec("instruction", "text", (), "str")),
...     action=FieldSpec("action", "continuous", (4,), "float32", low=(-1.0,) * 4, high=(1.0,) * 4),
... )
>>> TimestepSpec.from_dict(spec.to_dict()) == spec
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from .vocab import NUM_DISCRETE

Kind = Literal["image", "continuous", "discrete", "text"]
KINDS: tuple[str, ...] = ("image", "continuous", "discrete", "text")
_DTYPE_KINDS = {"f": "floating", "i": "integer", "u": "integer", "b": "boolean"}


@dataclass(frozen=True)
class FieldSpec:
    """One named array of an observation or action.

    Attributes:
        name: key in the observation mapping (or ``"action"``).
        kind: ``image`` (uint8 H x W x C, C in {1, 3}), ``continuous`` (float
            array, mu-law or bounded-linear binning), ``discrete`` (integers in
            ``[0, n)``), or ``text`` (a string; shape ``()``).
        shape: array shape of one timestep's value.
        dtype: numpy dtype name of the value (``"str"`` for text).
        low, high: for ``continuous``: per-element bounds, flattened. When
            given, values are scaled linearly to [-1, 1] (bounded mode) instead
            of mu-law companded.
        n: for ``discrete``: number of valid values per element (``<= 1024``). For ``text``: a fixed width in
            tokens (optional for an observation, required for a text action). A text observation without it is
            padded to the longest encoding of a call (an episode), so the local positions of the fields after it
            shift with its length; with it, padded to exactly ``n`` tokens, so they stay put (what a policy needs
            to tell same-looking fields apart by position, such as several objects' poses). A text action (an
            answer, a caption) is ``n`` tokens: the text, the end marker
            (:data:`~omnipolicy.tokenizers.text.END_OF_TEXT`), then the end marker repeated.
        names: optional element names, flattened (e.g. a robot's joints, as a LeRobot feature's ``names``); a
            deployment checks them against the robot's.
    """

    name: str
    kind: Kind
    shape: tuple[int, ...]
    dtype: str
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None
    n: int | None = None
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"FieldSpec {self.name!r}: unknown kind {self.kind!r}; expected one of {list(KINDS)}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.kind == "image":
            if len(self.shape) != 3 or self.shape[2] not in (1, 3):
                raise ValueError(f"FieldSpec {self.name!r}: image shape must be (H, W, C) with C in (1, 3), got {self.shape}")
        if self.kind == "text" and self.shape != ():
            raise ValueError(f"FieldSpec {self.name!r}: text shape must be (), got {self.shape}")
        if (self.low is None) != (self.high is None):
            raise ValueError(f"FieldSpec {self.name!r}: give both low and high or neither")
        if self.low is not None:
            low, high = (self._flat_bound(b, which) for b, which in ((self.low, "low"), (self.high, "high")))
            if any(not (lo < hi) for lo, hi in zip(low, high)):
                raise ValueError(f"FieldSpec {self.name!r}: every low must be < high, got low={low} high={high}")
            object.__setattr__(self, "low", low)
            object.__setattr__(self, "high", high)
        if self.kind == "text" and self.n is not None:
            if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
                raise ValueError(f"FieldSpec {self.name!r}: a text width n must be an int >= 1, got {self.n!r}")
        if self.kind == "discrete":
            if self.n is None or not (1 <= int(self.n) <= NUM_DISCRETE):
                raise ValueError(f"FieldSpec {self.name!r}: discrete fields need n in [1, {NUM_DISCRETE}], got {self.n!r}")
            object.__setattr__(self, "n", int(self.n))
        if self.names is not None:
            names = tuple(str(v) for v in self.names)
            if len(names) != self.size:
                raise ValueError(f"FieldSpec {self.name!r}: names must have one name per element ({self.size}), "
                                 f"got {len(names)}: {list(names)}")
            object.__setattr__(self, "names", names)

    def _flat_bound(self, bound, which: str) -> tuple[float, ...]:
        """A bound given flattened (``prod(shape)`` values), shaped, or broadcastable -> flat tuple."""
        arr = np.asarray(bound, dtype=np.float64)
        n = int(np.prod(self.shape, dtype=np.int64))
        try:
            flat = arr.ravel() if arr.size == n else np.broadcast_to(arr, self.shape).ravel()
        except ValueError:
            raise ValueError(f"FieldSpec {self.name!r}: {which} must have {n} values (flattened) or broadcast to "
                             f"shape {self.shape}, got shape {arr.shape}") from None
        if not np.isfinite(flat).all():
            raise ValueError(f"FieldSpec {self.name!r}: {which} must be finite, got {flat.tolist()}")
        return tuple(float(v) for v in flat)

    @property
    def size(self) -> int:
        """Number of scalar elements (tokens for continuous/discrete fields)."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.kind != "text" else 0

    @property
    def bounded(self) -> bool:
        return self.low is not None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        for k in ("low", "high"):
            if d[k] is not None:
                d[k] = list(d[k])
        if d["names"] is None:
            del d["names"]  # specs without names keep their JSON (checkpoints, caches) as before
        else:
            d["names"] = list(d["names"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FieldSpec":
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        for k in ("low", "high", "names"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


@dataclass(frozen=True)
class TimestepSpec:
    """The observation fields and the action field of one task.

    Observation fields are tokenized in Gato's order regardless of the order
    given here: text, images, then continuous/discrete tensors with keys sorted.
    """

    observation: tuple[FieldSpec, ...]
    action: FieldSpec

    def __post_init__(self) -> None:
        object.__setattr__(self, "observation", tuple(self.observation))
        names = [f.name for f in self.observation]
        if len(set(names)) != len(names):
            raise ValueError(f"TimestepSpec: duplicate observation keys in {names}")
        if self.action.kind not in ("continuous", "discrete", "text"):
            raise ValueError(f"TimestepSpec: action must be continuous, discrete or text, got {self.action.kind!r}")
        if self.action.kind == "text" and self.action.n is None:
            raise ValueError(f"TimestepSpec: a text action needs its width in tokens (n), got n=None for "
                             f"{self.action.name!r}")

    def fields(self, kind: str) -> tuple[FieldSpec, ...]:
        """Observation fields of one kind, in tokenization order (sorted by name)."""
        return tuple(sorted((f for f in self.observation if f.kind == kind), key=lambda f: f.name))

    def instructions(self) -> tuple[FieldSpec, ...]:
        """The text observations that say what to do (kept through an episode unless changed on purpose): every
        text observation of a task that acts; none of a task that answers in text (its text observations are
        per-step questions)."""
        return () if self.action.kind == "text" else self.fields("text")

    def field(self, name: str) -> FieldSpec:
        for f in self.observation:
            if f.name == name:
                return f
        raise KeyError(f"No observation field {name!r}; fields are {[f.name for f in self.observation]}")

    def to_dict(self) -> dict:
        return {"observation": [f.to_dict() for f in self.observation], "action": self.action.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "TimestepSpec":
        return cls(tuple(FieldSpec.from_dict(f) for f in d["observation"]), FieldSpec.from_dict(d["action"]))


def check_observation(spec: TimestepSpec, obs: Mapping[str, Any], where: str = "observation") -> None:
    """Check one timestep's observation against a spec before tokenizing it or acting on it.

    The keys must be exactly the spec's; every value must have its field's shape. Images must be uint8;
    continuous fields need a floating dtype (any width) and finite values, discrete fields an integer dtype
    (any width); text fields must be ``str``.

    >>> spec = TimestepSpec((FieldSpec("state", "continuous", (2,), "float32"),),
    ...                     FieldSpec("action", "discrete", (), "int64", n=3))
    >>> check_observation(spec, {"state": np.zeros(2)})  # float64 for float32: the same kind, accepted
    >>> check_observation(spec, {"state": np.zeros(3)})
    Traceback (most recent call last):
    ValueError: observation: key 'state' expected shape (2,), got (3,)

    Args:
        spec: the task's timestep spec.
        obs: field name -> value of one timestep (no time axis).
        where: how the observation is named in errors (e.g. ``"env 0 observation"``).

    Raises:
        KeyError: a key is missing or unexpected (naming it, the expected and the given keys).
        ValueError: a field has the wrong shape, dtype or a non-finite value (naming key, expected and actual).
    """
    expected = sorted(f.name for f in spec.observation)
    given = sorted(obs)
    missing = [k for k in expected if k not in obs]
    extra = [k for k in given if k not in expected]
    if missing or extra:
        what = f"missing key {missing[0]!r}" if missing else f"unexpected key {extra[0]!r}"
        raise KeyError(f"{where}: {what}; expected keys {expected}, got {given}")
    for f in spec.observation:
        _check_field(f, obs[f.name], where)


def _check_field(f: FieldSpec, value: Any, where: str) -> None:
    if f.kind == "text":
        if not isinstance(value, str):
            raise ValueError(f"{where}: key {f.name!r} expected a str (text), got {type(value).__name__}")
        return
    arr = np.asarray(value)
    if arr.shape != f.shape:
        raise ValueError(f"{where}: key {f.name!r} expected shape {f.shape}, got {arr.shape}")
    want = np.dtype(f.dtype)
    if f.kind == "image":
        ok = arr.dtype == np.uint8
    elif f.kind == "continuous":
        ok = arr.dtype.kind == "f"
    else:  # discrete
        ok = arr.dtype.kind in "iu"
    if not ok:
        family = "" if f.kind == "image" else f" (or another {_DTYPE_KINDS[want.kind]} dtype)"
        raise ValueError(f"{where}: key {f.name!r} expected dtype {want}{family}, got {arr.dtype}")
    if f.kind == "continuous" and not np.isfinite(arr).all():
        bad = arr[~np.isfinite(arr)]
        raise ValueError(f"{where}: key {f.name!r} expected finite values, got {bad.size} NaN/inf value(s) "
                         f"(first {bad[0].item()!r}): {arr.tolist()}")
