"""A text action (an answer) is decoded greedily token by token, inside the text range, the same way by the
KV-cached session and by the recomputing policy, over few-shot episodes of several timesteps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from omnipolicy.agent import CheckpointMeta, GatoModel, ModelConfig, Policy
from omnipolicy.agent.inference import InferenceSession, SessionConfig
from omnipolicy.envs import get_task
from omnipolicy.tokenizers import Tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/agent/conftest.py

TASK = "vqa/easy-fewshot-v1"
TOK = Tokenizer.default()


def observation(rng: np.random.Generator, t: int) -> dict:
    words = ["what", "colour", "is", "the", "shape", "circle", "red"]
    return {"image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
            "question": " ".join(rng.choice(words, size=rng.integers(0, 6))),
            "example": str(rng.choice(["red", "rectangle", ""])) if t else ""}


def policies(context: int) -> tuple[Policy, Policy]:
    """The same untrained model acting through the KV-cached session and by recomputation."""
    spec = get_task(TASK).timestep
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=4, d_ff=64, context=context, local_positions=128,
                      patch_channels=8, patch_stride=4).with_layout(TOK.layout)
    model = GatoModel(cfg).eval()
    meta = CheckpointMeta(cfg, TOK.layout, {TASK: spec})
    return Policy(model, meta, TOK, use_session=True), Policy(model, meta, TOK, use_session=False)


def test_greedy_answers_of_the_session_equal_full_recomputation():
    cached, recomputing = policies(context=512)  # a whole few-shot episode (5 timesteps of 65 tokens) fits
    assert cached.acts_through_session(TASK) and not recomputing.acts_through_session(TASK)
    cached.reset(3)
    recomputing.reset(3)
    rng = np.random.default_rng(0)
    answers = []
    for t in range(5):
        obs = [observation(rng, t) for _ in range(3)]
        a = cached.act(TASK, obs)
        b = recomputing.act(TASK, obs)
        assert [str(x) for x in a] == [str(x) for x in b]
        answers += [str(x) for x in a]
    assert all(isinstance(x, str) for x in answers) and len(set(answers)) > 1  # untrained, but not constant
    assert all("\n" not in x for x in answers)  # decoding stops at the end marker


def test_the_session_rebuilding_a_full_window_still_answers_as_recomputation():
    """Policy drops only what no longer fits; a session with ``evict_keep=1.0`` keeps the same window."""
    _, recomputing = policies(context=160)
    spec = get_task(TASK).timestep
    session = InferenceSession(recomputing.model, SessionConfig(num_envs=2, evict_keep=1.0),
                               patch_id=TOK.layout.patch_id)
    recomputing.reset(2)
    rng = np.random.default_rng(1)
    rebuilt = 0
    for t in range(6):
        obs = [observation(rng, t) for _ in range(2)]
        expected = [str(x) for x in recomputing.act(TASK, obs)]
        out = session.step([recomputing._tokenize(spec, o) for o in obs], TOK.action_token_ranges(spec))
        assert TOK.decode_actions(spec, out.action_tokens).tolist() == expected
        assert (out.action_tokens < TOK.layout.text_size).all()
        rebuilt += len(out.rebuilt)
    assert rebuilt >= 3


def test_the_actor_keeps_a_few_shot_episode_in_one_context_while_its_question_changes():
    """A question is per-step text (a fixed width), not an instruction: a new one does not reset the context."""
    from omnipolicy.agent.actor import PolicyActor

    cached, _ = policies(context=512)
    actor = PolicyActor(cached)
    task = get_task(TASK)
    actor.begin(task, [None])
    rng = np.random.default_rng(2)
    actor.reset_env(0, observation(rng, 0))
    for t in range(4):
        (answer,) = actor.act([0], [observation(rng, t)])
        assert isinstance(answer.item(), str)
    assert cached._session.window_timesteps(0) == 4
