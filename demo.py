"""The main job, end to end: collect the default suite, train one generalist, evaluate it, report.

``make demo`` runs ``omnipolicy demo`` with its defaults, sized to finish in
about 30 minutes on a 2-core CPU machine after set-up. Every stage resumes:
collection continues an existing dataset, training continues from the last
checkpoint, so rerunning after an interruption picks up where it stopped.

Outputs under ``--out`` (default ``runs/demo``): ``data/`` (one LeRobot v3
dataset per task), ``train/`` (checkpoints, TensorBoard logs, token cache),
``report.md``, ``report.json``, ``scores.png``, ``videos/`` and
``timings.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import tyro

from omnipolicy.agent import PolicyActor, TrainConfig, train
from omnipolicy.agent.policy import check_task_decoding
from omnipolicy.agent.train import TrainResult
from omnipolicy.datasets.collect import collect, task_path
from omnipolicy.datasets.dagger import dagger_round
from omnipolicy.datasets.store import EpisodeStore
from omnipolicy.envs import DEFAULT_SUITE, get_task, task_entry
from omnipolicy.envs.evaluate import evaluate
from omnipolicy.files import write_json_atomic

_V = TypeVar("_V", int, float)


@dataclass(frozen=True)
class DemoRecipe:
    """The demo's per-task settings of collection and DAgger rounds, in one place.

    Each table is keyed by domain (``"dmc"``) or task id (``"dmc/reacher-easy"``); a task's own entry wins over
    its domain's. Every entry is an option of ``omnipolicy demo``: ``--recipe.episodes.atari 20``,
    ``--recipe.noise.classic/cartpole-v1 0.1``, ``--recipe.dagger-scale.metaworld 1``. The command line changes
    the entries a table has; an entry for another task is added in Python, e.g.
    ``DemoRecipe(noise={**DemoRecipe().noise, "dmc/cartpole-balance": 0.1})``. The measurements that chose the
    defaults are in docs/results.md ("Measurements behind the demo's settings").
    """

    episodes: dict[str, int] = field(default_factory=lambda: {
        "classic": 30,
        "mujoco": 30,
        "dmc": 12,
        "metaworld": 40,
        "atari": 10,  # episodes of at most the protocol's 2,000 steps
        "classic/mountaincar-v0": 60,
        "classic/pendulum-v1": 100,
        "mujoco/reacher-v5": 200,  # 50-step episodes: more of them for the same number of tokens
        "dmc/reacher-easy": 80,  # a new target each episode: more targets
        "dmc/cartpole-swingup": 30,
    })
    """Demonstrations per task, sized for the 30-minute budget, more where episodes are short or each one draws a
    new goal (``--episodes`` > 0 sets one count for every task instead)."""
    max_steps: dict[str, int] = field(default_factory=lambda: {
        "classic": 0,
        "mujoco": 0,
        "dmc": 0,
        "metaworld": 250,  # the experts succeed within ~70-170 of the 500 steps, then hold still
        "atari": 0,
        "dmc/reacher-easy": 150,  # the expert reaches its target within ~30 steps, then holds it
        "dmc/cartpole-swingup": 400,  # the swing-up takes ~170 steps; the rest balances, as cartpole-balance does
    })
    """Episode cap at collection (0, or a domain without an entry: the task's own limit; the evaluation runs full
    episodes): where the expert is done early, shorter episodes buy more starting states for the same time."""
    noise: dict[str, float] = field(default_factory=lambda: {
        "classic": 0.0,
        "mujoco": 0.3,
        "dmc": 0.3,
        "metaworld": 0.3,
        "atari": 0.0,
        "classic/pendulum-v1": 0.3,  # the one continuous classic task
        "classic/cartpole-v1": 0.3,  # clean, the expert's alternating pushes teach a policy to alternate blindly
        "mujoco/inverted-double-pendulum-v5": 0.1,  # at 0.3 the expert itself falls; at 0.1 it holds all 1000 steps
    })
    """DART action noise at collection (``--action-noise`` sets one value for every task instead): noisy actions
    run while the expert's are recorded, so the demonstrations show corrections that a still expert never makes."""
    dagger_scale: dict[str, int] = field(default_factory=lambda: {
        "atari": 1,
        "classic": 1,
        "dmc": 1,
        "metaworld": 0,  # the underfitting model learns early policies' wandering at the demonstrations' expense
        "mujoco": 1,
        "classic/cartpole-v1": 0,  # the discrete classic tasks reach expert level from their demonstrations alone
        "classic/acrobot-v1": 0,
        "classic/mountaincar-v0": 0,
        "classic/pendulum-v1": 3,  # its 100 demonstrations drown out 10 episodes a round
        "dmc/reacher-easy": 2,  # a new target each episode, 80 demonstrations
        "dmc/cartpole-swingup": 3,  # the policy's own swings near the top: 30 episodes a round took it 35 -> 58 alone
    })
    """DAgger episodes per task per round, as a multiple of ``--dagger-episodes`` (0, or a domain without an
    entry: no rounds for the task): rounds correct the states a policy drifts into, where a task needs it."""
    weight: dict[str, float] = field(default_factory=lambda: {
        "atari": 0.25,  # random play from pixels at every budget up to 4x: its windows buy nothing here
        "classic": 1.0,
        "dmc": 1.0,
        "metaworld": 1.0,
        "mujoco": 1.0,
        "classic/acrobot-v1": 0.5,  # at or near expert level in every run: half the windows
        "classic/mountaincar-v0": 0.5,
        "dmc/cartpole-balance": 0.5,
        "dmc/point_mass-easy": 0.5,
        "mujoco/inverted-pendulum-v5": 0.5,
        "dmc/cartpole-swingup": 2.5,  # cross the line at 2x compute, fall under it at 1x
        "mujoco/inverted-double-pendulum-v5": 2.5,
        "metaworld/pick-place-v3": 1.5,  # the grasp, right in one run and wrong in the next at 1x
        "metaworld/peg-insert-side-v3": 1.5,
    })
    """Training sampling weight of each task (a task whose domain has no entry: 1): a task is drawn for a training
    window in proportion to its weight, so it gets that many times the windows of a task with weight 1. Over the
    default suite the total is the equal weights' (23), moved from the tasks that do not need their share to the
    ones that cross the line with more compute; the measurements are in docs/results.md ("The main job with
    per-task budgets")."""
    decoding: dict[str, Literal["mean", "mode"]] = field(default_factory=lambda: {
        "metaworld": "mode",  # push 58 -> 81, peg-insert 51 -> 64 over four checkpoints; the rest within noise
    })
    """How the trained policy picks a continuous action's bin where it differs from ``DemoConfig.decoding``:
    ``mean`` (the expected bin) or ``mode`` (the most likely one), written into the checkpoint as
    ``TrainConfig.task_decoding`` and used wherever it is evaluated, labelled or deployed with
    ``--continuous-decoding auto``. The grasps succeed more often on the most likely bin (open or closed, not
    half-closed); the measurements are in docs/results.md ("The main job with Meta-World on the most likely
    bin")."""
    dagger_step_share: float = 0.2
    """A round also labels at least this share of each task's demonstration steps, running more episodes where the
    policy's are short (a policy that falls early labels almost nothing in a fixed number of episodes)."""
    dagger_max_episodes: int = 200
    """Most episodes one pass of a round runs for one task."""
    dagger_max_steps: int = 400
    """Episode cap of a DAgger round (besides the collection caps): a policy that fails early in a long episode
    (Breakout without serving, a fallen pole) adds little after it."""

    def __post_init__(self) -> None:
        checks = {
            "episodes": (self.episodes, 1, None, "an int >= 1"),
            "max_steps": (self.max_steps, 0, None, "an int >= 0 (0: the task's own limit)"),
            "noise": (self.noise, 0.0, 1.0, "in [0, 1]"),
            "dagger_scale": (self.dagger_scale, 0, None, "an int >= 0 (0: no rounds)"),
            "weight": (self.weight, 0.0, None, "a float >= 0 (0: collected and evaluated, never trained on)"),
        }
        check_task_decoding(self.decoding, "DemoRecipe.decoding")
        for name, (table, low, high, expected) in checks.items():
            bad = {k: v for k, v in table.items() if v < low or (high is not None and v > high)}
            if bad:
                raise ValueError(f"DemoRecipe.{name} values must be {expected}, got {bad}")
        scalars = {"dagger_step_share": (self.dagger_step_share, 0.0),
                   "dagger_max_episodes": (self.dagger_max_episodes, 1),
                   "dagger_max_steps": (self.dagger_max_steps, 1)}
        for name, (value, low) in scalars.items():
            if value < low:
                raise ValueError(f"DemoRecipe.{name} must be >= {low}, got {value}")

    def episodes_for(self, task_id: str) -> int:
        """Demonstrations of ``task_id``.

        Raises:
            ValueError: neither the task nor its domain has an entry.
        """
        return _required(self.episodes, "episodes", task_id, "--episodes")

    def noise_for(self, task_id: str) -> float:
        """DART action noise of ``task_id``'s demonstrations.

        Raises:
            ValueError: neither the task nor its domain has an entry.
        """
        return _required(self.noise, "noise", task_id, "--action-noise")

    def max_steps_for(self, task_id: str) -> int | None:
        """Episode cap of ``task_id``'s demonstrations (None: the task's own limit).

        >>> DemoRecipe().max_steps_for("metaworld/push-v3"), DemoRecipe().max_steps_for("classic/cartpole-v1")
        (250, None)
        """
        return task_entry(self.max_steps, task_id) or None

    def dagger_scale_for(self, task_id: str) -> int:
        """Multiple of ``DemoConfig.dagger_episodes`` a round runs of ``task_id`` (0: the task gets no rounds)."""
        return task_entry(self.dagger_scale, task_id) or 0

    def weight_for(self, task_id: str) -> float:
        """Training sampling weight of ``task_id`` (1 where neither the task nor its domain has an entry).

        >>> recipe = DemoRecipe(weight={"atari": 0.5, "metaworld/push-v3": 4.0})
        >>> [recipe.weight_for(t) for t in ("metaworld/push-v3", "atari/pong", "dmc/reacher-easy")]
        [4.0, 0.5, 1.0]
        """
        value = task_entry(self.weight, task_id)
        return 1.0 if value is None else float(value)

    def dagger_tasks(self, tasks: Sequence[str]) -> list[str]:
        """The tasks of ``tasks`` that get DAgger rounds, in their order."""
        return [t for t in tasks if self.dagger_scale_for(t) > 0]

    @property
    def dagger_domains(self) -> tuple[str, ...]:
        """The domains whose tasks get rounds unless their own entry says otherwise."""
        return tuple(k for k, v in self.dagger_scale.items() if "/" not in k and v > 0)

    def dagger_cap(self, task_id: str) -> int:
        """Episode cap of ``task_id`` in a DAgger round: its collection cap, at most ``dagger_max_steps``."""
        return min(self.max_steps_for(task_id) or self.dagger_max_steps, self.dagger_max_steps)

    def dagger_shortfall(self, want_episodes: int, want_steps: int, held_episodes: int, held_steps: int,
                         per_episode: float) -> int:
        """Episodes a DAgger round still has to run for one task to hold ``want_episodes`` and ``want_steps``.

        The steps still missing are divided by ``per_episode``, the expected length of one more episode (the mean
        of this round's last pass; before any, a demonstration's mean length, at most the round's cap); the answer
        is at most ``dagger_max_episodes``.
        """
        need = max(0, want_episodes - held_episodes)
        if held_steps < want_steps:
            need = max(need, math.ceil((want_steps - held_steps) / max(per_episode, 1.0)))
        return min(need, self.dagger_max_episodes)


