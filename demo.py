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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from omnipolicy.files import write_json_atomic

if TYPE_CHECKING:
    from omnipolicy.agent.train import TrainResult

DEMO_EPISODES: dict[str, int] = {
    "classic": 30,
    "mujoco": 30,
    "dmc": 12,
    "metaworld": 40,
    "atari": 10,
}
"""Demonstrations per task by domain for the default run (sized for the 30-minute budget). An Atari episode lasts
at most the 2,000 steps of the evaluation protocol, so 10 a game (20,000 steps) collect in about the time that
3 full-length games took."""

DEMO_MAX_STEPS: dict[str, int] = {
    "metaworld": 250,
}
"""Episode caps at collection by domain (``collect(max_steps=...)``; the evaluation still runs each task's full
episodes). The Meta-World experts succeed within ~70-170 of the 500 steps and then hold still: halving the episodes
doubles the object and goal placements (of the 50 a task draws from) for the same collection time."""

DEMO_NOISE: dict[str, float] = {
    "classic": 0.0,
    "mujoco": 0.3,
    "dmc": 0.3,
    "metaworld": 0.3,
    "atari": 0.0,
}
"""DART action noise at collection by domain (``collect(action_noise=...)``): continuous control experts hold their
systems so still that clean demonstrations show almost no deviation to correct; noisy execution with the expert's
actions recorded shows the corrections. Acrobot, MountainCar and Atari learn well from clean data."""

NOISE_OVERRIDE: dict[str, float] = {
    "classic/pendulum-v1": 0.3,  # the one continuous classic task
    # clean, the expert holds the pole near upright with alternating pushes (66% of its actions switch), and a policy
    # that alternates regardless of the state scored 40-100 over seven runs (a failing episode alternates 0, 1, 0, 1
    # while the expert pushes one way); with a random action 30% of the time the expert still holds all 500 steps,
    # and the demonstrations show it recovering from tilts the clean ones never reach.
    "classic/cartpole-v1": 0.3,
    "mujoco/inverted-double-pendulum-v5": 0.1,  # at 0.3 the expert falls within ~33 steps; at 0.1 it holds all 1000
}

EPISODES_OVERRIDE: dict[str, int] = {
    "mujoco/reacher-v5": 200,  # 50-step episodes: more of them for the same number of tokens
    "classic/mountaincar-v0": 60,
    "classic/pendulum-v1": 100,
    "dmc/reacher-easy": 80,  # a new target each episode: 80 targets instead of 12
    "dmc/cartpole-swingup": 30,
}

MAX_STEPS_OVERRIDE: dict[str, int] = {
    "dmc/reacher-easy": 150,  # the expert reaches its target within ~30 steps and then holds it
    "dmc/cartpole-swingup": 400,  # the swing-up takes ~170 steps; the rest balances (as cartpole-balance does)
}


DAGGER_DOMAINS: tuple[str, ...] = ("atari", "classic", "dmc", "mujoco")
"""Domains whose tasks get DAgger rounds. Not Meta-World: in the first full run with rounds on every task, its
tasks fell from 44.7-48.8 to 37.8 (window-open 25-40 -> 5, drawer-close 97 -> 62), while the dynamic tasks gained
(cartpole-swingup 17-26 -> 41, Pong -2 -> 18); a third of each Meta-World task's windows then came from the
early policies' wandering, which the underfitting model learned at the demonstrations' expense."""

DAGGER_SKIP: frozenset[str] = frozenset({"classic/cartpole-v1", "classic/acrobot-v1", "classic/mountaincar-v0"})
"""Tasks of DAGGER_DOMAINS left out of the rounds: the discrete classic tasks, at expert level from their
demonstrations alone. With rounds, CartPole-v1 fell from 86-100 (four runs without) to 48 and 32 (two runs with);
later runs without rounds but with clean demonstrations fell to 51 and 41 too (see NOISE_OVERRIDE)."""

DAGGER_EPISODE_SCALE: dict[str, int] = {
    "classic/pendulum-v1": 3,  # 10 per round were lost among its 100 demonstrations; 20 gave +38 in an experiment
    "dmc/reacher-easy": 2,  # a new target each episode; 80 demonstrations of 150 steps
}
"""Per-task multiples of ``DemoConfig.dagger_episodes`` (short episodes, many demonstrations to be heard over)."""

