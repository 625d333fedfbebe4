"""Export to and import from Minari (the Gymnasium ecosystem's offline-data format). Optional: needs ``minari``.

Minari stores T+1 observations per episode (the one after the last action too); an episode store keeps the
T observations the policy acted on, as LeRobot does. Export therefore repeats the last observation as the
final one (marked in the episode's ``infos["final_observation_repeated"]``), and import drops the final
observation, so export followed by import gives back the same episodes. Data is written in Minari's Arrow
format (pyarrow; no h5py needed), images lossless (``jpeg_encoding=False``). An episode's reset seed travels in
Minari's per-episode metadata (``seed``, as Minari's own ``DataCollector`` records it); Minari's ``EpisodeData``
does not carry it, so import reads it from the storage's episode metadata.

    omnipolicy dataset export-minari data/demos/classic/cartpole-v1 --out ~/.minari/datasets
    omnipolicy dataset import-minari omnipolicy/classic-cartpole/expert-v0 --minari-root ~/.minari/datasets \\
        --out data/imported/cartpole --task classic/cartpole-v1
"""

from __future__ import annotations

import contextlib
import os
import re
import string
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from omnipolicy.envs import get_task
from omnipolicy.envs.base import action_space, field_space
from omnipolicy.tokenizers import FieldSpec, TimestepSpec

from .episode import Episode
from .store import EpisodeStore


def _minari() -> Any:
    try:
        import minari
    except ImportError:
        raise ImportError("Minari export/import needs the optional package: pip install 'omnipolicy[minari]' (minari==0.5.4)") from None
    return minari


@contextlib.contextmanager
def _datasets_path(root: str | os.PathLike) -> Iterator[None]:
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _space(f: FieldSpec, charset: str) -> Any:
    """The observation space of one field: the env's own, with text over the characters the episodes use."""
    if f.kind == "text":
        return spaces.Text(max_length=4096, min_length=0, charset=charset)
    return field_space(f)


def default_dataset_id(task_id: str) -> str:
    """``omnipolicy/<domain>-<name without version>/expert-v0`` for a task id."""
    return f"omnipolicy/{re.sub(r'-v[0-9]+$', '', task_id.replace('/', '-'))}/expert-v0"


def export_minari(store_root: str | os.PathLike, minari_root: str | os.PathLike, dataset_id: str | None = None) -> str:
    """Write a one-task episode store as a Minari dataset under ``minari_root``.

    Returns:
        The Minari dataset id.

    Raises:
        ValueError: the store is empty or holds several tasks.
        ImportError: minari is not installed.
    """
    minari = _minari()
    store = EpisodeStore(store_root)
    if len(store.task_ids) != 1:
        raise ValueError(f"Minari export takes a dataset of one task; {store.root} holds {store.task_ids}")
    task_id = store.task_ids[0]
    spec = store.timestep_spec(task_id)
    episodes = list(store)
    chars = set(string.ascii_letters + string.digits)
    for ep in episodes:
        for f in spec.fields("text"):
            chars.update("".join(ep.observations[f.name]))
    charset = "".join(sorted(chars))
    obs_space = spaces.Dict({f.name: _space(f, charset) for f in spec.observation})
    act_space = action_space(spec.action)  # as the env has it: Discrete(n) for one discrete value
    buffers = []
    for i, ep in enumerate(episodes):
        obs = {}
        for f in spec.observation:
            values = ep.observations[f.name]
            obs[f.name] = list(values) + [values[-1]] if f.kind == "text" else np.concatenate([values, values[-1:]])
        actions = ep.actions.reshape(ep.length) if isinstance(act_space, spaces.Discrete) else ep.actions  # (T,) ints
        done = np.zeros(ep.length, bool)
        done[-1] = True
        buffers.append(minari.data_collector.EpisodeBuffer(
            id=i, seed=ep.seed, observations=obs, actions=actions, rewards=np.asarray(ep.rewards, np.float64),
            terminations=done & ep.terminated, truncations=done & (not ep.terminated),
            infos={"final_observation_repeated": np.ones((ep.length + 1, 1), bool),  # (T+1, 1): minari 0.5.4's arrow
                   # storage cannot decode per-step scalars
                   **({} if ep.success is None else {"success": np.full((ep.length + 1, 1), bool(ep.success))})},
        ))
    dataset_id = dataset_id or default_dataset_id(task_id)
    with _datasets_path(minari_root), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)  # minari's nags about missing authors/env specs
        minari.create_dataset_from_buffers(
            dataset_id, buffers, observation_space=obs_space, action_space=act_space,
            algorithm_name="omnipolicy scripted expert", description=f"{task_id}: {store.instruction(task_id)}",
            data_format="arrow", jpeg_encoding=False,
        )
    return dataset_id


def import_minari(dataset_id: str, minari_root: str | os.PathLike, out: str | os.PathLike, task_id: str,
                  spec: TimestepSpec | None = None, instruction: str | None = None) -> str:
    """Append a Minari dataset's episodes to the episode store at ``out``.

    Args:
        dataset_id: Minari dataset id.
        minari_root: folder holding Minari datasets (``MINARI_DATASETS_PATH``).
        out: episode store folder (created or appended to).
        task_id: the task the episodes belong to.
        spec: its TimestepSpec (default: the registered task's).
        instruction: its instruction (default: the registered task's).

    Returns:
        A one-line summary.
    """
    minari = _minari()
    if spec is None or instruction is None:
        task = get_task(task_id)
        spec, instruction = spec or task.timestep, instruction or task.instruction
    with _datasets_path(minari_root):
        ds = minari.load_dataset(dataset_id)
        episodes = []
        indices = ds.episode_indices
        for data, meta in zip(ds.iterate_episodes(indices), ds.storage.get_episode_metadata(indices), strict=True):
            t = len(data.rewards)
            obs = data.observations
            if not isinstance(obs, dict):
                raise ValueError(f"{dataset_id}: expected Dict observations with keys {[f.name for f in spec.observation]}")
            observations = {f.name: (list(obs[f.name][:t]) if f.kind == "text" else np.asarray(obs[f.name][:t], dtype=f.dtype))
                            for f in spec.observation}
            actions = np.asarray(data.actions, dtype=spec.action.dtype).reshape(t, *spec.action.shape)
            success = data.infos.get("success") if isinstance(data.infos, dict) else None
            episodes.append(Episode(task_id, observations, actions, np.asarray(data.rewards), seed=meta.get("seed"),
                                    success=None if success is None else bool(np.asarray(success).reshape(-1)[-1]),
                                    terminated=bool(np.asarray(data.terminations)[-1]), spec=spec, instruction=instruction))
    with EpisodeStore(out) as store:
        store.append_episodes(episodes)
        return f"imported {len(episodes)} episodes of {task_id} from {dataset_id} into {store.root} ({store.num_episodes} in total)"