def _required(table: Mapping[str, _V], name: str, task_id: str, flag: str) -> _V:
    """``task_entry``, for a table that must cover every task (``name`` and ``flag`` are for the error message)."""
    value = task_entry(table, task_id)
    if value is None:
        raise ValueError(f"DemoRecipe.{name} has no entry for {task_id!r} or its domain {task_id.split('/')[0]!r}; "
                         f"it has {list(table)} (or set one value for every task with {flag})")
    return value


@dataclass
class DemoConfig:
    """Collect -> train -> evaluate -> report, with one set of weights for every task."""

    out: Path = Path("runs/demo")
    """Run folder: data/, train/, videos/, report.md, report.json."""
    tasks: tuple[str, ...] = ()
    """Task ids (default: the default suite, `omnipolicy tasks` marks it with *)."""
    episodes: int = 0
    """Demonstration episodes per task (0: the recipe's, ``--recipe.episodes.*``)."""
    workers: int = 2
    """Collection worker processes."""
    preset: str = "cpu-tiny"
    """Model preset (`omnipolicy train --list-presets`)."""
    train_steps: int = 10500
    """Optimizer steps (the default fits the 30-minute budget on a 2-core CPU with the DAgger rounds, about 26
    minutes; fixed so runs are reproducible)."""
    batch_size: int = 16
    """Windows per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate."""
    ema_decay: float = 0.0
    """Decay of a moving average of the weights for the checkpoints to hold, and every round and the evaluation to
    act with (TrainConfig.ema_decay; 0: the last weights. At 0.999 the main job's validation loss fell and its
    scores did too: docs/results.md, "The weights' moving average")."""
    eval_episodes: int = 10
    """Evaluation episodes per task."""
    eval_envs: int = 10
    """Parallel evaluation environments per task (batched through the policy)."""
    eval_workers: int = 2
    """Processes evaluating tasks side by side (one per core here; the scores do not depend on it)."""
    video: bool = True
    """Write one rollout GIF per task."""
    seed: int = 0
    """Seed for collection and training."""
    action_noise: float | None = None
    """DART action noise for every task (default: the recipe's, ``--recipe.noise.*``)."""
    bin_sigma: float = 8.0
    """Gaussian width of continuous action targets in bins (TrainConfig.bin_sigma; 0 = Gato's one-hot)."""
    decoding: Literal["auto", "mean", "mode"] = "auto"
    """How the trained policy picks a continuous action's bin, in the evaluation and wherever its checkpoint is
    used with ``--continuous-decoding auto`` (TrainConfig.decoding; auto: the expected bin with bin_sigma > 0)."""
    action_inputs: Literal["tokens", "hidden"] = "hidden"
    """What the model reads at action positions (ModelConfig.action_inputs; tokens = Gato)."""
    action_chunk: int | None = None
    """Actions per timestep of continuous-action tasks (ACT's chunking, TrainConfig.action_chunk; default: the
    preset's, 1)."""
    chunk_execution: Literal["ensemble", "receding"] | None = None
    """How chunks are executed (TrainConfig.chunk_execution; default: the preset's)."""
    prompt_prob: float = 0.0
    """Share of training windows prefixed with a demonstration (TrainConfig.prompt_prob; Gato: 0.25). The demo's
    evaluation does not prompt, and a prompt is half a window without loss: at 0, the same steps train on more
    action tokens."""
    val_fraction: float = 0.05
    """Share of each task's demonstrations held out for the validation loss (TrainConfig.val_fraction; tasks with
    fewer than 20 keep all of theirs)."""
    dagger_rounds: int = 2
    """DAgger rounds during training (0: behaviour cloning only). Training stops after each of
    ``train_steps * k / (rounds + 1)`` steps, the policy of that checkpoint runs ``dagger_episodes`` episodes of
    every task the recipe gives rounds (``--recipe.dagger-scale.*``) with the expert labelling each state it
    reaches (``omnipolicy dagger``), and training resumes on the demonstrations plus every round so far. The
    learning-rate schedule is the one of an uninterrupted run."""
    dagger_episodes: int = 10
    """Episodes per task per DAgger round, times the task's ``recipe.dagger_scale`` (capped like the
    demonstrations, and at ``recipe.dagger_max_steps``; more where they label under ``recipe.dagger_step_share``
    of the task's demonstration steps)."""
    recipe: DemoRecipe = field(default_factory=DemoRecipe)
    """Per-task settings of collection and DAgger rounds (``DemoRecipe``; each table entry is an option)."""

    def episodes_for(self, task_id: str) -> int:
        """Demonstrations of ``task_id``: ``episodes``, or the recipe's when 0."""
        return self.episodes or self.recipe.episodes_for(task_id)

    def noise_for(self, task_id: str) -> float:
        """DART action noise of ``task_id``'s demonstrations: ``action_noise``, or the recipe's when None."""
        return self.recipe.noise_for(task_id) if self.action_noise is None else self.action_noise

    def dagger_episodes_for(self, task_id: str) -> int:
        """Policy episodes a DAgger round adds for ``task_id``: ``dagger_episodes`` times its recipe scale."""
        return self.dagger_episodes * self.recipe.dagger_scale_for(task_id)

    def rounds_for(self, tasks: Sequence[str]) -> int:
        """The DAgger rounds a run of ``tasks`` makes: ``dagger_rounds``, or 0 when the recipe gives none of them
        rounds."""
        return max(0, self.dagger_rounds) if self.recipe.dagger_tasks(tasks) else 0


