"""rosbag2 recordings (MCAP or SQLite3) -> episodes in an episode store: ``omnipolicy dataset from-rosbag``.

One bag is one episode. Messages are decoded by :mod:`omnipolicy.robot_bridge.wire` (PyPI's ``rosbags``, no ROS
install) and aligned by the rule of :mod:`omnipolicy.robot_bridge.wire.rosbag`: every command (receive time ``t``
in the bag) becomes one timestep; its observation is the latest joint state (and image of each camera) received
at or before ``t``, and the command is dropped when there is none or it is older than ``--max-state-age``
(``--max-image-age``, per camera). Tasks whose observation also reads other ``JointState`` topics (the task state of
``dmc/reacher-easy``: target minus fingertip) align those by the same rule and age limit: a command is
dropped unless every state topic has a fresh message at or before it. An arm split over controllers
(``[[command]]`` groups) has its groups' messages merged into control ticks first (one command of every joint per
tick; the rule is in :mod:`omnipolicy.robot_bridge.wire.rosbag`).

Where each observation key comes from:

- a task with a robot arm (:mod:`omnipolicy.robot_bridge.arms`), or an arm described by a robot file
  (``--robot FILE``): the arm's observation recipe (every camera from its own ``sensor_msgs/Image`` topic), its
  joint-state topic and its command topic; ``--state-topic``, ``--command-topic`` and ``--image-topic`` rename the
  topics of a recording made elsewhere (``--image-topic`` only for an arm with one camera).
  With ``--robot``, the episodes' task is ``--task``, else the file's ``task``, else the robot's name; a task the
  registry does not know gets the spec the file implies (:meth:`~omnipolicy.robot_bridge.robot_file.ArmSpec.timestep_spec`);
- any other task, or with ``--joints``: the joints in the controller's order (= the action's order), the
  joint positions (velocities) as the task's ``position`` (``velocity``) key or ``--position-key``
  (``--velocity-key``), and the image of ``--image-topic`` as the task's image key.

A bag holds no reward and no success signal: rewards are stored as 0 and success as unknown (None), and
``meta/rosbag_imports.json`` in the dataset says so for every imported episode, with the bag, topics and
alignment settings it came from.

    omnipolicy dataset from-rosbag recordings/run-*/ --out data/robot/reacher --task dmc/reacher-easy
    omnipolicy dataset from-rosbag recordings/arm/ --out data/robot/arm --robot my_arm.toml
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import tyro

from omnipolicy.datasets.episode import Episode, prepare_episode
from omnipolicy.datasets.layout import IMPORT_NOTES_PATH, DatasetError, read_import_notes
from omnipolicy.datasets.store import EpisodeStore
from omnipolicy.envs import get_task, list_tasks
from omnipolicy.files import write_json_atomic
from omnipolicy.robot_bridge.arms import ARMS
from omnipolicy.robot_bridge.robot_file import ArmSpec, ImageSource, NamedSource, load_robot_file
from omnipolicy.robot_bridge.wire import cdr
from omnipolicy.robot_bridge.wire.messages import JointMap, JointState, ObservationMap, String, validate
from omnipolicy.robot_bridge.wire.rosbag import BagEpisode, BagImportConfig, latest_before, read_bag, read_topics
from omnipolicy.robot_bridge.wire.transport import ros_topic_name
from omnipolicy.tokenizers.spec import TimestepSpec

REWARD_NOTE = "unknown: a rosbag holds no reward; stored as 0.0 at every timestep"
SUCCESS_NOTE = "unknown: a rosbag holds no success signal; stored as None"


@dataclass(frozen=True)
class BagLayout:
    """Where every part of a task's timestep comes from in a bag.

    Attributes:
        task_id: the registered task.
        spec: its timestep spec (what the episodes must match).
        obs_map: joints (controller order = action order) and the keys read from the joint-state/image topics.
        config: topics and alignment limits for :func:`~omnipolicy.robot_bridge.wire.rosbag.read_bag` (its
            ``cameras``: the cameras after the first).
        extra: observation keys read from other ``JointState`` topics (aligned by the same rule).
        instruction_topic: the ``std_msgs/String`` topic the text fields (the instruction) are read from, or None:
            they hold the task's registered instruction.
    """

    task_id: str
    spec: TimestepSpec
    obs_map: ObservationMap
    config: BagImportConfig
    extra: tuple[NamedSource, ...] = ()
    instruction_topic: str | None = None

    @property
    def texts(self) -> list[str]:
        """The spec's text fields (an instruction): filled from :attr:`instruction_topic` or the task's text."""
        return [f.name for f in self.spec.observation if f.kind == "text"]

    @property
    def images(self) -> dict[str, str]:
        """Observation key -> ``sensor_msgs/Image`` topic of every camera."""
        return self.config.image_topics(self.obs_map.image_key)

    @property
    def keys(self) -> list[str]:
        """Observation keys the layout produces."""
        m = self.obs_map
        vectors = [k for k in (m.position_key, m.velocity_key) if k is not None]
        return vectors + list(self.images) + [s.key for s in self.extra] + self.texts

    def describe(self) -> list[str]:
        """One line per observation key and one for the action: ``key <- topic field[names]``."""
        m, c = self.obs_map, self.config
        lines = [f"{k} <- {c.joint_states} {f}{list(m.joints.task_joints)}"
                 for k, f in ((m.position_key, "position"), (m.velocity_key, "velocity")) if k is not None]
        lines += [f"{key} <- {topic} (sensor_msgs/Image -> RGB uint8)" for key, topic in self.images.items()]
        lines += [s.describe() for s in self.extra]
        lines += [f"{key} <- {self.instruction_topic} (std_msgs/String, the latest at each tick)"
                  if self.instruction_topic else f"{key} <- the task's instruction" for key in self.texts]
        if c.command_groups:
            lines.append("action <- " + " + ".join(f"{topic} {list(joints)}" for topic, joints in c.command_groups)
                         + " (merged per control tick)")
        else:
            lines.append(f"action <- {c.commands} {list(m.joints.robot_joints)}")
        return lines

    def check_spec(self) -> None:
        """Check keys and vector sizes against the task's spec before any bag is read.

        Raises:
            ValueError: keys, kinds or shapes differ (naming what the task expects and what the layout gives).
        """
        fields = {f.name: f for f in self.spec.observation}
        got = self.keys
        if sorted(got) != sorted(fields):
            raise ValueError(
                f"task {self.task_id!r} expects observation keys {sorted(fields)}, the bag import gives {sorted(got)} "
                f"(missing: {sorted(set(fields) - set(got))}, extra: {sorted(set(got) - set(fields))}); "
                f"from: {'; '.join(self.describe())}"
            )
        m = self.obs_map
        shapes = {k: (m.joints.size,) for k in (m.position_key, m.velocity_key) if k is not None}
        shapes.update({s.key: s.shape for s in self.extra})
        for key, shape in shapes.items():
            f = fields[key]
            if f.kind != "continuous" or tuple(f.shape) != shape:
                raise ValueError(
                    f"task {self.task_id!r}: observation {key!r} expected {f.kind} {tuple(f.shape)}, "
                    f"got continuous {shape} from the bag"
                )
        for key, topic in self.images.items():
            if fields[key].kind != "image":
                raise ValueError(f"task {self.task_id!r}: observation {key!r} expected {fields[key].kind}, "
                                 f"got image from {topic}")
        a = self.spec.action
        if a.kind != "continuous" or tuple(a.shape) != (m.joints.size,):
            raise ValueError(
                f"task {self.task_id!r}: action expected {a.kind} {tuple(a.shape)}, got continuous ({m.joints.size},) "
                f"from {' + '.join(self.config.command_topics)} joints {list(m.joints.robot_joints)}"
            )


def task_layout(
    task_id: str,
    *,
    joints: Sequence[str] = (),
    ignore_joints: Sequence[str] = (),
    state_topic: str | None = None,
    command_topic: str | None = None,
    image_topic: str | None = None,
    position_key: str | None = None,
    velocity_key: str | None = None,
    max_state_age: float = 0.1,
    max_image_age: float = 0.2,
    strict: bool = True,
    spec: TimestepSpec | None = None,
    arm: ArmSpec | None = None,
) -> BagLayout:
    """The :class:`BagLayout` of a task: its arm's observation recipe, or explicit joints and topics.

    Args:
        task_id: registered task id.
        joints: joint names in the controller's order (= the action's order); given, or for a task without an
            arm, the explicit layout is used.
        ignore_joints: other joint names the joint states may carry (dropped).
        state_topic, command_topic, image_topic: topic names (default: the arm's, else ``/joint_states`` and
            ``/forward_position_controller/commands``, and no image unless ``image_topic``).
        position_key, velocity_key: explicit layout only: observation keys of the joint positions/velocities
            (default: ``position``/``velocity`` where the task's spec has such a field).
        max_state_age, max_image_age, strict: see :class:`~omnipolicy.robot_bridge.wire.rosbag.BagImportConfig`.
        spec: the timestep spec (default: the registered task's).
        arm: the arm (a robot file's) instead of the task's registered one.

    Raises:
        KeyError: unknown task.
        ValueError: no arm and no joints, bad topic names, or a layout that does not produce the task's spec.
    """
    if spec is None:
        spec = get_task(task_id).timestep
    fields = {f.name: f for f in spec.observation}
    arm = arm if arm is not None else ARMS.get(task_id)
    limits = dict(max_state_age=max_state_age, max_image_age=max_image_age, strict=strict)
    if joints or arm is None:
        if not joints:
            raise ValueError(
                f"task {task_id!r} has no robot arm (tasks with one: {sorted(ARMS)}); give --joints (the controller's "
                f"joint order) and the topics (--state-topic, --command-topic, --image-topic)"
            )
        images = [f.name for f in spec.observation if f.kind == "image"]
        cameras: tuple[tuple[str, str], ...] = ()
        groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
        if arm is not None:  # --joints with an arm: its topics stay the defaults
            state_topic = state_topic or arm.joint_states_topic
            groups = _command_groups(task_id, arm, command_topic)
            command_topic = command_topic or arm.command_topic
            cams = _cameras(arm)
            if image_topic is None and len(cams) > 1:  # every camera under its recipe key
                cameras = tuple(cams.items())
            elif image_topic is None and cams:
                image_topic = next(iter(cams.values()))
            elif image_topic is not None and len(cams) > 1:
                raise _ambiguous_image_topic(task_id, image_topic, cams)
        if image_topic is not None and len(images) != 1:
            raise ValueError(f"--image-topic needs a task with one image observation; {task_id!r} has {images}")
        pk = position_key or ("position" if "position" in fields else None)
        vk = velocity_key or ("velocity" if "velocity" in fields else None)
        ik = images[0] if image_topic is not None else None
        if pk is None and vk is None and ik is None and not cameras:
            raise ValueError(
                f"task {task_id!r} expects observation keys {sorted(fields)}; name the joint-state keys with "
                f"--position-key/--velocity-key or give --image-topic"
            )
        obs_map = ObservationMap(JointMap(tuple(joints), ignored=tuple(ignore_joints)), pk, vk, ik)
        config = BagImportConfig(
            joint_states=state_topic or BagImportConfig.joint_states,
            commands=command_topic or BagImportConfig.commands,
            image=image_topic,
            cameras=cameras,
            command_groups=groups,
            **limits,
        )
        layout = BagLayout(task_id, spec, obs_map, config)
    else:
        if position_key or velocity_key:
            raise ValueError(f"task {task_id!r} takes its observation keys from its arm's recipe; "
                             "--position-key/--velocity-key apply only with --joints or to a task without an arm")
        layout = _arm_layout(task_id, arm, spec, state_topic, command_topic, image_topic, ignore_joints, limits)
    layout.check_spec()
    return layout


def _command_groups(task_id: str, arm: ArmSpec, command_topic: str | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``(topic, joints)`` of every command group of an arm split over controllers (empty: one command topic).

    Raises:
        ValueError: ``--command-topic`` given for such an arm (it renames the topic of a one-topic arm).
    """
    if not arm.command_groups:
        return ()
    if command_topic is not None:
        listing = "; ".join(g.describe() for g in arm.command_groups)
        raise ValueError(f"--command-topic {command_topic} is ambiguous: it renames the command topic of a one-topic "
                         f"arm, and {task_id!r} sends its commands over {len(arm.command_groups)} controllers "
                         f"({listing}); give a robot file (--robot) whose [[command]] tables name the bag's topics")
    return tuple((g.topic, g.joints) for g in arm.command_groups)


def _cameras(arm: ArmSpec) -> dict[str, str]:
    """Observation key -> image topic of every camera of the arm's recipe, in the recipe's order."""
    return {s.key: ros_topic_name(s.topic) for s in arm.observation.sources if isinstance(s, ImageSource)}


def _ambiguous_image_topic(task_id: str, image_topic: str, cams: dict[str, str]) -> ValueError:
    listing = ", ".join(f"{key} <- {topic}" for key, topic in cams.items())
    return ValueError(
        f"--image-topic {image_topic} is ambiguous: it renames the camera of a one-camera task, and task {task_id!r} "
        f"has {len(cams)} cameras ({listing}); record on those topics, or give a robot file (--robot) whose "
        f"[[cameras]] name the bag's topics"
    )


def _arm_layout(task_id: str, arm: Any, spec: TimestepSpec, state_topic: str | None, command_topic: str | None,
                image_topic: str | None, ignore_joints: Sequence[str], limits: dict[str, Any]) -> BagLayout:
    """Map the arm's observation recipe onto read_bag's joint-state/image keys plus extra JointState topics.

    The first camera fills ``ObservationMap.image_key`` (``--image-topic`` renames its topic when it is the only
    one); the others are ``BagImportConfig.cameras``.
    """
    state = ros_topic_name(state_topic or arm.joint_states_topic)
    keys: dict[str, str | None] = {"position": None, "velocity": None}
    cams = _cameras(arm)
    if image_topic is not None and len(cams) > 1:
        raise _ambiguous_image_topic(task_id, image_topic, cams)
    image_key, image = next(iter(cams.items()), (None, None))
    image = image_topic or image
    extra: list[NamedSource] = []
    ignored: set[str] = set(ignore_joints)
    for s in arm.observation.sources:
        if isinstance(s, ImageSource):
            continue
        on_state = ros_topic_name(s.topic) == ros_topic_name(arm.joint_states_topic)
        if on_state and s.field in keys and keys[s.field] is None and tuple(s.names) == tuple(arm.joints):
            keys[s.field] = s.key
            ignored.update(s.ignored)
        else:
            extra.append(replace(s, topic=state) if on_state else s)
    if image_topic is not None and image_key is None:
        raise ValueError(f"--image-topic given, but task {arm.task_id!r} observes no image (its recipe: {arm.observation.describe()})")
    obs_map = ObservationMap(JointMap(tuple(arm.joints), ignored=tuple(sorted(ignored))),
                             position_key=keys["position"], velocity_key=keys["velocity"], image_key=image_key)
    config = BagImportConfig(joint_states=state, commands=command_topic or arm.command_topic, image=image,
                             cameras=tuple(cams.items())[1:], command_groups=_command_groups(task_id, arm, command_topic),
                             **limits)
    return BagLayout(task_id, spec, obs_map, config, tuple(extra),
                     instruction_topic=ros_topic_name(arm.instruction_topic) if arm.instruction_topic else None)


# ----------------------------------------------------------------------------------------------------------
# Reading


def find_bags(paths: Sequence[str | Path]) -> list[Path]:
    """The bags named by ``paths``: a bag folder (``metadata.yaml``), an ``.mcap``/``.db3`` file, or a folder of bags.

    Raises:
        FileNotFoundError: a path that does not exist or holds no bag.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"rosbag {str(p)!r} does not exist")
        if p.is_file() or (p / "metadata.yaml").is_file():
            out.append(p)
            continue
        found = sorted(m.parent for m in p.glob("*/metadata.yaml"))
        if not found:
            raise FileNotFoundError(f"no rosbag2 recording at {str(p)!r} (a bag folder has a metadata.yaml)")
        out += found
    return out


def bag_topics(path: str | Path) -> dict[str, str]:
    """Topic -> message type of every connection in a bag (reads only its index)."""
    from rosbags.rosbag2 import Reader  # noqa: PLC0415

    with Reader(Path(path)) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def _check_topics(path: Path, layout: BagLayout) -> None:
    c = layout.config
    wanted = {c.joint_states: "--state-topic"}
    wanted.update({topic: f"command group {list(joints)}" for topic, joints in c.command_groups}
                  or {c.commands: "--command-topic"})
    images = layout.images
    for key, topic in images.items():
        wanted.setdefault(topic, "--image-topic" if len(images) == 1 else f"camera {key!r} of the task's recipe")
    for s in layout.extra:
        wanted.setdefault(ros_topic_name(s.topic), f"{s.key!r} of the task's recipe")
    have = bag_topics(path)
    missing = [f"{t} ({what})" for t, what in wanted.items() if t not in have]
    if missing:
        listing = ", ".join(f"{t} [{ty}]" for t, ty in sorted(have.items())) or "no topics"
        raise ValueError(f"rosbag {str(path)!r}: topic {', '.join(missing)} not found; the bag has: {listing}")


def _align_extra(path: Path, ep: BagEpisode, layout: BagLayout) -> BagEpisode:
    """Add the extra JointState topics' keys to ``ep`` by the same rule; drop commands they cannot serve."""
    by_topic: dict[str, list[NamedSource]] = {}
    for s in layout.extra:
        by_topic.setdefault(ros_topic_name(s.topic), []).append(s)
    data = read_topics(path, list(by_topic))
    keep = np.ones(len(ep), dtype=bool)  # (T,)
    values: dict[str, np.ndarray] = {}
    stale = dict(ep.stale)  # counted on the commands read_bag kept
    rejected = 0
    for topic, sources in by_topic.items():
        cls, raw = data[topic]
        if cls is not JointState:
            raise ValueError(f"rosbag {path.name}: {topic} has type {cls.ROS_TYPE}, expected sensor_msgs/msg/JointState")
        times, rows = [], []
        for i, (t, b) in enumerate(raw):
            try:
                msg = validate(cdr.decode(JointState, b))
                rows.append([s.values(msg) for s in sources])
            except ValueError as e:
                if layout.config.strict:
                    raise ValueError(f"rosbag: {topic} message {i} (t={t} ns): {e}") from None
                rejected += 1
                continue
            times.append(t)
        idx, ok = latest_before(np.asarray(times, np.int64), ep.timestamps_ns, layout.config.max_state_age)
        stale[topic] = int(np.sum(~ok))
        keep &= ok
        for j, s in enumerate(sources):
            values[s.key] = np.stack([rows[i][j] for i in idx]) if rows else np.zeros((len(ep), len(s.names)))  # (T, n)
    return _subset(replace(ep, observations={**ep.observations, **values}, rejected=ep.rejected + rejected, stale=stale),
                   keep)


def _instructions(path: Path, ep: BagEpisode, layout: BagLayout) -> tuple[dict[str, list[str]], np.ndarray]:
    """Each text field's values at the timesteps of ``ep`` that have one, and which those are (bool ``(T,)``).

    With an instruction topic in the bag, a timestep's text is the latest ``std_msgs/String`` received at or before
    its command (an instruction holds until the next; commands before the first are dropped, as a policy that
    reads an instruction waits for one); without, every timestep holds the task's registered instruction.

    Raises:
        ValueError: no instruction topic in the bag and a task the registry does not know (no text to use).
    """
    T = len(ep)
    topic = layout.instruction_topic
    if topic and topic in bag_topics(path):
        cls, raw = read_topics(path, [topic])[topic]
        if cls is not String:
            raise ValueError(f"rosbag {path.name}: {topic} has type {cls.ROS_TYPE}, expected std_msgs/msg/String")
        times = np.asarray([t for t, _ in raw], np.int64)
        words = [validate(cdr.decode(String, b)).data for _, b in raw]
        idx, keep = latest_before(times, ep.timestamps_ns, 1e9)  # no age limit: it holds until the next
        values = [words[i] for i in idx] if words else [""] * T
    else:
        try:
            text = get_task(layout.task_id).instruction
        except KeyError:
            raise ValueError(f"rosbag {path.name}: task {layout.task_id!r} reads an instruction ({layout.texts}), but the "
                             f"bag has no {topic or 'instruction topic'} and the registry has no text for the task; "
                             f"record the robot's instruction topic") from None
        values, keep = [text] * T, np.ones(T, dtype=bool)
    sel = np.flatnonzero(keep)
    return {key: [values[i] for i in sel] for key in layout.texts}, keep


def _subset(ep: BagEpisode, keep: np.ndarray) -> BagEpisode:
    """The timesteps ``keep`` of ``ep`` (the others counted as dropped)."""
    sel = np.flatnonzero(keep)
    return replace(ep, observations={k: v[sel] for k, v in ep.observations.items()}, actions=ep.actions[sel],
                   timestamps_ns=ep.timestamps_ns[sel], state_timestamps_ns=ep.state_timestamps_ns[sel],
                   dropped=ep.dropped + int(len(keep) - len(sel)))


@dataclass
class BagReport:
    """What one bag gave: frames kept, messages dropped by the alignment rule or rejected as malformed."""

    bag: str
    frames: int
    dropped: int
    rejected: int
    duration_s: float
    out_of_bounds: int = 0
    """Action values outside the spec's bounds (kept as recorded; the tokenizer clips them)."""
    rate_hz: float | None = None
    """Command rate: 1 / the median interval between kept timesteps (None for a single timestep)."""


def read_bag_episode(path: str | Path, layout: BagLayout) -> tuple[Episode, BagReport]:
    """One bag as an :class:`Episode` of the layout's task (rewards 0, success None, in the spec's dtypes).

    Raises:
        FileNotFoundError: no such bag.
        ValueError: a topic the bag lacks (the message lists the bag's topics), a malformed message
            (``strict``), an image size or anything else that differs from the task's spec, or no timestep
            left after alignment.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"rosbag {str(path)!r} does not exist")
    _check_topics(path, layout)
    ep = read_bag(path, layout.obs_map, layout.config)
    if layout.extra and len(ep):
        ep = _align_extra(path, ep, layout)
    texts: dict[str, list[str]] = {}
    if layout.texts and len(ep):
        texts, keep = _instructions(path, ep, layout)
        ep = _subset(ep, keep)
    if len(ep) == 0:
        stale = ", ".join(f"{topic} at {n}" for topic, n in ep.stale.items() if n)
        raise ValueError(
            f"rosbag {str(path)!r}: no timestep left after alignment ({ep.dropped} commands on "
            f"{' + '.join(layout.config.command_topics)} "
            f"dropped: no state at or before them, or older than --max-state-age {layout.config.max_state_age} s"
            + (f" / --max-image-age {layout.config.max_image_age} s" if layout.images else "") + ")"
            + (f"; commands without a fresh message, per topic: {stale}" if stale else "")
        )
    spec = layout.spec
    observations: dict[str, Any] = {}
    for f in spec.observation:
        if f.kind == "text":
            observations[f.name] = texts[f.name]
            continue
        value = ep.observations[f.name]
        if value.shape[1:] != tuple(f.shape):
            raise ValueError(
                f"rosbag {str(path)!r}: observation {f.name!r} of task {layout.task_id!r} expected shape {tuple(f.shape)}, "
                f"got {value.shape[1:]} from {layout.images.get(f.name, layout.config.joint_states)}"
            )
        observations[f.name] = value.astype(f.dtype)
    actions = ep.actions.astype(spec.action.dtype)  # (T, A)
    oob = 0
    if spec.action.bounded:
        lo, hi = np.asarray(spec.action.low), np.asarray(spec.action.high)
        oob = int(np.sum((actions < lo) | (actions > hi)))
    try:
        instruction = get_task(layout.task_id).instruction
    except KeyError:
        instruction = None
    if layout.texts:
        instruction = texts[layout.texts[0]][0]  # the episode's first instruction (LeRobot's task)
    episode = Episode(layout.task_id, observations, actions, np.zeros(len(ep), np.float32), success=None,
                      terminated=False, spec=spec, instruction=instruction)
    period = float(np.median(np.diff(ep.timestamps))) if len(ep) > 1 else 0.0
    report = BagReport(str(path), len(ep), ep.dropped, ep.rejected, float(ep.timestamps[-1]), oob,
                       1.0 / period if period > 0 else None)
    return episode, report


@dataclass
class ImportSummary:
    """Outcome of :func:`import_bags`."""

    out: str
    task_id: str
    bags: list[BagReport] = field(default_factory=list)
    episode_indices: list[int] = field(default_factory=list)
    total_episodes: int = 0

    @property
    def frames(self) -> int:
        return sum(b.frames for b in self.bags)

    @property
    def dropped(self) -> int:
        return sum(b.dropped for b in self.bags)

    @property
    def rejected(self) -> int:
        return sum(b.rejected for b in self.bags)

    def lines(self) -> list[str]:
        """The printed summary."""
        out = [f"  {b.bag}: {b.frames} frames over {b.duration_s:.2f} s, {b.dropped} commands dropped by the alignment "
               f"rule, {b.rejected} malformed messages rejected"
               + (f", {b.out_of_bounds} action values outside the spec's bounds" if b.out_of_bounds else "")
               for b in self.bags]
        first = self.episode_indices[0] if self.episode_indices else 0
        out.append(f"imported {len(self.bags)} episodes ({self.frames} frames; {self.dropped} commands dropped, "
                   f"{self.rejected} messages rejected) of {self.task_id} into {self.out} as episodes "
                   f"{first}..{first + len(self.bags) - 1} ({self.total_episodes} in total)")
        out.append(f"  rewards {REWARD_NOTE}; success {SUCCESS_NOTE} (noted in {IMPORT_NOTES_PATH})")
        return out


def import_bags(bags: Sequence[str | Path], out: str | Path, layout: BagLayout, fps: int | None = None,
                progress: bool = False) -> ImportSummary:
    """Append one episode per bag to the episode store at ``out`` (all or none) and note their provenance.

    Args:
        bags: bag folders, ``.mcap``/``.db3`` files or folders of bags (see :func:`find_bags`).
        out: episode store folder (created or appended to).
        layout: see :func:`task_layout`.
        fps: frames per second recorded for a new store (default: the first bag's command rate, from the median interval).
        progress: show a progress bar over the bags.

    Returns:
        Per-bag counts and the new episode indices.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_bag_episode`; nothing is written then.
    """
    paths = find_bags(bags)
    prepared, reports = [], []
    it = paths
    if progress and len(paths) > 1:
        from tqdm import tqdm  # noqa: PLC0415

        it = tqdm(paths, desc="rosbags", unit="bag")
    for p in it:
        ep, report = read_bag_episode(p, layout)
        prepared.append(prepare_episode(ep))  # PNG-encoded: long image bags do not pile up as raw frames
        reports.append(report)
    if fps is None:
        rates = [r.rate_hz for r in reports if r.rate_hz]
        fps = max(1, round(rates[0])) if rates else 1
    summary = ImportSummary(str(out), layout.task_id, reports)
    with EpisodeStore(out, fps=fps) as store:
        summary.episode_indices = store.append_episodes(prepared)
        summary.total_episodes = store.num_episodes
        _write_notes(store, summary, layout)
    return summary


def _write_notes(store: EpisodeStore, summary: ImportSummary, layout: BagLayout) -> None:
    c = layout.config
    notes = read_import_notes(store.root)
    notes.append({
        "source": "rosbag2",
        "task_id": summary.task_id,
        "episodes": summary.episode_indices,
        "bags": [b.bag for b in summary.bags],
        "frames": [b.frames for b in summary.bags],
        "dropped_commands": [b.dropped for b in summary.bags],
        "rejected_messages": [b.rejected for b in summary.bags],
        "rewards": REWARD_NOTE,
        "success": SUCCESS_NOTE,
        "alignment": ("each command (bag receive time t) is one timestep; observation = latest message of every "
                      "state/image topic at or before t; dropped if none or older than the max age"),
        "max_state_age_s": c.max_state_age,
        "max_image_age_s": c.max_image_age if layout.images else None,
        "image_topics": layout.images,
        "topics": layout.describe(),
    })
    write_json_atomic(store.root / IMPORT_NOTES_PATH, notes)


# ---------------------------------------------------------------------------------------------
# omnipolicy dataset from-rosbag


@dataclass(frozen=True)
class FromRosbag:
    """Import rosbag2 recordings (MCAP or SQLite3) as episodes: one bag = one episode (needs the `ros` extra).

    Each command message is one timestep; its observation is the latest joint state (and image of each camera)
    received at or before it (see this module). Rewards are stored as 0 and success as unknown.
    """

    bags: tyro.conf.Positional[Annotated[tuple[Path, ...], tyro.conf.arg(metavar="BAG [BAG ...]")]]
    """Bag folders (with metadata.yaml), .mcap/.db3 files, or folders of bag folders."""
    out: Path
    """Episode store folder to append to (created if needed)."""
    task: str | None = None
    """Task id of the episodes: a registered task whose TimestepSpec they must match (its robot arm's observation
    recipe is used); required without --robot. With --robot, default: the file's `task`, else the robot's name."""
    robot: Path | None = None
    """Robot file (TOML; docs/ros2.md) whose joints, topics and observation recipe the bags follow."""
    joints: tuple[str, ...] = ()
    """Joint names in the controller's (= the action's) order; for a task without a robot arm, or to override it."""
    ignore_joints: tuple[str, ...] = ()
    """Other joint names the joint states may carry (dropped)."""
    state_topic: str | None = None
    """sensor_msgs/JointState topic (default: the arm's, else /joint_states)."""
    command_topic: str | None = None
    """Float64MultiArray or JointTrajectory command topic (default: the arm's, else /forward_position_controller/commands)."""
    image_topic: str | None = None
    """sensor_msgs/Image topic (default: the arm's camera topics); renames the camera of a one-camera task only."""
    position_key: str | None = None
    """Without an arm: observation key of the joint positions (default: `position` if the task has it)."""
    velocity_key: str | None = None
    """Without an arm: observation key of the joint velocities (default: `velocity` if the task has it)."""
    max_state_age: float = 0.1
    """Drop a command whose latest joint state (or task state) is older than this (seconds)."""
    max_image_age: float = 0.2
    """Drop a command whose latest image is older than this (seconds)."""
    lenient: bool = False
    """Skip malformed messages (counted as rejected) instead of failing."""
    fps: int | None = None
    """Frames per second recorded for a new dataset (default: the first bag's command rate)."""


def from_rosbag(cmd: FromRosbag) -> None:
    """Run ``omnipolicy dataset from-rosbag``."""
    if importlib.util.find_spec("rosbags") is None:
        sys.exit("omnipolicy dataset from-rosbag: the `rosbags` package is not installed: pip install 'omnipolicy[ros]'")
    if not cmd.bags:
        sys.exit("omnipolicy dataset from-rosbag: give at least one BAG (a bag folder, .mcap/.db3 file or folder of bags)")
    if cmd.task is None and cmd.robot is None:
        sys.exit("omnipolicy dataset from-rosbag: give --task (a registered task id) or --robot (a robot file)")
    try:
        arm = load_robot_file(cmd.robot) if cmd.robot is not None else None
        task_id = cmd.task or (arm.task_id or arm.name if arm is not None else "")
        spec = None
        if arm is not None and task_id not in {t.id for t in list_tasks()}:
            spec = arm.timestep_spec()  # an arm known only by its file
        layout = task_layout(
            task_id, joints=cmd.joints, ignore_joints=cmd.ignore_joints, state_topic=cmd.state_topic,
            command_topic=cmd.command_topic, image_topic=cmd.image_topic, position_key=cmd.position_key,
            velocity_key=cmd.velocity_key, max_state_age=cmd.max_state_age, max_image_age=cmd.max_image_age,
            strict=not cmd.lenient, spec=spec, arm=arm,
        )
        if arm is not None:
            arm.check_spec(layout.spec)  # the robot's joints and names against the task's spec
        print(f"{task_id}: " + "; ".join(layout.describe()))
        summary = import_bags(cmd.bags, cmd.out, layout, fps=cmd.fps, progress=True)
    except KeyError as exc:
        sys.exit(f"omnipolicy dataset from-rosbag: {exc.args[0]}")
    except (ValueError, FileNotFoundError, DatasetError) as exc:
        sys.exit(f"omnipolicy dataset from-rosbag: {exc}")
    print("\n".join(summary.lines()))
