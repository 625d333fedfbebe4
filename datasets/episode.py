"""Episodes: one demonstration as numpy arrays (:class:`Episode`), and the same converted to Arrow columns with its
statistics (:class:`PreparedEpisode`, made by :func:`prepare_episode` in collection workers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from omnipolicy.tokenizers.spec import TimestepSpec

from .images import image_column
from .schema import spec_features, tensor_column
from .stats import image_stats, numeric_stats


@dataclass
class Episode:
    """One demonstration: T observations, the T actions taken after them and the T rewards that followed.

    Attributes:
        task_id: registry id of the task (e.g. ``"metaworld/reach-v3"``).
        observations: field name -> values with a leading time axis T (images uint8 (T, H, W, C), vectors
            (T, *shape), discrete ints (T, *shape), text: a sequence of T strings).
        actions: (T, *action.shape) in the action's dtype (a text action: T strings).
        rewards: (T,) reward received after each action.
        success: whether the episode solved the task (None where the task has no success signal).
        seed: the reset seed that produced the episode (collection skips seeds already stored).
        terminated: True when the episode ended in a terminal state, False when it was truncated.
        spec: the task's timestep spec; needed only the first time a task is appended to a store.
        instruction: natural-language task description (LeRobot's ``task``); defaults to the task id.
    """

    task_id: str
    observations: dict[str, Any]
    actions: np.ndarray
    rewards: np.ndarray
    success: bool | None = None
    seed: int | None = None
    terminated: bool = False
    spec: TimestepSpec | None = field(default=None, repr=False)
    instruction: str | None = None

    @property
    def length(self) -> int:
        """Number of timesteps T."""
        return int(len(self.rewards))

    @property
    def episode_return(self) -> float:
        """Undiscounted sum of rewards."""
        return float(np.sum(np.asarray(self.rewards, dtype=np.float64)))


@dataclass
class PreparedEpisode:
    """An episode already converted to Arrow columns (PNG-encoded) with its stats.

    Built by :func:`prepare_episode`, which collection workers call so that PNG encoding and statistics run
    in parallel; :meth:`EpisodeStore.append_episodes` takes these or plain :class:`Episode` objects.
    """

    task_id: str
    spec: TimestepSpec
    instruction: str
    length: int
    columns: dict[str, pa.Array]  # feature key -> (T,) array, without the index columns
    stats: dict[str, dict[str, np.ndarray]]
    episode_return: float
    success: bool | None
    seed: int | None
    terminated: bool


def _check_episode(ep: Episode, spec: TimestepSpec) -> int:
    t = len(np.asarray(ep.rewards).reshape(-1))
    if t == 0:
        raise ValueError(f"Episode of {ep.task_id!r} has no timesteps")
    names = {f.name for f in spec.observation}
    if set(ep.observations) != names:
        raise ValueError(
            f"Episode of {ep.task_id!r}: observation keys {sorted(ep.observations)} do not match the spec's "
            f"{sorted(names)}"
        )
    for f in spec.observation:
        value = ep.observations[f.name]
        if f.kind == "text":
            if len(value) != t or not all(isinstance(s, str) for s in value):
                raise ValueError(f"Episode of {ep.task_id!r}: text field {f.name!r} needs {t} strings")
            continue
        arr = np.asarray(value)
        if arr.shape != (t, *f.shape):
            raise ValueError(
                f"Episode of {ep.task_id!r}: field {f.name!r} has shape {arr.shape}, expected {(t, *f.shape)}"
            )
        if f.kind == "image" and arr.dtype != np.uint8:
            raise ValueError(f"Episode of {ep.task_id!r}: image {f.name!r} must be uint8, got {arr.dtype}")
    actions = np.asarray(ep.actions)
    if actions.shape != (t, *spec.action.shape):
        raise ValueError(
            f"Episode of {ep.task_id!r}: actions have shape {actions.shape}, expected {(t, *spec.action.shape)}"
        )
    return t


def prepare_episode(ep: Episode, spec: TimestepSpec | None = None) -> PreparedEpisode:
    """Validate an episode against its spec and convert it to Arrow columns (PNG-encoded) with stats.

    Raises:
        ValueError: keys, shapes or dtypes differ from the spec, or no spec is known.
    """
    spec = spec or ep.spec
    if spec is None:
        raise ValueError(f"Episode of {ep.task_id!r} carries no TimestepSpec and none was given")
    t = _check_episode(ep, spec)
    features, columns = spec_features(spec)
    cols: dict[str, pa.Array] = {}
    stats: dict[str, dict[str, np.ndarray]] = {}
    for f in spec.observation:
        key, value = columns[f.name], ep.observations[f.name]
        if f.kind == "image":
            frames = np.ascontiguousarray(value)
            cols[key], stats[key] = image_column(frames), image_stats(frames)
        elif f.kind == "text":
            cols[key] = pa.array([str(s) for s in value], pa.string())
        else:
            arr = np.asarray(value, dtype=f.dtype)
            cols[key], stats[key] = tensor_column(arr, f.shape), numeric_stats(arr)
    if spec.action.kind == "text":  # answers: a string column, no statistics (as text observations)
        cols["action"] = pa.array([str(s) for s in np.asarray(ep.actions).reshape(t)], pa.string())
    else:
        actions = np.asarray(ep.actions, dtype=spec.action.dtype)
        cols["action"], stats["action"] = tensor_column(actions, spec.action.shape), numeric_stats(actions)
    rewards = np.asarray(ep.rewards, dtype=np.float32).reshape(t)
    done = np.zeros(t, dtype=bool)
    done[-1] = True
    cols["next.reward"], stats["next.reward"] = pa.array(rewards), numeric_stats(rewards)
    cols["next.done"], stats["next.done"] = pa.array(done), numeric_stats(done)
    return PreparedEpisode(
        task_id=ep.task_id,
        spec=spec,
        instruction=ep.instruction if ep.instruction else ep.task_id,
        length=t,
        columns=cols,
        stats=stats,
        episode_return=ep.episode_return,
        success=None if ep.success is None else bool(ep.success),
        seed=None if ep.seed is None else int(ep.seed),
        terminated=bool(ep.terminated),
    )