def demo_command(argv: list[str], prog: str) -> None:

    cfg = tyro.cli(DemoConfig, args=argv, prog=prog)
    summary = run_demo(cfg)
    o = summary["overall"]
    print(
        f"\n{o['tasks_at_least_50']} of {o['tasks']} tasks at or above 50% of expert; "
        f"mean expert-normalised score {o['normalized_mean']:.1f}\nreport: {cfg.out / 'report.md'}"
    )


def check_collection_settings(data: Path, noise: dict[str, float], max_steps: dict[str, int | None] | None = None) -> None:
    """Refuse to extend datasets collected with other noise levels or episode caps (a rerun would silently mix them).

    Args:
        data: the demo's data folder; the settings are recorded in ``demo_collection.json`` there.
        noise: DART action noise per task id.
        max_steps: episode cap per task id at collection (None or missing: the task's own limit).
    """

    now = {"action_noise": noise, "max_steps": {t: (max_steps or {}).get(t) for t in noise}}
    labels = {"action_noise": "action noise", "max_steps": "episode caps (max_steps; None = the task's own limit)"}
    record = data / "demo_collection.json"
    # datasets from before the record existed were collected without noise, to the task's own limit
    existing = [t for t in noise if task_path(data, t).exists()]
    before = {"action_noise": {t: 0.0 for t in existing}, "max_steps": {t: None for t in existing}}
    if record.exists():
        saved = json.loads(record.read_text())
        for key in before:
            before[key].update(saved.get(key, {}))
    for key, values in now.items():
        changed = {t: (before[key][t], v) for t, v in values.items() if t in before[key] and before[key][t] != v}
        if changed:
            raise ValueError(
                f"{data} holds demonstrations collected with other {labels[key]} (before, now): {changed}; "
                f"delete that folder or pick another --out"
            )
    write_json_atomic(record, {key: {**before[key], **now[key]} for key in now}, indent=2, sort_keys=True)


