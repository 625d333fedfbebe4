"""Meta-World v3 MT10 tasks: a Sawyer arm, state vector plus the task instruction as text.

Each reset draws one of the 50 goal/object variations of MT1 (``metaworld.MT1``)
with an RNG seeded by the reset seed, so a seeded reset is deterministic.
``info["success"]`` is True once the task has been solved in the current episode.

Besides the 39-value state, each task shows two offsets computed from it: the object's position from the hand
(``to_object``) and the goal's from the object (``to_goal``), as dm_control's reacher shows ``to_target``. The
state holds the same numbers, but each as a mu-law token of its own: a policy had to subtract two tokens of about
0.6 m to find a 4 cm offset, and the offsets give it in one value at about 2% of its size (docs/results.md,
"Meta-World with the offsets shown").
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any

import numpy as np

from omnipolicy.envs.base import TaskEnv
from omnipolicy.envs.registry import bounded_action, register_task, text, vector

metaworld_task = partial(
    register_task,
    domain="metaworld",
    observation=(vector("state", 39), vector("to_object", 3), vector("to_goal", 3), text("instruction")),
    action=bounded_action(-1.0, 1.0, 4),  # end-effector (dx, dy, dz) and gripper effort
    max_steps=500,
    expert="omnipolicy.envs.experts.metaworld:MetaWorldExpert",
    has_success=True,
    default=True,
)


HAND, OBJECT, GOAL = slice(0, 3), slice(4, 7), slice(36, 39)
"""Where the state vector holds the hand's, the (first) object's and the goal's positions (m)."""


@lru_cache(maxsize=None)
def _mt1(env_name: str):
    """``metaworld.MT1(env_name, seed=0)``, built once per process (~0.6 s: it resets the env 50 times to make its tasks).

    Envs only read its ``train_classes`` and ``train_tasks``, so parallel envs of a task share one.
    """
    import metaworld  # the simulator loads only when it is used: importing the task registry loads none

    return metaworld.MT1(env_name, seed=0)


class MetaWorldEnv(TaskEnv):
    """A Meta-World v3 task behind the gymnasium interface.

    Args:
        spec: the task's spec.
        env_name: Meta-World name, e.g. ``"reach-v3"``.
        render_mode: None or ``"rgb_array"`` (``render()`` gives 240x240 frames).
    """

    def __init__(self, spec, env_name: str, render_mode: str | None = None) -> None:
        super().__init__(spec, render_mode)
        benchmark = _mt1(env_name)
        kwargs = {"camera_name": "corner2", "width": 240, "height": 240} if render_mode else {}
        self.env = benchmark.train_classes[env_name](render_mode=render_mode, **kwargs)
        self.env.model.light_castshadow[:] = 0
        self.tasks = list(benchmark.train_tasks)
        self.env_name = env_name
        self._task_rng = np.random.default_rng()
        self._solved = False

    @property
    def native_action_space(self):
        return self.env.action_space

    def _observe(self, state: np.ndarray) -> dict[str, Any]:
        hand, obj, goal = state[HAND], state[OBJECT], state[GOAL]
        return {"state": state, "to_object": obj - hand, "to_goal": goal - obj, "instruction": self.task.instruction}

    def _reset(self, seed: int | None) -> tuple[dict[str, Any], dict]:
        if seed is not None:
            self._task_rng = np.random.default_rng(seed)
        self.env.set_task(self.tasks[int(self._task_rng.integers(len(self.tasks)))])
        state, info = self.env.reset(seed=seed)
        self._solved = False
        return self._observe(state), {**info, "success": False}

    def _step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        state, reward, terminated, truncated, info = self.env.step(action)
        self._solved |= bool(info["success"])
        return self._observe(state), float(reward), terminated, truncated, {**info, "success": self._solved}

    def render(self) -> np.ndarray:
        """RGB frame (240x240x3 uint8) from the ``corner2`` camera."""
        if self.render_mode != "rgb_array":
            raise RuntimeError(f"{self.task.id}: make the env with render_mode='rgb_array' to render")
        return np.ascontiguousarray(np.asarray(self.env.render(), dtype=np.uint8)[::-1])  # Meta-World renders upside down

    def close(self) -> None:
        self.env.close()


@metaworld_task("metaworld/reach-v3", env_name="reach-v3", instruction="Reach the goal position with the gripper.")
@metaworld_task("metaworld/push-v3", env_name="push-v3", instruction="Push the puck to the goal.")
@metaworld_task(
    "metaworld/pick-place-v3", env_name="pick-place-v3", instruction="Pick up the puck and place it at the goal."
)
@metaworld_task(
    "metaworld/door-open-v3", env_name="door-open-v3", instruction="Open the door by pulling its handle around the hinge."
)
@metaworld_task("metaworld/drawer-open-v3", env_name="drawer-open-v3", instruction="Open the drawer.")
@metaworld_task("metaworld/drawer-close-v3", env_name="drawer-close-v3", instruction="Push the drawer closed.")
@metaworld_task(
    "metaworld/button-press-topdown-v3", env_name="button-press-topdown-v3", instruction="Press the button down from the top."
)
@metaworld_task(
    "metaworld/peg-insert-side-v3",
    env_name="peg-insert-side-v3",
    instruction="Pick up the peg and insert it sideways into the hole.",
    expert="omnipolicy.envs.experts.metaworld:PegInsertSideExpert",
)
@metaworld_task("metaworld/window-open-v3", env_name="window-open-v3", instruction="Slide the window open.")
@metaworld_task("metaworld/window-close-v3", env_name="window-close-v3", instruction="Slide the window closed.")
def make_metaworld(spec, render_mode: str | None = None, *, env_name: str) -> MetaWorldEnv:
    """A Meta-World v3 task."""
    return MetaWorldEnv(spec, env_name, render_mode=render_mode)
