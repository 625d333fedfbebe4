"""Atari 2600 through gymnasium + ale_py, ALE v5 settings, 84x84 RGB pixel observations.

The task definition is the evaluation protocol, so expert, random and policy
scores all come from the same episodes: ALE v5 with frameskip 4, sticky
actions (``repeat_action_probability`` 0.25) and the minimal action set; each
reset plays 1 to 30 no-op frames (OpenAI baselines' ``NoopResetEnv``), their
number drawn from the env's RNG, so a seeded reset is reproducible and seeds
start from different emulator states; an episode lasts at most
:data:`EPISODE_STEPS` agent steps. That cap is what the main job can afford to
evaluate (10 episodes of every task); the Breakout expert's full game lasts
~12 600 steps. The 210x160 frame is area-resized to 84x84x3 (each output pixel
is the mean of the input pixels it covers, fractional overlaps weighted).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from omnipolicy.envs.base import GymTaskEnv
from omnipolicy.envs.registry import discrete_action, image, register_task

SCREEN = (210, 160)
SIZE = 84

EPISODE_STEPS = 2000
"""Episode limit of every Atari task, in agent steps (8000 frames, 2 min 13 s of play): the evaluation's cap and
the one the expert and random scores are measured at."""
SETTINGS = {"frameskip": 4, "repeat_action_probability": 0.25, "noop_max": 30}
"""The simulator settings of the protocol, passed to :func:`make_atari` (the registry records them with the task)."""
PROTOCOL = (
    f"ALE v5, minimal action set, frameskip {SETTINGS['frameskip']}, sticky actions (repeat_action_probability) "
    f"{SETTINGS['repeat_action_probability']}, 1 to {SETTINGS['noop_max']} no-op frames at each reset (drawn from the "
    f"reset's seed), episodes of at most {EPISODE_STEPS} steps"
)
"""The protocol in words, for reports."""


@lru_cache(maxsize=None)
def area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Input indices (n_out, k) and weights (n_out, k) of area interpolation along one axis.

    Output cell ``i`` spans ``[i, i + 1) * n_in / n_out`` of the input; each input cell it
    overlaps contributes its overlap length, normalised to sum 1 (at most ``k`` cells).
    """
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)  # (n_out, n_in)
    k = int((overlap > 1e-9).sum(axis=1).max())
    index = np.zeros((n_out, k), dtype=np.int64)
    weight = np.zeros((n_out, k), dtype=np.float32)
    for i, row in enumerate(overlap):
        nz = np.nonzero(row > 1e-9)[0]
        index[i, : len(nz)] = nz
        weight[i, : len(nz)] = row[nz] / row[nz].sum()
    return index, weight


def area_resize(frame: np.ndarray, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """Area-resize an (H, W, C) uint8 frame to (height, width, C) uint8 (like OpenCV's INTER_AREA).

    Separable and sparse (a few taps per output pixel), without BLAS: ~0.2 ms for 210x160 -> 84x84.
    """
    rows, row_w = area_taps(frame.shape[0], height)  # (h, k)
    cols, col_w = area_taps(frame.shape[1], width)  # (w, k)
    out = np.einsum("hk,hkwc->hwc", row_w, frame[rows].astype(np.float32))  # (h, W, C)
    out = np.einsum("wk,hwkc->hwc", col_w, out[:, cols])  # (h, w, C)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class AtariEnv(GymTaskEnv):
    """An ALE game: observation ``"image"`` (84, 84, 3) uint8; ``ale`` exposes the emulator to experts.

    Args:
        spec: the task's spec.
        env: the ``ale_py`` gymnasium env, unwrapped.
        render_mode: None or ``"rgb_array"``.
        noop_max: each reset plays a uniform 1 to ``noop_max`` no-op frames, drawn from the env's RNG
            (``np_random``, seeded by ``reset(seed=...)``); 0 plays none. ``info["noops"]`` says how many.
    """

    def __init__(self, spec, env, render_mode: str | None = None, *, noop_max: int = 0) -> None:
        if not isinstance(noop_max, int) or noop_max < 0:
            raise ValueError(f"{spec.id}: noop_max must be an int >= 0, got {noop_max!r}")
        super().__init__(spec, env, render_mode)
        self.noop_max = noop_max

    @property
    def ale(self):
        """The game's ``ale_py.ALEInterface`` (RAM, ``cloneState``)."""
        return self.env.unwrapped.ale

    def _convert(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        return {"image": area_resize(obs)}

    def _reset(self, seed: int | None) -> tuple[dict[str, np.ndarray], dict]:
        import ale_py  # the simulator loads only when it is used: importing the task registry loads none

        _, info = self.env.reset(seed=seed)
        noops = int(self.np_random.integers(1, self.noop_max + 1)) if self.noop_max else 0
        for _ in range(noops):  # single frames: no game ends or scores within half a second of its start
            self.ale.act(ale_py.Action.NOOP)
        info.update(noops=noops, episode_frame_number=self.ale.getEpisodeFrameNumber(),
                    frame_number=self.ale.getFrameNumber())
        return self._convert(self.ale.getScreenRGB()), dict(info)

    def render(self) -> np.ndarray:
        """The full 210x160 RGB screen."""
        if self.render_mode != "rgb_array":
            raise RuntimeError(f"{self.task.id}: make the env with render_mode='rgb_array' to render")
        return self.ale.getScreenRGB()


@register_task(
    "atari/pong",
    domain="atari",
    observation=(image(),),
    action=discrete_action(6),
    max_steps=EPISODE_STEPS,
    instruction="Move your paddle on the right to return the ball past the opponent.",
    expert="omnipolicy.envs.experts.atari:PongExpert",
    default=True,
    game="Pong",
    **SETTINGS,
)
@register_task(
    "atari/breakout",
    domain="atari",
    observation=(image(),),
    action=discrete_action(4),
    max_steps=EPISODE_STEPS,
    instruction="Move the paddle to bounce the ball into the bricks and break them all.",
    expert="omnipolicy.envs.experts.atari:BreakoutExpert",
    default=True,
    game="Breakout",
    **SETTINGS,
)
def make_atari(spec, render_mode: str | None = None, *, game: str, frameskip: int, repeat_action_probability: float,
               noop_max: int) -> AtariEnv:
    """An ALE v5 game with the protocol's settings (:data:`SETTINGS`); the episode limit is the spec's."""
    import ale_py  # the simulator loads only when it is used: importing the task registry loads none
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=frameskip, repeat_action_probability=repeat_action_probability)
    return AtariEnv(spec, env.unwrapped, render_mode, noop_max=noop_max)