def dagger_stops(train_steps: int, rounds: int) -> list[int]:
    """The steps after which training pauses for a DAgger round, then the last step: rounds + 1 even phases."""
    return sorted({max(1, train_steps * k // (rounds + 1)) for k in range(1, rounds + 1)} | {train_steps})


def train_with_dagger(cfg: DemoConfig, out: Path, tasks: Sequence[str], timings: dict[str, float],
                      extra_data: Sequence[Path] = ()) -> TrainResult:
    """Train in phases with DAgger rounds between them (see ``DemoConfig.dagger_rounds``).

    Round ``k`` tops each task's DAgger dataset up to ``k`` times its episodes per round
    (``DemoConfig.dagger_episodes_for``) and ``k`` times ``recipe.dagger_step_share`` of its demonstration steps,
    episodes capped at ``recipe.dagger_cap``, in up to three passes (the later ones sized by the mean length of
    the last pass's episodes). A rerun continues where an interrupted one stopped: each phase resumes from the
    newest checkpoint, and a round only tops up, with the checkpoint of the step it belongs to (a rerun past that
    step finds the round complete).

    ``extra_data``: more datasets to train on besides ``out/data`` (episodes recorded on a robot, say).

    Returns:
        The last phase's TrainResult.
    """

    demos, dagger_dir = out / "data", out / "dagger"
    recipe = cfg.recipe
    rounds = cfg.rounds_for(tasks)
    labelled = recipe.dagger_tasks(tasks) if rounds else []
    stops = dagger_stops(cfg.train_steps, rounds) if rounds else [cfg.train_steps]
    round_caps = {t: recipe.dagger_cap(t) for t in labelled}
    scaled = sorted(t for t in labelled if recipe.dagger_scale_for(t) > 1)  # more episodes a round than the rest
    shown = {t: EpisodeStore(task_path(demos, t)) for t in labelled}  # the demonstrations (they don't change)
    demo_steps = {t: shown[t].num_frames for t in labelled}
    # a round's first pass expects an episode as long as a demonstration (at most the round's cap)
    first_length = {t: min(float(round_caps[t]), demo_steps[t] / max(shown[t].num_episodes, 1)) for t in labelled}

    def held(task_id: str) -> tuple[int, int]:
        """Episodes and steps the task's DAgger dataset holds."""
        path = task_path(dagger_dir, task_id)
        store = EpisodeStore(path) if path.is_dir() else None
        return (store.num_episodes, store.num_frames) if store else (0, 0)

    result = None
    for k, stop in enumerate(stops):
        result = train(
            TrainConfig(
                data=(demos, *extra_data, *((dagger_dir,) if dagger_dir.is_dir() else ())),
                holdout_from=(demos,),
                out=out / "train",
                preset=cfg.preset,
                steps=cfg.train_steps,
                stop_at=stop,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                ema_decay=cfg.ema_decay,
                warmup_steps=100,
                seed=cfg.seed,
                bin_sigma=cfg.bin_sigma,
                decoding=cfg.decoding,
                task_decoding=dict(cfg.recipe.decoding),
                action_inputs=cfg.action_inputs,
                action_chunk=cfg.action_chunk,
                chunk_execution=cfg.chunk_execution,
                prompt_prob=cfg.prompt_prob,
                val_fraction=cfg.val_fraction,
                task_weights={t: recipe.weight_for(t) for t in tasks},
                val_every=1000,
                save_every=250,
                resume=True,
            )
        )
        if stop == cfg.train_steps:
            break
        if result.step > stop:
            continue  # a rerun: this round was done before the interruption
        t0 = time.perf_counter()
        want = {t: ((k + 1) * cfg.dagger_episodes_for(t), (k + 1) * math.ceil(recipe.dagger_step_share * demo_steps[t]))
                for t in labelled}
        print(f"DAgger round {k + 1}/{len(stops) - 1}: the step-{stop} policy runs {cfg.dagger_episodes} episodes "
              f"of each of {len(labelled)} tasks (more of {scaled}, and of those whose episodes label under "
              f"{recipe.dagger_step_share:.0%} of their demonstrations' steps), "
              f"the experts label every state it reaches")
        per_episode = dict(first_length)
        actor = PolicyActor.from_checkpoint(result.checkpoint)  # its recipe loads it again in each worker
        for _ in range(3):
            missing = {t: recipe.dagger_shortfall(*want[t], *held(t), per_episode[t]) for t in labelled}
            if not any(missing.values()):
                break
            summary = dagger_round(actor, [t for t in labelled if missing[t]], missing, dagger_dir,
                                   max_steps=round_caps, workers=cfg.eval_workers)
            per_episode.update({t: s["steps"] / s["new"] for t, s in summary.items() if s["new"]})
            print("  policy return in the round's episodes: " + ", ".join(
                f"{t} {s['policy_return']:.1f} (+{s['new']} ep, {s['steps']} steps)" for t, s in summary.items()))
        timings["dagger_s"] = timings.get("dagger_s", 0.0) + time.perf_counter() - t0
    return result


def collect_demonstrations(cfg: DemoConfig, tasks: Sequence[str], out: Path, timings: dict[str, float]) -> dict:
    """The experts' demonstrations of ``tasks`` into ``out/data`` (one dataset per task; a rerun tops them up) with
    the recipe's counts, noise and caps; returns :func:`~omnipolicy.datasets.collect.collect`'s per-task summary."""
    t0 = time.perf_counter()
    noise = {t: cfg.noise_for(t) for t in tasks}
    caps = {t: cfg.recipe.max_steps_for(t) for t in tasks}
    check_collection_settings(out / "data", noise, caps)
    by_count: dict[int, list[str]] = {}
    for t in tasks:
        by_count.setdefault(cfg.episodes_for(t), []).append(t)
    collected = {}
    for n, group in sorted(by_count.items()):
        collected.update(collect(group, n, out / "data", workers=cfg.workers, seed=cfg.seed, action_noise=noise,
                                 max_steps=caps))
    timings["collect_s"] = time.perf_counter() - t0
    return collected


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; return the evaluation summary (also written to ``out/report.json``)."""

    tasks = tuple(cfg.tasks) or tuple(DEFAULT_SUITE)
    for t in tasks:
        get_task(t)  # unknown ids fail now, with close matches
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # 1. Demonstrations: one dataset per task, by group so the per-domain counts apply.
    print(f"[1/3] collecting expert demonstrations for {len(tasks)} tasks into {out / 'data'}")
    collected = collect_demonstrations(cfg, tasks, out, timings)
    noise = {t: cfg.noise_for(t) for t in tasks}
    caps = {t: cfg.recipe.max_steps_for(t) for t in tasks}

    # 2. One generalist on all of it, with DAgger rounds between phases of one learning-rate schedule.
    t0 = time.perf_counter()
    rounds = cfg.rounds_for(tasks)
    weighted = {t: w for t in tasks if (w := cfg.recipe.weight_for(t)) != 1.0}
    print(f"[2/3] training {cfg.preset} on {len(tasks)} tasks for {cfg.train_steps} steps"
          + (f" with {rounds} DAgger round(s)" if rounds else "")
          + (f", sampling weights {weighted} (the rest 1)" if weighted else ""))
    result = train_with_dagger(cfg, out, tasks, timings)
    timings["train_s"] = time.perf_counter() - t0 - timings.get("dagger_s", 0.0)
    if result.val_loss:
        print(result.validation_summary() + " (every task's in report.json's protocol, TensorBoard's val/ and fit/)")

    # 3. The shared evaluation protocol on every task, then the report.
    t0 = time.perf_counter()
    print(f"[3/3] evaluating {len(tasks)} tasks x {cfg.eval_episodes} episodes")
    actor = PolicyActor.from_checkpoint(result.checkpoint)
    summary = evaluate(
        actor,
        tasks,
        cfg.eval_episodes,
        out,
        num_envs=cfg.eval_envs,
        video=cfg.video,
        title="omnipolicy demo: one generalist, every task",
        workers=cfg.eval_workers,
        extra_protocol={
            "checkpoint": str(result.checkpoint),
            "preset": cfg.preset,
            "demonstrations": {t: collected[t]["episodes"] for t in tasks},
            "training": f"{result.step} steps, batch {cfg.batch_size}, seed {cfg.seed}, prompt share {cfg.prompt_prob}, "
                        f"{cfg.val_fraction:.0%} of each task's demonstrations held out for validation"
                        + (f", weights averaged (decay {cfg.ema_decay})" if cfg.ema_decay else ""),
            "dagger": (f"{rounds} round(s) after steps {dagger_stops(cfg.train_steps, rounds)[:-1]}, "
                       f"{cfg.dagger_episodes} policy episodes per task each (capped at {cfg.recipe.dagger_max_steps} "
                       f"steps; more until they label {cfg.recipe.dagger_step_share:.0%} of the task's demonstration "
                       f"steps), labelled by the experts (Atari: the trackers), for the "
                       f"{', '.join(cfg.recipe.dagger_domains)} tasks; per "
                       f"task: { {t: cfg.dagger_episodes_for(t) for t in cfg.recipe.dagger_tasks(tasks)} }"
                       if rounds else "none"),
            "continuous_decoding": actor.policy.continuous_decoding,
            "task_decoding": actor.policy.task_decoding,
            "training_weights": weighted,
            "demonstration_action_noise": {t: v for t, v in noise.items() if v},
            "demonstration_max_steps": {t: v for t, v in caps.items() if v is not None},
            "model": f"action inputs {cfg.action_inputs}, Gaussian bin targets sigma {cfg.bin_sigma}",
            "validation_loss": {t: round(v, 4) for t, v in result.val_loss.items()},
            "training_episodes_loss": {t: round(v, 4) for t, v in result.fit_loss.items()},
        },
    )
    timings["eval_s"] = time.perf_counter() - t0
    (out / "timings.json").write_text(json.dumps(timings, indent=2))
    return summary