DAGGER_STEP_SHARE = 0.2
"""A round also labels at least this share of each task's demonstration steps, running more episodes where the
policy's episodes are short. Counted in episodes alone, InvertedDoublePendulum's policy fell within ~43 steps, so
its 10 episodes per round labelled 434 steps against 30,000 demonstrated (1.4%; swing-up's: 4,000 against 12,000)."""

DAGGER_MAX_EPISODES = 200
"""Most episodes one pass of a round runs for one task."""

DAGGER_MAX_STEPS = 400
"""Episode cap of a DAgger round (besides the demonstrations' own caps): a policy that fails early in a long
episode (Breakout without serving, a fallen pole still balanced by dm_control's 1000 steps) adds little after it."""


@dataclass
class DemoConfig:
    """Collect -> train -> evaluate -> report, with one set of weights for every task."""

    out: Path = Path("runs/demo")
    """Run folder: data/, train/, videos/, report.md, report.json."""
    tasks: tuple[str, ...] = ()
    """Task ids (default: the default suite, `omnipolicy tasks` marks it with *)."""
    episodes: int = 0
    """Demonstration episodes per task (0: per-domain defaults sized for the 30-minute budget)."""
    workers: int = 2
    """Collection worker processes."""
    preset: str = "cpu-tiny"
    """Model preset (`omnipolicy train --list-presets`)."""
    train_steps: int = 8500
    """Optimizer steps (the default fits the 30-minute budget on a 2-core CPU with the DAgger rounds; fixed so runs
    are reproducible)."""
    batch_size: int = 16
    """Windows per optimizer step."""
    lr: float = 1e-3
    """Peak learning rate."""
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
    """DART action noise for every task (default: the per-domain table DEMO_NOISE)."""
    bin_sigma: float = 8.0
    """Gaussian width of continuous action targets in bins (TrainConfig.bin_sigma; 0 = Gato's one-hot)."""
    action_inputs: Literal["tokens", "hidden"] = "hidden"
    """What the model reads at action positions (ModelConfig.action_inputs; tokens = Gato)."""
    prompt_prob: float = 0.0
    """Share of training windows prefixed with a demonstration (TrainConfig.prompt_prob; Gato: 0.25). The demo's
    evaluation does not prompt, and a prompt is half a window without loss: at 0, the same steps train on 12% more
    action tokens (Meta-World action error against the expert 0.098 instead of 0.105, 10 tasks, 2000 steps)."""
    val_fraction: float = 0.05
    """Share of each task's demonstrations held out for the validation loss (TrainConfig.val_fraction; tasks with
    fewer than 20 keep all of theirs)."""
    dagger_rounds: int = 2
    """DAgger rounds during training (0: behaviour cloning only). Training stops after each of
    ``train_steps * k / (rounds + 1)`` steps, the policy of that checkpoint runs ``dagger_episodes`` episodes of
    every task of ``dagger_tasks`` with the expert labelling each state it reaches (``omnipolicy dagger``), and
    training resumes on the demonstrations plus every round so far. The learning-rate schedule is the one of an
    uninterrupted run."""
    dagger_episodes: int = 10
    """Episodes per task per DAgger round (capped like the demonstrations, and at DAGGER_MAX_STEPS; times
    DAGGER_EPISODE_SCALE for the tasks it names, more where they label under DAGGER_STEP_SHARE of the task's
    demonstration steps; DAGGER_SKIP's tasks get none)."""


def demo_command(argv: list[str], prog: str) -> None:
    import tyro

    cfg = tyro.cli(DemoConfig, args=argv, prog=prog)
    summary = run_demo(cfg)
    o = summary["overall"]
    print(
        f"\n{o['tasks_at_least_50']} of {o['tasks']} tasks at or above 50% of expert; "
        f"mean expert-normalised score {o['normalized_mean']:.1f}\nreport: {cfg.out / 'report.md'}"
    )


def noise_for(task_id: str, cfg: DemoConfig) -> float:
    if cfg.action_noise is not None:
        return cfg.action_noise
    return NOISE_OVERRIDE.get(task_id, DEMO_NOISE[task_id.split("/")[0]])


