"""The vision-language tasks: answers from the data set's labels and the simulator's true state, splits by seed,
few-shot episodes, and an episode's round trip through the store and the tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from omnipolicy.envs import get_task, list_tasks, make_env, make_expert
from omnipolicy.envs.so101_scene import TRAY_HALF
from omnipolicy.envs.vqa import EVAL_SEEDS, _easy_split, caption_facts
from omnipolicy.tokenizers import Tokenizer

TOK = Tokenizer.default()


def test_the_family_registers_with_text_answers_and_measured_scores():
    ids = {s.id for s in list_tasks("vqa")}
    assert {"vqa/easy-v1", "vqa/easy-blind-v1", "vqa/easy-fewshot-v1", "vqa/so101-v1", "vqa/so101-caption-v1",
            "vqa/metaworld-v1"} <= ids
    for task_id in ids:
        spec = get_task(task_id)
        assert spec.timestep.action.kind == "text" and spec.has_success and spec.measured
        assert spec.expert_score == 1.0 and 0.0 <= spec.random_score < 0.55  # chance: a uniform answer
    assert "image" not in {f.name for f in get_task("vqa/easy-blind-v1").timestep.observation}


@pytest.mark.parametrize("seed,split", [(3, "train"), (EVAL_SEEDS + 3, "test")])
def test_easy_vqa_answers_are_the_labels_and_evaluation_seeds_draw_the_test_split(seed, split):
    env = make_env("vqa/easy-v1")
    obs, info = env.reset(seed=seed)
    questions, answers, _, _ = _easy_split(split)
    matches = [i for i, q in enumerate(questions) if q == obs["question"] and answers[i] == env.answer]
    assert matches and obs["image"].shape == (64, 64, 3) and info["question_type"] in ("colour", "shape", "yes/no")
    wrong = next(a for a in env.answer_choices if a != env.answer)
    _, reward, terminated, _, step_info = env.step(wrong)  # one question: the answer ends the episode
    assert (reward, terminated, step_info["success"]) == (0.0, True, False)
    env.reset(seed=seed)
    _, reward, terminated, _, step_info = env.step(env.answer)
    assert (reward, terminated, step_info["success"]) == (1.0, True, True)


def test_few_shot_episodes_show_the_examples_answers_then_ask_the_query_unseen():
    env, expert = make_env("vqa/easy-fewshot-v1"), make_expert("vqa/easy-fewshot-v1")
    shots = set()
    for seed in range(12):
        obs, info = env.reset(seed=seed)
        k, kind, steps = int(info["shots"]), info["question_type"], 0
        shots.add(k)
        while True:
            answer = env.answer
            if steps < k:  # an example shows its question and answer
                assert obs["example"] == answer and obs["question"]
            else:  # the query shows neither
                assert obs["example"] == "" and obs["question"] == ""
            assert (kind == "colour") == (answer in ("red", "green", "blue", "black", "gray", "teal", "brown",
                                                     "yellow"))
            obs, reward, terminated, _, _ = env.step(expert.act(env, obs))
            steps += 1
            assert reward == float(terminated)  # only the query is scored
            if terminated:
                break
        assert steps == k + 1
    assert len(shots) >= 3


def test_so101_answers_and_captions_follow_the_true_scene():
    env = make_env("vqa/so101-v1")
    caption = make_env("vqa/so101-caption-v1")
    try:
        kinds, full_trays = set(), 0
        for seed in range(40):
            obs, info = env.reset(seed=seed)
            scene = env.source.scene
            names = [scene.describe(i) for i in range(4)]
            q, kinds = obs["question"], kinds | {info["question_type"]}
            tray = scene.target_pos()[:2]
            inside = [bool(np.all(np.abs(scene.object_pos(i)[:2] - tray) < TRAY_HALF)) for i in range(4)]
            full_trays += any(inside)
            if info["question_type"] == "in tray":
                named = next(i for i, n in enumerate(names) if f"the {n} in" in q)
                assert env.answer == ("yes" if inside[named] else "no")
            if info["question_type"] == "shape":
                colour = q.split()[4]
                assert env.answer == next(n.split()[1] for n in names if n.startswith(colour))
            # the caption of the same scene names every object once, from left to right
            caption.reset(seed=seed)
            listed = caption.answer.split(", ")
            assert sorted(listed) == sorted(names)
            if info["question_type"] == "colour":
                assert env.answer == (listed[0] if "leftmost" in q else listed[-1]).split()[0]
            if info["question_type"] == "left of":
                a, b = q[len("is the "):-1].split(" left of the ")
                assert env.answer == ("yes" if listed.index(a) < listed.index(b) else "no")
        assert kinds == {"colour", "shape", "left of", "in tray"} and 5 < full_trays < 35
        assert caption_facts("red cube, blue cube, x, y", "red cube, green cube, x, y") == 0.75
    finally:
        env.close()
        caption.close()


@pytest.mark.parametrize("task_id,size", [("vqa/so101-where-v1", 64), ("vqa/so101-where-96-v1", 96)])
def test_so101_where_answers_the_third_of_the_image_the_named_object_is_in(task_id, size):
    env = make_env(task_id)
    caption = make_env("vqa/so101-caption-v1")
    try:
        answers = []
        for seed in range(40):
            obs, info = env.reset(seed=seed)
            assert info["question_type"] == "where" and obs["question"].startswith("where is the ")
            assert obs["image"].shape == (size, size, 3)
            scene, name = env.source.scene, obs["question"][len("where is the "):-1]
            named = next(i for i in range(4) if scene.describe(i) == name)
            m, d = scene.model, scene.data
            cam = m.camera("front").id
            rel = scene.object_pos(named) - d.cam_xpos[cam]
            axes = d.cam_xmat[cam].reshape(3, 3)
            f = size / 2 / np.tan(np.deg2rad(m.cam_fovy[cam]) / 2)  # the focal length in pixels
            column = size / 2 + f * (rel @ axes[:, 0]) / -(rel @ axes[:, 2])
            assert env.answer == ("left", "middle", "right")[min(2, max(0, int(column // (size / 3))))]
            caption.reset(seed=seed)
            if caption.answer.split(", ")[0] == name:  # the leftmost object is never right of the middle
                assert env.answer in ("left", "middle")
            answers.append(env.answer)
        assert set(answers) == {"left", "middle", "right"}
    finally:
        env.close()
        caption.close()


def test_a_collected_episode_round_trips_through_the_store_and_the_tokenizer(tmp_path):
    from omnipolicy.datasets.collect import collect
    from omnipolicy.datasets.store import EpisodeStore

    task_id = "vqa/easy-fewshot-v1"
    collect([task_id], 3, tmp_path, workers=0, seed=0, progress=False)
    store = EpisodeStore(tmp_path / task_id)
    spec = store.timestep_spec(task_id)
    assert spec == get_task(task_id).timestep
    env = make_env(task_id)
    for i in range(store.num_episodes):
        ep = store.load_episode(i)
        obs, _ = env.reset(seed=ep.seed)
        truth = []
        for t in range(ep.length):
            truth.append(env.answer)
            np.testing.assert_array_equal(ep.observations["image"][t], obs["image"])
            assert (ep.observations["question"][t], ep.observations["example"][t]) == (obs["question"], obs["example"])
            obs, *_ = env.step(env.answer)
        assert ep.actions.tolist() == truth and ep.episode_return == 1.0
        tk = TOK.tokenize_episode(spec, ep.observations, ep.actions)
        np.testing.assert_array_equal(TOK.decode_actions(spec, tk.action_tokens()), truth)
        assert tk.per_timestep(tk.loss_mask)[:, tk.obs_tokens_per_timestep:].all()


def test_metaworld_answers_follow_where_the_puck_is_drawn():
    env = make_env("vqa/metaworld-v1")
    try:
        kinds = set()
        for seed in range(12):
            obs, info = env.reset(seed=seed)
            scenes = env.source
            kinds.add(info["question_type"])
            puck = scenes.sim.data.qpos[scenes._puck:scenes._puck + 3]
            col, row = scenes._pixel(puck).astype(int)
            r, g, b = obs["image"][row, col].astype(int)
            assert r > 60 and r > 2 * g and r > 2 * b, (seed, obs["image"][row, col])  # the dark red puck is there
            other = "gripper" if "gripper" in obs["question"] else "goal"
            if other == "gripper":  # the camera rides with the gripper: it is at the image's centre
                assert env.answer == ("yes" if col < 32 else "no")
        assert kinds == {"puck vs gripper", "puck vs goal"}
    finally:
        env.close()


@pytest.mark.parametrize("task_id", ["vqa/so101-v1", "vqa/metaworld-v1"])
def test_evaluation_seeds_are_scenes_never_collected(task_id):
    env = make_env(task_id)
    try:
        collected = {env.reset(seed=s)[0]["image"].tobytes() for s in range(5)}
        evaluated = {env.reset(seed=EVAL_SEEDS + s)[0]["image"].tobytes() for s in range(5)}
        assert len(collected) == 5 and not collected & evaluated
    finally:
        env.close()
