"""The task registry: every task, its observation/action layout, and its scores.

A task is registered by one :func:`register_task` decorator on the env factory
in the file that defines its family (``envs/classic.py``, ``envs/dmc.py``...),
with a versioned id. Registering stores lazy ``"module:attr"`` paths only, so
importing this module (and listing tasks) never imports a simulator; the
simulator is imported when :func:`make_env` builds an environment.

Random and expert scores are *measured* (``scripts/measure_experts.py``) and
read from ``envs/expert_scores.json``; a task not measured yet has NaN scores.

>>> spec = get_task("classic/cartpole-v1")
>>> spec.domain, spec.max_steps, spec.timestep.action.n
('classic', 500, 2)
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeVar

from omnipolicy.tokenizers.spec import FieldSpec, TimestepSpec

DOMAINS: tuple[str, ...] = ("classic", "atari", "mujoco", "dmc", "metaworld", "so101", "vqa")
FAMILY_MODULES: tuple[str, ...] = tuple(f"omnipolicy.envs.{d}" for d in DOMAINS)
"""Modules whose import registers the tasks of one family (one per domain)."""

SCORES_PATH = Path(__file__).with_name("expert_scores.json")


@dataclass(frozen=True)
class TaskSpec:
    """Everything known about a task without building its simulator.

    Attributes:
        id: versioned task id, ``"<domain>/<name>"``, e.g. ``"metaworld/reach-v3"``.
        domain: one of :data:`DOMAINS`.
        timestep: observation fields and action field (what the tokenizer sees).
        max_steps: episode limit; episodes are truncated at this many steps.
        instruction: one-sentence natural-language description of the goal.
        random_score: measured mean return of the uniform random policy (NaN if not measured).
        expert_score: measured mean return of the scripted expert (NaN if not measured).
        has_success: the env reports ``info["success"]`` (True once the task has been solved
            in the current episode).
        entry_point: ``"module:attr"`` of the env factory ``f(spec, render_mode=None, **kwargs)``.
        expert_entry_point: ``"module:attr"`` of the expert class ``cls(spec, seed=0)``: the normalisation's 100.
        teacher_entry_point: ``"module:attr"`` of the class that demonstrates the task and labels DAgger rounds,
            where it is not the expert (an imitable teacher: its action a function of what the learner sees);
            None: the expert teaches.
        kwargs: extra keyword arguments of the env factory, as sorted ``(key, value)`` pairs.
        default: whether the task belongs to :data:`DEFAULT_SUITE`.
        scores_from: id whose measured scores this task shares (e.g. a pixel variant of a
            state task with identical dynamics); defaults to ``id``.
        expert_success: measured success rate of the expert (None if the task has none).
        random_success: measured success rate of the random policy (None if the task has none).
        fps: control steps per second where the task models a real rate (a robot's), recorded by its datasets
            (LeRobot's ``fps`` and timestamps); None for the datasets' default.
    """

    id: str
    domain: str
    timestep: TimestepSpec
    max_steps: int
    instruction: str
    entry_point: str
    expert_entry_point: str
    kwargs: tuple[tuple[str, Any], ...] = ()
    has_success: bool = False
    default: bool = False
    scores_from: str | None = None
    random_score: float = math.nan
    expert_score: float = math.nan
    expert_success: float | None = None
    random_success: float | None = None
    fps: int | None = None
    teacher_entry_point: str | None = None

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"Task {self.id!r}: unknown domain {self.domain!r}; expected one of {list(DOMAINS)}")
        if not self.id.startswith(self.domain + "/"):
            raise ValueError(f"Task id {self.id!r} must start with its domain, '{self.domain}/'")
        if self.max_steps < 1:
            raise ValueError(f"Task {self.id!r}: max_steps must be >= 1, got {self.max_steps}")
        for path in filter(None, (self.entry_point, self.expert_entry_point, self.teacher_entry_point)):
            if path.count(":") != 1:
                raise ValueError(f"Task {self.id!r}: expected a 'module:attr' path, got {path!r}")

    @property
    def demonstrator_entry_point(self) -> str:
        """``module:attr`` of the class that demonstrates the task and labels its DAgger rounds: its teacher, else
        its expert."""
        return self.teacher_entry_point or self.expert_entry_point

    @property
    def factory_kwargs(self) -> dict[str, Any]:
        """The env factory's extra keyword arguments as a dict."""
        return dict(self.kwargs)

    @property
    def measured(self) -> bool:
        """Whether random and expert scores have been measured."""
        return math.isfinite(self.random_score) and math.isfinite(self.expert_score)

    def normalize(self, ret: float) -> float:
        """Expert-normalised score: 0 = random policy, 100 = scripted expert (Gato's definition).

        Raises:
            ValueError: if the task's scores have not been measured.
        """
        if not self.measured:
            raise ValueError(f"Task {self.id!r} has no measured scores; run scripts/measure_experts.py --tasks {self.id}")
        return 100.0 * (float(ret) - self.random_score) / (self.expert_score - self.random_score)

    def obs_summary(self) -> str:
        """Short text like ``image 84x84x3 + state (39,)``."""
        parts = []
        for f in self.timestep.observation:
            if f.kind == "image":
                parts.append(f"{f.name} {'x'.join(map(str, f.shape))}")
            elif f.kind == "text":
                parts.append(f"{f.name} text")
            else:
                parts.append(f"{f.name} {f.shape}")
        return " + ".join(parts)

    def action_summary(self) -> str:
        """Short text like ``discrete(6)``, ``continuous(4) [-1, 1]`` or ``text(8 tokens)``."""
        a = self.timestep.action
        if a.kind == "text":
            return f"text({a.n} tokens)"
        if a.kind == "discrete":
            return f"discrete({a.n})"
        text = f"continuous{a.shape}"
        if a.bounded:
            lo, hi = min(a.low), max(a.high)
            text += f" [{lo:g}, {hi:g}]"
        return text


def vector(name: str, size: int, dtype: str = "float32") -> FieldSpec:
    """A continuous (mu-law) observation vector of ``size`` values."""
    return FieldSpec(name, "continuous", (size,), dtype)


def image(name: str = "image", height: int = 84, width: int = 84) -> FieldSpec:
    """An RGB uint8 image observation."""
    return FieldSpec(name, "image", (height, width, 3), "uint8")


def text(name: str = "instruction", n: int | None = None) -> FieldSpec:
    """A text observation (a str per step); ``n`` fixes its width in tokens (see :class:`FieldSpec`)."""
    return FieldSpec(name, "text", (), "str", n=n)


def discrete_action(n: int) -> FieldSpec:
    """A discrete action: one int64 in ``[0, n)``, shape ``(1,)``."""
    return FieldSpec("action", "discrete", (1,), "int64", n=n)


def bounded_action(low: float | tuple[float, ...], high: float | tuple[float, ...], size: int) -> FieldSpec:
    """A continuous float32 action of ``size`` values in ``[low, high]`` (bounded tokenization)."""
    return FieldSpec("action", "continuous", (size,), "float32", low=low, high=high)


_REGISTRY: dict[str, TaskSpec] = {}
_LOADED = False
F = TypeVar("F", bound=Callable[..., Any])


def register_task(
    id: str,
    *,
    domain: str,
    observation: tuple[FieldSpec, ...],
    action: FieldSpec,
    max_steps: int,
    instruction: str,
    expert: str,
    teacher: str | None = None,
    has_success: bool = False,
    default: bool = False,
    scores_from: str | None = None,
    fps: int | None = None,
    **kwargs: Any,
) -> Callable[[F], F]:
    """Register a task whose env the decorated factory builds; stack one per task.

    Args:
        id: versioned task id, ``"<domain>/<name>"``.
        domain: simulator family, one of :data:`DOMAINS`.
        observation: observation fields, as the env returns them.
        action: the action field (continuous fields with ``low``/``high`` are bounded).
        max_steps: episode limit.
        instruction: one-sentence goal.
        expert: ``"module:attr"`` of the expert class.
        teacher: ``"module:attr"`` of the class that demonstrates and labels, where it is not the expert.
        has_success: the env reports ``info["success"]``.
        default: part of the default suite.
        scores_from: task id whose measured scores this task shares.
        fps: control steps per second, where the task models a real rate.
        **kwargs: passed to the factory when this task's env is built.

    Returns:
        A decorator that records the task and returns the factory unchanged.

    Raises:
        ValueError: if the id is already registered.
    """

    def decorator(factory: F) -> F:
        if id in _REGISTRY:
            raise ValueError(f"Task {id!r} is already registered (by {_REGISTRY[id].entry_point})")
        _REGISTRY[id] = TaskSpec(
            id=id,
            domain=domain,
            timestep=TimestepSpec(tuple(observation), action),
            max_steps=int(max_steps),
            instruction=instruction,
            entry_point=f"{factory.__module__}:{factory.__qualname__}",
            expert_entry_point=expert,
            teacher_entry_point=teacher,
            kwargs=tuple(sorted(kwargs.items())),
            has_success=has_success,
            default=default,
            scores_from=scores_from,
            fps=fps,
        )
        return factory

    return decorator


def _with_scores(spec: TaskSpec, scores: Mapping[str, Any]) -> TaskSpec:
    entry = scores.get(spec.scores_from or spec.id)
    if not entry:
        return spec
    rand, exp = entry.get("random", {}), entry.get("expert", {})
    return replace(
        spec,
        random_score=float(rand.get("return_mean", math.nan)),
        expert_score=float(exp.get("return_mean", math.nan)),
        random_success=rand.get("success_rate") if spec.has_success else None,
        expert_success=exp.get("success_rate") if spec.has_success else None,
    )


def load_scores(path: Path = SCORES_PATH) -> dict[str, Any]:
    """The measured scores file's ``tasks`` mapping (empty if the file is missing)."""
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("tasks", {})


def _ensure_loaded() -> None:
    global _LOADED
    if _LOADED:
        return
    for module in FAMILY_MODULES:
        importlib.import_module(module)
    scores = load_scores()
    for task_id, spec in list(_REGISTRY.items()):
        _REGISTRY[task_id] = _with_scores(spec, scores)
    _LOADED = True


def get_task(task_id: str | TaskSpec) -> TaskSpec:
    """The registered :class:`TaskSpec` of ``task_id`` (a spec is returned as is).

    Raises:
        KeyError: for an unknown id; the message lists close matches and the domains.
    """
    _ensure_loaded()
    if isinstance(task_id, TaskSpec):
        return task_id
    try:
        return _REGISTRY[task_id]
    except KeyError:
        close = difflib.get_close_matches(str(task_id), _REGISTRY, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(
            f"Unknown task id {task_id!r}.{hint} {len(_REGISTRY)} tasks are registered in domains "
            f"{list(DOMAINS)}; `omnipolicy tasks` lists them."
        ) from None


def list_tasks(domain: str | None = None) -> list[TaskSpec]:
    """Registered tasks (of one domain if given), sorted by id.

    Raises:
        ValueError: for an unknown domain.
    """
    _ensure_loaded()
    if domain is not None and domain not in DOMAINS:
        raise ValueError(f"Unknown domain {domain!r}; expected one of {list(DOMAINS)}")
    return [s for _, s in sorted(_REGISTRY.items()) if domain is None or s.domain == domain]


V = TypeVar("V")


def task_entry(table: Mapping[str, V], task_id: str) -> V | None:
    """``table``'s value for ``task_id``, a table keyed by domain (``"dmc"``) or task id (``"dmc/reacher-easy"``):
    the task's own entry, else its domain's (None: neither has one).

    >>> task_entry({"dmc": 1, "dmc/reacher-easy": 2}, "dmc/reacher-easy"), task_entry({"dmc": 1}, "atari/pong")
    (2, None)
    """
    return table.get(task_id, table.get(task_id.split("/")[0]))


def load_attr(path: str) -> Any:
    """Import ``"module:attr"`` and return the attribute."""
    module, _, attr = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def make_env(task_id: str, seed: int | None = None, render_mode: str | None = None):
    """Build the environment of a task (gymnasium's reset/step interface, dict observations).

    Args:
        task_id: a registered id.
        seed: seed of the first ``reset()`` called without a seed (later resets continue its RNG).
        render_mode: None, or ``"rgb_array"`` for ``env.render()`` frames.

    Returns:
        A :class:`omnipolicy.envs.base.TaskEnv`; observations are dicts keyed by the
        spec's field names, episodes truncate at ``spec.max_steps``.
    """
    spec = get_task(task_id)
    if render_mode not in (None, "rgb_array"):
        raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
    env = load_attr(spec.entry_point)(spec, render_mode=render_mode, **spec.factory_kwargs)
    env.seed_next_reset(seed)
    return env


def make_expert(task_id: str, seed: int = 0):
    """Build the scripted expert of a task: ``reset(env, obs)``, ``act(env, obs) -> action``."""
    spec = get_task(task_id)
    return load_attr(spec.expert_entry_point)(spec, seed=seed)


def make_teacher(task_id: str, seed: int = 0):
    """Build the policy that demonstrates a task and labels its DAgger rounds: its teacher, else its expert."""
    spec = get_task(task_id)
    return load_attr(spec.demonstrator_entry_point)(spec, seed=seed)


def __getattr__(name: str) -> Any:
    if name == "DEFAULT_SUITE":
        _ensure_loaded()
        return tuple(s.id for s in list_tasks() if s.default)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# Scoring protocol and `omnipolicy tasks`

PROTOCOL_SETTINGS: tuple[str, ...] = ("frameskip", "repeat_action_probability", "noop_max")
"""Env factory arguments that change the returns a policy gets (Atari's): part of a task's scoring protocol."""


def score_protocol(spec: TaskSpec) -> dict[str, Any]:
    """The conditions a task's returns are measured under: its episode limit and its PROTOCOL_SETTINGS.

    ``scripts/measure_experts.py`` records it with each measured score and evaluation runs every task under it:
    a return is comparable with the random and expert scores only under the protocol they were measured with.

    >>> score_protocol(get_task("atari/pong"))
    {'max_steps': 2000, 'frameskip': 4, 'noop_max': 30, 'repeat_action_probability': 0.25}
    """
    return {"max_steps": spec.max_steps, **{k: v for k, v in spec.kwargs if k in PROTOCOL_SETTINGS}}


def protocol_mismatch(spec: TaskSpec, scores: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The protocols recorded with a task's measured scores that differ from :func:`score_protocol`, by policy.

    Args:
        spec: the task.
        scores: the measured scores (default: :func:`load_scores`). An entry without a recorded protocol
            (measured before protocols were recorded) counts as matching.

    Returns:
        ``{"expert" | "random": recorded protocol}`` for each score measured under another protocol; empty if none.
    """
    entry = (load_scores() if scores is None else scores).get(spec.scores_from or spec.id, {})
    now = score_protocol(spec)
    return {p: e["protocol"] for p, e in sorted(entry.items()) if "protocol" in e and e["protocol"] != now}


@dataclass(frozen=True)
class TasksConfig:
    """List the registered tasks with their measured random and expert scores."""

    domain: Literal["classic", "atari", "mujoco", "dmc", "metaworld", "so101", "vqa"] | None = None
    """Only tasks of this domain."""
    default_only: bool = False
    """Only the tasks of the default suite."""
    json: bool = False
    """Print the specs as JSON instead of a table."""


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.0f}%" if pct else f"{x:.1f}"


def format_table(specs: list[TaskSpec], scores: Mapping[str, Any] | None = None) -> str:
    """A plain-text table of tasks: id, domain, observations, action, limit, scores, success.

    The footnote states the scoring protocol (the episode limit, each domain's simulator settings); scores measured
    under another protocol than the task's (``scores``, default :func:`load_scores`) are marked ``!``.
    """
    scores = load_scores() if scores is None else scores
    stale = {s.id: protocol_mismatch(s, scores) for s in specs}
    header = ("id", "domain", "observation", "action", "max_steps", "random", "expert", "success")
    rows = [header] + [
        (
            s.id + (" *" if s.default else ""),
            s.domain,
            s.obs_summary(),
            s.action_summary(),
            str(s.max_steps),
            _fmt(s.random_score) + (" !" if "random" in stale[s.id] else ""),
            _fmt(s.expert_score) + (" !" if "expert" in stale[s.id] else ""),
            _fmt(s.expert_success, pct=True) if s.has_success else "-",
        )
        for s in specs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{len(specs)} tasks; * = default suite; scores: mean episode return measured by "
                 "scripts/measure_experts.py over episodes of at most max_steps steps, the limit evaluation runs")
    settings = {s.domain: {k: v for k, v in score_protocol(s).items() if k != "max_steps"} for s in specs}
    for domain, kw in sorted(settings.items()):
        if kw:
            lines.append(f"{domain}: " + ", ".join(f"{k} {v}" for k, v in kw.items()) + " (scores and evaluation alike)")
    if any(stale.values()):
        lines.append("! measured under another protocol than the task's: re-measure with scripts/measure_experts.py "
                     "--tasks " + " ".join(t for t, m in stale.items() if m))
    return "\n".join(lines)


def tasks_command(argv: list[str], prog: str) -> None:
    """Entry point of ``omnipolicy tasks``."""
    import tyro  # only the command parses arguments: importing the registry stays light

    cfg = tyro.cli(TasksConfig, args=argv, prog=prog)
    specs = [s for s in list_tasks(cfg.domain) if s.default or not cfg.default_only]
    if cfg.json:
        out = [
            {
                "id": s.id,
                "domain": s.domain,
                "timestep": s.timestep.to_dict(),
                "max_steps": s.max_steps,
                "fps": s.fps,
                "score_protocol": score_protocol(s),
                "instruction": s.instruction,
                "random_score": s.random_score,
                "expert_score": s.expert_score,
                "expert": s.expert_entry_point,
                "teacher": s.demonstrator_entry_point,
                "has_success": s.has_success,
                "expert_success": s.expert_success,
                "default": s.default,
            }
            for s in specs
        ]
        print(json.dumps(out, indent=1))
    else:
        print(format_table(specs))