def check_collection_settings(data: Path, noise: dict[str, float], max_steps: dict[str, int | None] | None = None) -> None:
    """Refuse to extend datasets collected with other noise levels or episode caps (a rerun would silently mix them).

    Args:
        data: the demo's data folder; the settings are recorded in ``demo_collection.json`` there.
        noise: DART action noise per task id.
        max_steps: episode cap per task id at collection (None or missing: the task's own limit).
    """
    from omnipolicy.datasets.collect import task_path

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


def max_steps_for(task_id: str) -> int | None:
    return MAX_STEPS_OVERRIDE.get(task_id, DEMO_MAX_STEPS.get(task_id.split("/")[0]))


def episodes_for(task_id: str, cfg: DemoConfig) -> int:
    if cfg.episodes:
        return cfg.episodes
    return EPISODES_OVERRIDE.get(task_id, DEMO_EPISODES[task_id.split("/")[0]])


def dagger_stops(train_steps: int, rounds: int) -> list[int]:
    """The steps after which training pauses for a DAgger round, then the last step: rounds + 1 even phases."""
    return sorted({max(1, train_steps * k // (rounds + 1)) for k in range(1, rounds + 1)} | {train_steps})


def dagger_tasks(tasks: Sequence[str]) -> list[str]:
    """The tasks that get DAgger rounds: those of DAGGER_DOMAINS, less DAGGER_SKIP."""
    return [t for t in tasks if t.split("/")[0] in DAGGER_DOMAINS and t not in DAGGER_SKIP]


def dagger_episodes_for(task_id: str, cfg: DemoConfig) -> int:
    """Policy episodes a DAgger round adds for ``task_id``: ``cfg.dagger_episodes`` times its DAGGER_EPISODE_SCALE."""
    return cfg.dagger_episodes * DAGGER_EPISODE_SCALE.get(task_id, 1)


def dagger_rounds(cfg: DemoConfig, tasks: Sequence[str]) -> int:
    """The DAgger rounds the run makes: ``cfg.dagger_rounds``, or 0 when no task gets rounds (``dagger_tasks``)."""
    return max(0, cfg.dagger_rounds) if dagger_tasks(tasks) else 0


def dagger_shortfall(want_episodes: int, want_steps: int, held_episodes: int, held_steps: int,
                     per_episode: float) -> int:
    """Episodes a DAgger round still has to run for one task to hold ``want_episodes`` and ``want_steps``.

    The steps still missing are divided by ``per_episode``, the expected length of one more episode (the mean
    of this round's last pass; before any, a demonstration's mean length, at most the round's cap); the answer
    is at most DAGGER_MAX_EPISODES.
    """
    need = max(0, want_episodes - held_episodes)
    if held_steps < want_steps:
        need = max(need, math.ceil((want_steps - held_steps) / max(per_episode, 1.0)))
    return min(need, DAGGER_MAX_EPISODES)


def train_with_dagger(cfg: DemoConfig, out: Path, tasks: Sequence[str], caps: dict[str, int | None],
                      timings: dict[str, float]) -> TrainResult:
    """Train in phases with DAgger rounds between them (see ``DemoConfig.dagger_rounds``).

    Round ``k`` tops each task's DAgger dataset up to ``k`` times its episodes per round
    (``dagger_episodes_for``) and ``k`` times DAGGER_STEP_SHARE of its demonstration steps, in up to three
    passes (the later ones sized by the mean length of the last pass's episodes). A rerun continues where
    an interrupted one stopped: each phase resumes from the newest checkpoint, and a round only tops up, with
    the checkpoint of the step it belongs to (a rerun past that step finds the round complete).

    Returns:
        The last phase's TrainResult.
    """
    from omnipolicy.agent import TrainConfig, train
    from omnipolicy.datasets.collect import task_path
    from omnipolicy.datasets.dagger import dagger_round
    from omnipolicy.datasets.store import EpisodeStore

    demos, dagger_dir = out / "data", out / "dagger"
    rounds = dagger_rounds(cfg, tasks)
    labelled = dagger_tasks(tasks) if rounds else []
    stops = dagger_stops(cfg.train_steps, rounds) if rounds else [cfg.train_steps]
    round_caps = {t: min(caps.get(t) or DAGGER_MAX_STEPS, DAGGER_MAX_STEPS) for t in labelled}
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
                data=(demos, dagger_dir) if dagger_dir.is_dir() else (demos,),
                holdout_from=(demos,),
                out=out / "train",
                preset=cfg.preset,
                steps=cfg.train_steps,
                stop_at=stop,
                batch_size=cfg.batch_size,
                lr=cfg.lr,
                warmup_steps=100,
                seed=cfg.seed,
                bin_sigma=cfg.bin_sigma,
                action_inputs=cfg.action_inputs,
                prompt_prob=cfg.prompt_prob,
                val_fraction=cfg.val_fraction,
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
        want = {t: ((k + 1) * dagger_episodes_for(t, cfg), (k + 1) * math.ceil(DAGGER_STEP_SHARE * demo_steps[t]))
                for t in labelled}
        print(f"DAgger round {k + 1}/{len(stops) - 1}: the step-{stop} policy runs {cfg.dagger_episodes} episodes "
              f"of each of {len(labelled)} tasks (more of {sorted(set(DAGGER_EPISODE_SCALE) & set(labelled))}, and "
              f"of those whose episodes label under {DAGGER_STEP_SHARE:.0%} of their demonstrations' steps), "
              f"the experts label every state it reaches")
        per_episode = dict(first_length)
        for _ in range(3):
            missing = {t: dagger_shortfall(*want[t], *held(t), per_episode[t]) for t in labelled}
            if not any(missing.values()):
                break
            summary = dagger_round(result.checkpoint, [t for t in labelled if missing[t]], missing, dagger_dir,
                                   max_steps=round_caps, workers=cfg.eval_workers)
            per_episode.update({t: s["steps"] / s["new"] for t, s in summary.items() if s["new"]})
            print("  policy return in the round's episodes: " + ", ".join(
                f"{t} {s['policy_return']:.1f} (+{s['new']} ep, {s['steps']} steps)" for t, s in summary.items()))
        timings["dagger_s"] = timings.get("dagger_s", 0.0) + time.perf_counter() - t0
    return result


def run_demo(cfg: DemoConfig) -> dict:
    """Run every stage; return the evaluation summary (also written to ``out/report.json``)."""
    from omnipolicy.datasets.collect import collect
    from omnipolicy.envs import DEFAULT_SUITE, get_task
    from omnipolicy.envs.evaluate import PolicyActor, evaluate

    tasks = tuple(cfg.tasks) or tuple(DEFAULT_SUITE)
    for t in tasks:
        get_task(t)  # unknown ids fail now, with close matches
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    # 1. Demonstrations: one dataset per task, by group so the per-domain counts apply.
    t0 = time.perf_counter()
    print(f"[1/3] collecting expert demonstrations for {len(tasks)} tasks into {out / 'data'}")
    noise = {t: noise_for(t, cfg) for t in tasks}
    caps = {t: max_steps_for(t) for t in tasks}
    check_collection_settings(out / "data", noise, caps)
    by_count: dict[int, list[str]] = {}
    for t in tasks:
        by_count.setdefault(episodes_for(t, cfg), []).append(t)
    collected = {}
    for n, group in sorted(by_count.items()):
        collected.update(collect(group, n, out / "data", workers=cfg.workers, seed=cfg.seed, action_noise=noise,
                                 max_steps=caps))
    timings["collect_s"] = time.perf_counter() - t0

    # 2. One generalist on all of it, with DAgger rounds between phases of one learning-rate schedule.
    t0 = time.perf_counter()
    rounds = dagger_rounds(cfg, tasks)
    print(f"[2/3] training {cfg.preset} on {len(tasks)} tasks for {cfg.train_steps} steps"
          + (f" with {rounds} DAgger round(s)" if rounds else ""))
    result = train_with_dagger(cfg, out, tasks, caps, timings)
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
                        f"{cfg.val_fraction:.0%} of each task's demonstrations held out for validation",
            "dagger": (f"{rounds} round(s) after steps {dagger_stops(cfg.train_steps, rounds)[:-1]}, "
                       f"{cfg.dagger_episodes} policy episodes per task each (capped at {DAGGER_MAX_STEPS} steps; "
                       f"more until they label {DAGGER_STEP_SHARE:.0%} of the task's demonstration steps), "
                       f"labelled by the experts, for the {', '.join(DAGGER_DOMAINS)} tasks; per task: "
                       f"{ {t: dagger_episodes_for(t, cfg) for t in dagger_tasks(tasks)} }" if rounds else "none"),
            "continuous_decoding": actor.policy.continuous_decoding,
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
