"""Vision-language tasks: questions and captions about images, answered in text by the same model that acts.

Every task here is an episode of questions about images whose action is text (an answer or a caption, a
``text`` action of a fixed width in tokens): the model reads the image and the question and writes the answer,
token by token, ending with the end marker. The reward of a step is 1 for an exact answer (for a caption: the
share of its facts it states right) and the episode's success is an exact answer to its last question, so
evaluation reports accuracy as the success rate, per question type (the ``question_type`` label).

Sources of questions:

* ``easy``: easy-VQA (PyPI ``easy-vqa``, bundled in its wheel): 64x64 images of one coloured shape, 13 answers;
  its training questions for collection seeds, its test questions for evaluation seeds.
* ``so101``: the SO-101 tabletop scene (``envs/so101.py``: four coloured cubes and cylinders, a tray) seen by
  its front camera, with questions generated from the simulator's true state (colours, shapes, left of / right
  of in the image, in the tray), a caption task listing the objects from left to right, and ``so101-where``:
  "where is the X object?", answered left / middle / right (the third of the image it is in: one object to
  find and its position to read, what a policy reaching for the named object needs; ``so101-where-96`` at the
  SO-101 tasks' own camera size, 96x96). Scenes come from the reset seed, so evaluation seeds are scenes never
  collected.
* ``metaworld``: Meta-World ``push-v3`` frames from the camera behind the gripper, "is the puck left of the
  gripper / the goal?", answered from the simulator's state (scenes by seed, as for the SO-101).

Variants: ``blind`` drops the image (the question-only baseline: the same data, no pixels); ``shots = K``
makes an episode of ``k + 1`` questions of one type, ``k`` drawn in ``[0, K]`` (the ``shots`` label): the
first ``k`` are examples that show their answer in the ``example`` field, the last is the query, whose
``example`` is empty and whose question is not shown either, so only the examples say what is asked.

Seeds: a seed below :data:`EVAL_SEEDS` draws from the training split, from it on from the held-out split
(``omnipolicy eval`` starts at seed 10 000, ``omnipolicy collect`` at 0).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from omnipolicy.tokenizers.spec import FieldSpec

from .base import TaskEnv, field_space
from .registry import get_task, image, register_task

EVAL_SEEDS = 10_000
"""Reset seeds from this one on draw held-out questions and scenes (the evaluation protocol's first seed)."""
IMAGE_SIZE = 64
"""Height and width of the images (16 patches of 16x16), except where a task says otherwise."""
QUESTION_TOKENS = 32
"""Width of the question field in tokens (easy-VQA's longest question takes 17, the SO-101 scenes' 28)."""
ANSWER_TOKENS = 8
"""Width of an answer in tokens, the end marker included (easy-VQA's longest answer, ``rectangle``, takes 5)."""
CAPTION_TOKENS = 48
"""Width of a caption in tokens, the end marker included (the longest caption takes 39)."""


@dataclass(frozen=True)
class Item:
    """One question about one image, with its true answer."""

    image: np.ndarray  # uint8 (64, 64, 3)
    question: str
    answer: str
    question_type: str


# ---------------------------------------------------------------------------------------------
# easy-VQA


@functools.lru_cache(maxsize=2)
def _easy_split(split: str) -> tuple[list[str], list[str], np.ndarray, dict[int, str]]:
    """easy-VQA's questions, answers, image ids and image paths of one split (``"train"`` or ``"test"``)."""
    import easy_vqa

    questions, answers, image_ids = (easy_vqa.get_train_questions() if split == "train"
                                     else easy_vqa.get_test_questions())
    paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    return list(questions), list(answers), np.asarray(image_ids, dtype=np.int64), dict(paths)


@functools.lru_cache(maxsize=8192)
def _easy_image(path: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


EASY_COLOURS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
EASY_SHAPES = ("circle", "rectangle", "triangle")


def easy_answer_type(answer: str) -> str:
    """An easy-VQA answer's question type: ``colour``, ``shape`` or ``yes/no``."""
    return "colour" if answer in EASY_COLOURS else "shape" if answer in EASY_SHAPES else "yes/no"


class EasyVqa:
    """easy-VQA's questions as items: the question ``seed`` of a split, or a random one of a type."""

    answers: tuple[str, ...] = (*EASY_COLOURS, *EASY_SHAPES, "yes", "no")
    question_types: tuple[str, ...] = ("colour", "shape")
    """The types a few-shot episode asks about (one per episode)."""

    def item(self, split: str, index: int) -> Item:
        questions, answers, image_ids, paths = _easy_split(split)
        return Item(_easy_image(paths[int(image_ids[index])]), questions[index], answers[index],
                    easy_answer_type(answers[index]))

    def draw(self, split: str, seed: int, rng: np.random.Generator, question_type: str | None = None) -> Item:
        """Question ``seed`` (counted from :data:`EVAL_SEEDS` in the test split) of a fixed shuffle of the split,
        or (with a type) a random question of that type."""
        if question_type is None:
            order = _easy_order(split)
            index = seed - EVAL_SEEDS if split == "test" else seed
            return self.item(split, int(order[index % len(order)]))
        pool = _easy_type_index(split)[question_type]
        return self.item(split, int(pool[rng.integers(len(pool))]))


@functools.lru_cache(maxsize=2)
def _easy_order(split: str) -> np.ndarray:
    """A fixed shuffle of a split's questions (consecutive questions of the file share an image)."""
    return np.random.default_rng(0).permutation(len(_easy_split(split)[1]))


@functools.lru_cache(maxsize=2)
def _easy_type_index(split: str) -> dict[str, np.ndarray]:
    answers = _easy_split(split)[1]
    types = np.array([easy_answer_type(a) for a in answers])
    return {t: np.flatnonzero(types == t) for t in ("colour", "shape", "yes/no")}


# ---------------------------------------------------------------------------------------------
# SO-101 tabletop scenes


class So101Scenes:
    """Questions about (or captions of) SO-101 tabletop scenes, generated from the simulator's true state.

    A scene is the ``so101/place-v1`` task's reset for a seed (four objects of four colours, the tray, the arm
    raised), with one object moved into the tray half of the time, seen by the front camera at 64x64. Left and
    right are the image's (the camera's horizontal axis).

    Args:
        caption: ask for the caption (the objects from left to right) instead of questions.
    """

    question_types: tuple[str, ...] = ("colour", "shape", "left of", "in tray")
    SIDES: tuple[str, ...] = ("left", "middle", "right")
    """The answers of ``where``: the third of the image's width the object's centre projects into."""

    def __init__(self, caption: bool = False, where: bool = False, size: int = IMAGE_SIZE) -> None:
        from .so101 import COLOURS, So101Env

        self.caption, self.where, self.size = caption, where, int(size)
        self.scene = So101Env(get_task("so101/place-v1"), "place", size=self.size)
        self.answers: tuple[str, ...] = (("",) if caption else self.SIDES if where else
                                         (*COLOURS, "cube", "cylinder", "yes", "no"))
        if where:
            self.question_types = ("where",)

    def close(self) -> None:
        self.scene.close()

    def _build(self, seed: int) -> tuple[np.ndarray, list[str], np.ndarray, int | None]:
        """The scene of ``seed``: its image, object names, horizontal image coordinates and the object in the tray."""
        import mujoco

        env = self.scene
        env._reset(seed)
        rng = np.random.default_rng([seed, 1])
        in_tray = int(rng.integers(len(env.objects))) if rng.random() < 0.5 else None
        if in_tray is not None:
            adr = env.model.joint(env.objects[in_tray]).qposadr[0]
            tray = env.target_pos()
            env.data.qpos[adr:adr + 3] = [tray[0], tray[1], env.half_height(in_tray) + 0.004]
            mujoco.mj_forward(env.model, env.data)
        cam = env.model.camera("front").id
        pos, axes = env.data.cam_xpos[cam], env.data.cam_xmat[cam].reshape(3, 3)
        rel = np.array([env.object_pos(i) - pos for i in range(len(env.objects))])  # (4, 3)
        u = (rel @ axes[:, 0]) / -(rel @ axes[:, 2])  # image x / depth (tan of the angle): larger is further right
        names = [env.describe(i) for i in range(len(env.objects))]
        return env.render_camera("front", self.size, self.size), names, u, in_tray

    def draw(self, split: str, seed: int, rng: np.random.Generator, question_type: str | None = None) -> Item:
        del split  # the seed is the scene: evaluation seeds are scenes never collected
        img, names, u, in_tray = self._build(seed)
        if self.caption:
            return Item(img, "describe the objects from left to right.", caption_of(names, u), "caption")
        kind = question_type or self.question_types[int(rng.integers(len(self.question_types)))]
        i = int(rng.integers(len(names)))
        colour, shape = names[i].split()
        if kind == "where":
            half_width = np.tan(np.deg2rad(self.scene.model.cam_fovy[self.scene.model.camera("front").id]) / 2)
            third = int(np.clip((u[i] / half_width + 1) / 2 * 3, 0, 2))  # square image: the same angle both ways
            return Item(img, f"where is the {names[i]}?", self.SIDES[third], kind)
        if kind == "colour":
            side = "leftmost" if rng.random() < 0.5 else "rightmost"
            j = int(np.argmin(u) if side == "leftmost" else np.argmax(u))
            return Item(img, f"what colour is the {side} object?", names[j].split()[0], kind)
        if kind == "shape":
            return Item(img, f"what shape is the {colour} object?", shape, kind)
        if kind == "left of":
            j = int(rng.choice([k for k in range(len(names)) if k != i]))
            return Item(img, f"is the {names[i]} left of the {names[j]}?", "yes" if u[i] < u[j] else "no", kind)
        if in_tray is not None and rng.random() < 0.5:
            i = in_tray  # half the questions about a scene with a full tray ask about its object
        return Item(img, f"is the {names[i]} in the tray?", "yes" if i == in_tray else "no", kind)


# ---------------------------------------------------------------------------------------------
# Meta-World frames


class MetaWorldScenes:
    """Questions about Meta-World ``push-v3`` frames, generated from the simulator's true state.

    A scene is the task's reset for a seed, the gripper moved by a few steps in a random direction, and the puck
    put anywhere in its range; the ``behindGripper`` camera (it rides with the gripper, which stays at the image's
    centre) sees it at 64x64. Left and right are the image's: the projection of each point by the camera. A
    question is asked only where the two points are at least 2 pixels apart sideways and in view.
    """

    question_types: tuple[str, ...] = ("puck vs gripper", "puck vs goal")
    answers: tuple[str, ...] = ("yes", "no")
    CAMERA = "behindGripper"
    PUCK_LOW, PUCK_HIGH = (-0.1, 0.6), (0.1, 0.7)
    """The range of the puck's centre on the table (Meta-World's own for push-v3)."""

    def __init__(self) -> None:
        import mujoco

        from .metaworld import MetaWorldEnv

        self.env = MetaWorldEnv(get_task("metaworld/push-v3"), "push-v3")
        self.sim = self.env.env  # Meta-World's own env: its model and data
        self.renderer = mujoco.Renderer(self.sim.model, IMAGE_SIZE, IMAGE_SIZE)
        self._puck = self.sim.model.joint("objjoint").qposadr[0]

    def close(self) -> None:
        self.renderer.close()
        self.env.close()

    def _pixel(self, p: np.ndarray) -> np.ndarray:
        """(column, row) of a world point in the 64x64 image."""
        m, d = self.sim.model, self.sim.data
        cam = m.camera(self.CAMERA).id
        rel = p - d.cam_xpos[cam]
        axes = d.cam_xmat[cam].reshape(3, 3)
        f = IMAGE_SIZE / 2 / np.tan(np.deg2rad(m.cam_fovy[cam]) / 2)
        depth = -(rel @ axes[:, 2])
        return IMAGE_SIZE / 2 + f * np.array([rel @ axes[:, 0], -(rel @ axes[:, 1])]) / depth

    def _visible_apart(self, a: np.ndarray, b: np.ndarray) -> bool:
        inside = all(0 <= v < IMAGE_SIZE for v in (*a, *b))
        return inside and abs(a[0] - b[0]) >= 2

    def draw(self, split: str, seed: int, rng: np.random.Generator, question_type: str | None = None) -> Item:
        import mujoco

        from .metaworld import GOAL, HAND

        del split  # the seed is the scene: evaluation seeds are scenes never collected
        state, _ = self.env._reset(seed)
        direction = np.append(rng.uniform(-1, 1, 3), 0.0).astype(np.float32)
        for _ in range(int(rng.integers(0, 16))):
            state, *_ = self.env._step(direction)
        hand, goal = np.asarray(state["state"][HAND]), np.asarray(state["state"][GOAL])
        kind = question_type or self.question_types[int(rng.integers(len(self.question_types)))]
        other = hand if kind == "puck vs gripper" else goal
        d = self.sim.data
        for _ in range(100):
            puck = np.array([*rng.uniform(self.PUCK_LOW, self.PUCK_HIGH), d.qpos[self._puck + 2]])
            d.qpos[self._puck:self._puck + 3] = puck
            mujoco.mj_forward(self.sim.model, d)
            a, b = self._pixel(puck), self._pixel(other)
            if self._visible_apart(a, b):
                break
        else:  # the goal out of view: ask about the gripper, always at the centre
            kind, other = "puck vs gripper", hand
            a, b = self._pixel(puck), self._pixel(other)
        self.renderer.update_scene(d, camera=self.CAMERA)
        name = "gripper" if kind == "puck vs gripper" else "goal"
        return Item(self.renderer.render().copy(), f"is the puck left of the {name}?", "yes" if a[0] < b[0] else "no",
                    kind)


def caption_of(names: list[str], u: np.ndarray) -> str:
    """The objects from left to right: ``"red cube, blue cylinder, green cube, purple cylinder"``."""
    return ", ".join(names[i] for i in np.argsort(u))


def caption_facts(caption: str, truth: str) -> float:
    """Share of the true caption's facts (the object at each place from the left) that ``caption`` states."""
    said, true = [s.strip() for s in caption.split(",")], [s.strip() for s in truth.split(",")]
    return sum(a == b for a, b in zip(said, true)) / len(true)


SOURCES = {"easy": EasyVqa, "so101": So101Scenes, "so101-caption": functools.partial(So101Scenes, caption=True),
           "so101-where": functools.partial(So101Scenes, where=True),
           "so101-where-96": functools.partial(So101Scenes, where=True, size=96), "metaworld": MetaWorldScenes}


# ---------------------------------------------------------------------------------------------
# The environment


class VqaEnv(TaskEnv):
    """Questions about images, answered in text: one question per episode, or ``k`` examples then the query.

    Args:
        spec: the task's spec.
        source: ``"easy"``, ``"so101"``, ``"so101-caption"`` or ``"metaworld"`` (see the module docstring).
        blind: leave the image out of the observation (the question-only baseline).
        shots: the most examples before the query (0: one question per episode).
        render_mode: None or ``"rgb_array"`` (``render()`` gives the current image).

    Attributes:
        answer: the true answer of the current question.
        answer_choices: every answer the source gives (a random actor's choices: chance accuracy).
    """

    def __init__(self, spec, source: str, blind: bool = False, shots: int = 0, render_mode: str | None = None) -> None:
        if source not in SOURCES:
            raise ValueError(f"Unknown question source {source!r}; expected one of {list(SOURCES)}")
        super().__init__(spec, render_mode)
        self.source = SOURCES[source]()
        self.blind, self.shots = blind, int(shots)
        self.answer_choices: tuple[str, ...] = self.source.answers
        self._items: list[Item] = []
        self._rng = np.random.default_rng()
        self._seed = 0
        self._t = 0

    @property
    def native_action_space(self):
        return field_space(self.task.timestep.action)

    @property
    def answer(self) -> str:
        """The true answer of the current question."""
        return self._items[min(self._t, len(self._items) - 1)].answer

    def _reset(self, seed: int | None) -> tuple[dict[str, Any], dict]:
        if seed is not None:
            self._rng, self._seed = np.random.default_rng(seed), int(seed)
        else:  # an unseeded reset draws the next question of the current stream
            self._seed = int(self._rng.integers(EVAL_SEEDS))
        split = "test" if self._seed >= EVAL_SEEDS else "train"
        if self.shots:
            k = int(self._rng.integers(self.shots + 1))
            kind = self.source.question_types[int(self._rng.integers(len(self.source.question_types)))]
            self._items = [self.source.draw(split, self._seed, self._rng, kind) for _ in range(k + 1)]
        else:
            self._items = [self.source.draw(split, self._seed, self._rng)]
        self._t = 0
        info = {"question_type": self._items[-1].question_type}
        if self.shots:
            info["shots"] = str(len(self._items) - 1)
        return self._observe(), info

    def _observe(self) -> dict[str, Any]:
        item = self._items[min(self._t, len(self._items) - 1)]
        query = self._t >= len(self._items) - 1
        obs: dict[str, Any] = {"question": "" if (self.shots and query) else item.question}
        if not self.blind:
            obs["image"] = item.image.copy()
        if self.shots:
            obs["example"] = "" if query else item.answer
        return obs

    def _step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        said, truth = str(action), self.answer
        query = self._t >= len(self._items) - 1
        score = caption_facts(said, truth) if self._items[-1].question_type == "caption" else float(said == truth)
        self._t += 1
        info = {"success": bool(query and said == truth), "answer": truth}
        return self._observe(), score if query else 0.0, query, False, info

    def render(self) -> np.ndarray:
        """The current image (``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            raise RuntimeError(f"{self.task.id}: make the env with render_mode='rgb_array' to render")
        return self._items[min(self._t, len(self._items) - 1)].image.copy()

    def close(self) -> None:
        if hasattr(self.source, "close"):
            self.source.close()


# ---------------------------------------------------------------------------------------------
# Tasks


def answer(width: int = ANSWER_TOKENS) -> FieldSpec:
    """A text action of ``width`` tokens (the answer and the end marker, then the end marker repeated)."""
    return FieldSpec("answer", "text", (), "str", n=width)


def question(name: str = "question", width: int = QUESTION_TOKENS) -> FieldSpec:
    """A per-step text observation of ``width`` tokens."""
    return FieldSpec(name, "text", (), "str", n=width)


def vqa_task(id: str, source: str, *, blind: bool = False, shots: int = 0, width: int = ANSWER_TOKENS,
             instruction: str = "Answer the question about the image.", size: int = IMAGE_SIZE):
    """``register_task`` for one vision-language task (see :class:`VqaEnv` for the arguments; ``size``: the
    image's height and width, which the source must render)."""
    observation = (question(),) + (() if blind else (image("image", size, size),))
    if shots:
        observation += (question("example", ANSWER_TOKENS),)
    return register_task(
        id,
        domain="vqa",
        observation=observation,
        action=answer(width),
        max_steps=shots + 1,
        instruction=instruction,
        expert="omnipolicy.envs.experts.vqa:AnswerExpert",
        has_success=True,
        source=source,
        blind=blind,
        shots=shots,
    )


@vqa_task("vqa/easy-v1", "easy")
@vqa_task("vqa/easy-blind-v1", "easy", blind=True)
@vqa_task("vqa/easy-fewshot-v1", "easy", shots=4,
          instruction="Answer about the last image as the examples before it answer about theirs.")
@vqa_task("vqa/so101-v1", "so101")
@vqa_task("vqa/so101-blind-v1", "so101", blind=True)
@vqa_task("vqa/so101-where-v1", "so101-where")
@vqa_task("vqa/so101-where-blind-v1", "so101-where", blind=True)
@vqa_task("vqa/so101-where-96-v1", "so101-where-96", size=96)
@vqa_task("vqa/so101-caption-v1", "so101-caption", width=CAPTION_TOKENS,
          instruction="Name the objects on the table from left to right.")
@vqa_task("vqa/metaworld-v1", "metaworld")
@vqa_task("vqa/metaworld-blind-v1", "metaworld", blind=True)
def make_vqa(spec, render_mode: str | None = None, *, source: str, blind: bool = False, shots: int = 0) -> VqaEnv:
    """A vision-language task."""
    return VqaEnv(spec, source, blind=blind, shots=shots, render_mode=render_mode)
