"""Minari export/import (optional extra): export then import gives back the same episodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from omnipolicy.datasets import EpisodeStore

pytest.importorskip("minari")


def test_minari_round_trip_every_modality(tmp_path: Path, make_episode, assert_same, everything_spec) -> None:
    from omnipolicy.datasets.minari_io import export_minari, import_minari

    src = EpisodeStore(tmp_path / "src")
    eps = [make_episode(s) for s in (17, 40, 3)]  # seeds unlike the episode indices
    eps[2].seed = None  # an episode with no recorded seed comes back with none
    src.append_episodes(eps)
    src.close()
    dataset_id = export_minari(tmp_path / "src", tmp_path / "minari")
    assert dataset_id == "omnipolicy/toy-everything/expert-v0"
    msg = import_minari(dataset_id, tmp_path / "minari", tmp_path / "dst", "toy/everything-v0",
                        spec=everything_spec, instruction="Do everything at once.")
    assert msg.startswith("imported 3 episodes")
    dst = EpisodeStore(tmp_path / "dst")
    assert dst.num_episodes == 3
    assert [dst.load_episode(i).seed for i in range(3)] == [17, 40, None]
    for i, ep in enumerate(eps):
        assert_same(ep, dst.load_episode(i))


def test_minari_cli_round_trip_of_collected_data(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gymnasium")
    from omnipolicy.commands import dataset_command
    from omnipolicy.datasets.collect import collect

    collect(["classic/cartpole-v1"], 2, tmp_path / "demos", workers=0, progress=False)
    src = tmp_path / "demos" / "classic" / "cartpole-v1"
    dataset_command(["export-minari", str(src), "--out", str(tmp_path / "minari")], prog="omnipolicy dataset")
    dataset_id = capsys.readouterr().out.strip()
    dataset_command(["import-minari", dataset_id, "--minari-root", str(tmp_path / "minari"), "--out",
                     str(tmp_path / "back"), "--task", "classic/cartpole-v1"], prog="omnipolicy dataset")
    assert "imported 2 episodes" in capsys.readouterr().out
    import minari
    from gymnasium import spaces

    from omnipolicy.envs import make_env

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    exported = minari.load_dataset(dataset_id)
    assert exported.action_space == make_env("classic/cartpole-v1").action_space == spaces.Discrete(2)
    first = next(exported.iterate_episodes([0]))
    assert first.actions.shape == (len(first.rewards),)  # one int per step, as Discrete(2) holds them
    a, b = EpisodeStore(src), EpisodeStore(tmp_path / "back")
    assert b.seeds("classic/cartpole-v1") == a.seeds("classic/cartpole-v1")
    for i in range(2):
        x, y = a.load_episode(i), b.load_episode(i)
        assert y.seed == x.seed
        np.testing.assert_array_equal(x.observations["state"], y.observations["state"])
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.rewards, y.rewards)
