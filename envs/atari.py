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

The ``-stack`` variants (``atari/pong-stack``) play the same games under the same protocol (they share the
expert and random scores) and show the last three frames instead of one: the image's three channels are the
grey levels of the frames at t - 2, t - 1 and t (DQN's frame stacking; a reset repeats its first frame), so a
single image shows which way the ball moves.

The ``-located`` variants (``atari/pong-located``) play the same games under the same protocol too, but show no
pixels: the observation is the positions a perfect object detector would report, read from the game's RAM (the
ball this step and the step before, our paddle, and in Pong the opponent's paddle; each RAM byte ``v`` as
``v / 127.5 - 1``, a ball out of play at -1). They measure what an image encoder that localises the ball would
give a policy (docs/results.md, "Atari with the ball located").
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from omnipolicy.envs.base import GymTaskEnv
from omnipolicy.envs.registry import discrete_action, image, register_task, vector

SCREEN = (210, 160)
SIZE = 84

EPISODE_STEPS = 2000
"""Episode limit of every Atari task, in agent steps (8000 frames, 2 min 13 s of play): the evaluation's cap and
the one the expert and random scores are measured at."""
STACK = 3
"""Frames in the image of a ``-stack`` task (one per colour channel)."""
LOCATED = {"Pong": {"ball_x": 49, "ball_y": 54, "paddle": 51, "opponent": 50},
           "Breakout": {"ball_x": 99, "ball_y": 101, "paddle": 72}}
"""RAM addresses of the objects a ``-located`` task shows, per game (the experts read the same bytes)."""
GREY = np.array([0.299, 0.587, 0.114], np.float32)
"""ITU-R BT.601 luma weights of R, G, B."""
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
        frame_stack: 1 (the frame in colour) or :data:`STACK` (the grey levels of the last three frames as the
            image's channels, oldest first).
    """

    def __init__(self, spec, env, render_mode: str | None = None, *, noop_max: int = 0, frame_stack: int = 1,
                 located: tuple[int, ...] = ()) -> None:
        if not isinstance(noop_max, int) or noop_max < 0:
            raise ValueError(f"{spec.id}: noop_max must be an int >= 0, got {noop_max!r}")
        if frame_stack not in (1, STACK):
            raise ValueError(f"{spec.id}: frame_stack must be 1 or {STACK} (one frame per colour channel), "
                             f"got {frame_stack!r}")
        super().__init__(spec, env, render_mode)
        self.noop_max = noop_max
        self.frame_stack = frame_stack
        self._frames: np.ndarray | None = None  # (84, 84, STACK) the grey frames shown, oldest first
        self.located = tuple(int(a) for a in located)  # RAM addresses shown instead of pixels (ball x, y first)
        self._ball: np.ndarray | None = None  # the ball's (x, y) bytes at the step before

    @property
    def ale(self):
        """The game's ``ale_py.ALEInterface`` (RAM, ``cloneState``)."""
        return self.env.unwrapped.ale

    def _convert(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        if self.located:
            ram = self.ale.getRAM()
            now = ram[list(self.located)].astype(np.float32)
            before = now[:2] if self._ball is None else self._ball  # an episode's first step: no motion yet
            self._ball = now[:2].copy()
            return {"objects": np.concatenate([now[:2], before, now[2:]]) / 127.5 - 1.0}
        frame = area_resize(obs)
        if self.frame_stack == 1:
            return {"image": frame}
        grey = np.clip(np.rint(frame.astype(np.float32) @ GREY), 0, 255).astype(np.uint8)
        if self._frames is None:  # the episode's first frame fills the stack
            self._frames = np.repeat(grey[..., None], self.frame_stack, axis=-1)
        else:
            self._frames = np.concatenate([self._frames[..., 1:], grey[..., None]], axis=-1)
        return {"image": self._frames.copy()}

    def _reset(self, seed: int | None) -> tuple[dict[str, np.ndarray], dict]:
        import ale_py  # the simulator loads only when it is used: importing the task registry loads none

        _, info = self.env.reset(seed=seed)
        self._frames, self._ball = None, None
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


def make_atari(spec, render_mode: str | None = None, *, game: str, frameskip: int, repeat_action_probability: float,
               noop_max: int, frame_stack: int = 1, located: bool = False) -> AtariEnv:
    """An ALE v5 game with the protocol's settings (:data:`SETTINGS`); the episode limit is the spec's;
    ``frame_stack``: see :class:`AtariEnv`; ``located``: show the objects' RAM positions (:data:`LOCATED`)."""
    import ale_py  # the simulator loads only when it is used: importing the task registry loads none
    import gymnasium as gym

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", frameskip=frameskip, repeat_action_probability=repeat_action_probability)
    return AtariEnv(spec, env.unwrapped, render_mode, noop_max=noop_max, frame_stack=frame_stack,
                    located=tuple(LOCATED[game].values()) if located else ())


GAMES = {
    "pong": ("Pong", 6, "Move your paddle on the right to return the ball past the opponent.", "PongExpert"),
    "breakout": ("Breakout", 4, "Move the paddle to bounce the ball into the bricks and break them all.",
                 "BreakoutExpert"),
}
"""Task name -> (ALE game, actions in the minimal set, instruction, expert class in ``envs/experts/atari.py``); the
game's teacher (demonstrations, DAgger labels) is the ``<Game>Tracker`` class there."""

for _name, (_game, _actions, _instruction, _expert) in GAMES.items():
    register_task(  # the same game with the objects' positions instead of pixels (same scores)
        f"atari/{_name}-located",
        domain="atari",
        observation=(vector("objects", len(LOCATED[_game]) + 2),),
        action=discrete_action(_actions),
        max_steps=EPISODE_STEPS,
        instruction=_instruction,
        expert=f"omnipolicy.envs.experts.atari:{_expert}",
        teacher=f"omnipolicy.envs.experts.atari:{_game}Tracker",
        scores_from=f"atari/{_name}",
        game=_game,
        located=True,
        **SETTINGS,
    )(make_atari)
    for _stack in (1, STACK):  # atari/<name> (in the default suite) and atari/<name>-stack (same scores)
        register_task(
            f"atari/{_name}" + ("-stack" if _stack > 1 else ""),
            domain="atari",
            observation=(image(),),
            action=discrete_action(_actions),
            max_steps=EPISODE_STEPS,
            instruction=_instruction,
            expert=f"omnipolicy.envs.experts.atari:{_expert}",
            teacher=f"omnipolicy.envs.experts.atari:{_game}Tracker",
            default=_stack == 1,
            scores_from=f"atari/{_name}" if _stack > 1 else None,
            game=_game,
            **({"frame_stack": _stack} if _stack > 1 else {}),
            **SETTINGS,
        )(make_atari)
