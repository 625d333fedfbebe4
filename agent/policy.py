"""Acting with a trained model: observations of parallel environments in, actions out.

:class:`Policy` keeps, per environment, a rolling context of its past
timesteps (observation and action tokens); each call to :meth:`Policy.act`
tokenizes the new observations, drops whole oldest timesteps until the window
fits the model's context, then decodes the ``A`` action tokens one by one with
the logits restricted to each element's valid id range (so an invalid action
cannot come out), greedily or by temperature sampling, and turns them into
actions with the tokenizer.

A checkpoint trained with action chunking (``ModelConfig.action_chunk = k > 1``) predicts, per timestep of a
continuous-action task, the next ``k`` actions: :meth:`Policy.act_chunks` returns them; executing them, one
action per control tick, is :class:`~omnipolicy.agent.actor.PolicyActor`'s job. With ``action_inputs="hidden"``
the ``k * A`` action tokens come from one forward pass (their inputs are the padding id whatever was chosen), on
both paths; with ``"tokens"`` they are decoded one by one.

Two paths act, and :meth:`Policy.act` picks one per call
(:meth:`Policy.acts_through_session`): the KV-cached
:class:`~omnipolicy.agent.inference.InferenceSession` (``use_session=True``,
where latency matters: evaluation, deployment), and a recomputation of the
whole window for each action token, batched across environments: the
reference semantics the session is tested against, and the only path that
keeps a task's prompt in the window.

>>> policy = Policy.from_checkpoint("runs/demo")                          # doctest: +SKIP
>>> policy.reset(num_envs=4)                                              # doctest: +SKIP
>>> actions = policy.act("classic/cartpole-v1", [obs0, obs1, obs2, obs3])  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from omnipolicy.envs.registry import task_entry
from omnipolicy.tokenizers import TimestepSpec, Tokenizer, check_observation
from omnipolicy.tokenizers.image import patch_slots

from .checkpoint import CheckpointMeta, load_image_tokenizer, load_meta, load_model_weights, resolve_checkpoint
from .cross_attention import ImageContext
from .inference import InferenceSession, SessionConfig
from .model import GatoModel, expected_ids

CONTINUOUS_DECODINGS = ("auto", "mean", "mode")
"""How a continuous action dimension picks its bin under greedy decoding (see :class:`Policy`)."""


def preferred_decoding(meta: CheckpointMeta) -> str:
    """The decoding ``"auto"`` stands for with this checkpoint: its run's ``TrainConfig.decoding``, or when that is
    auto (or the checkpoint predates it) mean for Gaussian bin targets (``bin_sigma > 0``), mode for one-hot ones."""
    config = meta.train_state.get("config") or {}
    chosen = config.get("decoding") or "auto"
    if chosen not in CONTINUOUS_DECODINGS:
        raise ValueError(f"the checkpoint's training config has decoding {chosen!r}; expected one of "
                         f"{CONTINUOUS_DECODINGS}")
    if chosen != "auto":
        return chosen
    return "mean" if (config.get("bin_sigma") or 0) > 0 else "mode"


def check_task_decoding(table: Mapping[str, str], name: str) -> dict[str, str]:
    """``table`` (domain or task id -> ``"mean"`` or ``"mode"``) as a dict.

    Raises:
        ValueError: a value is neither; the message names ``name`` and the bad entries.
    """
    bad = {k: v for k, v in table.items() if v not in ("mean", "mode")}
    if bad:
        raise ValueError(f"{name} values must be 'mean' or 'mode', got {bad}")
    return dict(table)


def preferred_task_decoding(meta: CheckpointMeta) -> dict[str, str]:
    """The per-domain and per-task decodings ``"auto"`` also stands for with this checkpoint: its run's
    ``TrainConfig.task_decoding`` (empty for checkpoints that predate it)."""
    table = (meta.train_state.get("config") or {}).get("task_decoding") or {}
    return check_task_decoding(table, "the checkpoint's TrainConfig.task_decoding")


@dataclass
class _Timestep:
    """One timestep of an environment's context (numpy, ready to batch)."""

    tokens: np.ndarray  # int64 (L,)
    local_pos: np.ndarray  # int64 (L,)
    patches: np.ndarray  # float32 (p, 3, 16, 16)
    patch_pos: np.ndarray  # int64 (p, 2)
    patch_emb: torch.Tensor | None = None  # (r, D) on the model's device, computed once: GatoModel.embed_images


@dataclass
class _EnvContext:
    task_id: str | None
    steps: deque  # of _Timestep, oldest first

    @property
    def num_tokens(self) -> int:
        return sum(len(t.tokens) for t in self.steps)


class _WindowBatch(NamedTuple):
    """Every environment's window as one right-padded batch on the model's device (the recomputing path)."""

    tokens: torch.Tensor  # int64 (B, width), the padding id past each window
    local_pos: torch.Tensor  # int64 (B, width)
    patch_index: torch.Tensor  # int64 (B, width): row of patch_emb, -1 elsewhere
    patch_emb: torch.Tensor | None  # (P, D) in patch_index order
    lengths: np.ndarray  # int64 (B,) tokens of each window
    context: ImageContext | None = None  # cross-attention fusion: each timestep's latents, each token's timestep


class Policy:
    """A trained model acting in one or more environments at once.

    Args:
        model: the model (put in eval mode).
        meta: the checkpoint's configs, layout and task specs.
        tokenizer: the installed tokenizer (its layout must equal ``meta.layout``).
        temperature: 0 for greedy decoding, > 0 to sample with this temperature.
        continuous_decoding: with greedy decoding, how a continuous action dimension picks its bin:
            ``"mean"`` the expected bin under the masked softmax, rounded; ``"mode"`` the most likely bin
            (Gato's argmax); ``"auto"`` (default) the one the checkpoint was trained to prefer
            (``TrainConfig.decoding``), or when that is auto the one that matches the training loss: mean for a
            checkpoint trained with Gaussian bin targets (``TrainConfig.bin_sigma > 0``, whose predictions are
            unimodal bumps), mode for one-hot targets (whose diffuse tails would pull a mean to the middle); under
            auto, a domain or task named in the checkpoint's ``TrainConfig.task_decoding`` takes the decoding
            named there (a task's own entry wins over its domain's). Discrete dimensions always take the mode.
        seed: seed of the sampling generator.
        use_session: act through a KV-cached :class:`~omnipolicy.agent.inference.InferenceSession`
            (tens of times faster than recomputing the window; when the window is full the oldest
            timesteps leave down to half the context). Evaluation and deployment use it; the default
            recomputes the whole window every step (the reference semantics). Tasks with a prompt (:meth:`set_prompt`)
            always recompute, so the prompt never leaves the window.

    Raises:
        ValueError: the tokenizer's layout differs from the checkpoint's (the message lists what differs).
    """

    def __init__(
        self,
        model: GatoModel,
        meta: CheckpointMeta,
        tokenizer: Tokenizer,
        temperature: float = 0.0,
        seed: int = 0,
        use_session: bool = False,
        continuous_decoding: str = "auto",
    ) -> None:
        diff = meta.layout.diff(tokenizer.layout)
        if diff:
            raise ValueError(
                "The checkpoint's vocabulary layout does not match the installed tokenizer's "
                f"(checkpoint != installed): {'; '.join(diff)}"
            )
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
        if continuous_decoding not in CONTINUOUS_DECODINGS:
            raise ValueError(f"continuous_decoding must be one of {CONTINUOUS_DECODINGS}, got {continuous_decoding!r}")
        self.task_decoding = preferred_task_decoding(meta) if continuous_decoding == "auto" else {}
        """Decodings of the domains and tasks that differ from ``continuous_decoding`` (see :meth:`decoding_for`)."""
        if continuous_decoding == "auto":
            continuous_decoding = preferred_decoding(meta)
        self.continuous_decoding = continuous_decoding
        self.model = model.eval()
        self.meta = meta
        self.tok = tokenizer
        self.temperature = float(temperature)
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._ranges: dict[str, np.ndarray] = {}
        self._prompts: dict[str, list[_Timestep]] = {}
        self._envs: list[_EnvContext] = []
        self.seed = seed
        self.use_session = use_session
        self._session = None  # InferenceSession, made on the first session step after reset()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        tokenizer: Tokenizer | None = None,
        device: str | torch.device = "cpu",
        temperature: float = 0.0,
        seed: int = 0,
        use_session: bool = False,
        continuous_decoding: str = "auto",
    ) -> "Policy":
        """Load a policy from a checkpoint (a step directory or a run directory).

        Args:
            path: see :func:`~omnipolicy.agent.checkpoint.resolve_checkpoint`.
            tokenizer: default ``Tokenizer.default()`` (the installed one); a checkpoint whose images are vq codes
                gives it its own image tokenizer (a copy saved with it) unless it has one.
            device: where the model runs.
            temperature, seed, use_session, continuous_decoding: see :class:`Policy`.

        Raises:
            FileNotFoundError: no checkpoint at ``path``.
            ValueError: the checkpoint's layout differs from the tokenizer's.
        """
        tokenizer = Tokenizer.default() if tokenizer is None else tokenizer
        ckpt = resolve_checkpoint(path)
        if tokenizer.image is None and load_meta(ckpt).layout.image_codes:
            tokenizer = tokenizer.with_image_tokenizer(load_image_tokenizer(ckpt))
        diff = load_meta(ckpt).layout.diff(tokenizer.layout)
        if diff:  # refuse before loading any weights
            raise ValueError(
                f"Checkpoint {ckpt} was trained with another vocabulary layout than the installed tokenizer's "
                f"(checkpoint != installed): {'; '.join(diff)}"
            )
        model, meta = load_model_weights(ckpt, device=device)
        return cls(model, meta, tokenizer, temperature=temperature, seed=seed, use_session=use_session,
                   continuous_decoding=continuous_decoding)

    # ------------------------------------------------------------------ state
    @property
    def tasks(self) -> dict[str, TimestepSpec]:
        """The spec of every task the checkpoint was trained on."""
        return self.meta.tasks

    @property
    def num_envs(self) -> int:
        return len(self._envs)

    def reset(self, num_envs: int) -> None:
        """Forget every context and prepare for ``num_envs`` parallel environments."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs!r}")
        self._envs = [_EnvContext(None, deque()) for _ in range(num_envs)]
        self._session = None

    def reset_env(self, index: int) -> None:
        """Forget the context of one environment (its episode ended)."""
        if not 0 <= index < self.num_envs:
            raise IndexError(f"env index {index} out of range for {self.num_envs} environments")
        self._envs[index] = _EnvContext(None, deque())
        if self._session is not None:
            self._session.reset([index])

    def spec(self, task_id: str) -> TimestepSpec:
        """The spec of ``task_id``.

        Raises:
            KeyError: the checkpoint was not trained on this task (the message lists its tasks).
        """
        try:
            return self.meta.tasks[task_id]
        except KeyError:
            raise KeyError(f"Unknown task {task_id!r} for this checkpoint; it was trained on {sorted(self.meta.tasks)}") from None

    def set_prompt(
        self,
        task_id: str,
        observations: Mapping[str, Any] | None,
        actions: np.ndarray | None = None,
        max_fraction: float = 0.5,
    ) -> int:
        """Prefix every environment's context on ``task_id`` with a demonstration (Gato's prompting).

        The demonstration's last whole timesteps that fit in ``max_fraction`` of
        the context are kept (training prompts take at most half a window, from
        the demonstration's end half of the time); they never leave the window,
        the environment's own timesteps follow them.

        Args:
            task_id: the task the prompt is for.
            observations: the demonstration's observations with a leading time
                axis (as in an ``Episode``); ``None`` removes the prompt.
            actions: its actions ``(T, *action shape)``.
            max_fraction: at most this fraction of the context goes to the prompt.

        Returns:
            The number of prompt timesteps kept.

        Raises:
            ValueError: a bad fraction, or not even one timestep fits.
        """
        if observations is None:
            self._prompts.pop(task_id, None)
            return 0
        if not 0.0 < max_fraction < 1.0:
            raise ValueError(f"max_fraction must be in (0, 1), got {max_fraction!r}")
        spec = self.spec(task_id)
        chunk, stride = self.meta.model.chunking.for_action(spec.action)
        ep = self.tok.tokenize_episode(spec, observations, actions, chunk=chunk, stride=stride,
                                       image_slots=self.model.cfg.slots_per_image)
        L, budget = ep.tokens_per_timestep, int(self.model.cfg.context * max_fraction)
        keep = min(budget // L, ep.num_timesteps)
        if keep < 1:
            raise ValueError(f"Task {task_id!r}: a prompt timestep has {L} tokens, more than {budget} ({max_fraction} of the context)")
        first = ep.num_timesteps - keep
        p = len(ep.patches) // ep.num_timesteps  # patches per timestep (timestep-major)
        steps = []
        for t in range(first, ep.num_timesteps):
            sl = slice(t * L, (t + 1) * L)
            patches = np.asarray(ep.patches[t * p:(t + 1) * p], dtype=np.float32).reshape(-1, 3, 16, 16)
            patch_pos = ep.patch_pos[t * p:(t + 1) * p].astype(np.int64).reshape(-1, 2)
            step = _Timestep(ep.tokens[sl].astype(np.int64), ep.local_pos[sl].astype(np.int64), patches, patch_pos)
            if p:
                with torch.inference_mode():
                    step.patch_emb = self._embed_images([step])
            steps.append(step)
        self._prompts[task_id] = steps
        return keep

    def chunk_size(self, task_id: str) -> int:
        """Actions per timestep of ``task_id``: the checkpoint's ``action_chunk`` for a continuous action, else 1."""
        return self.meta.model.chunking.for_action(self.spec(task_id).action)[0]

    def action_ranges(self, task_id: str) -> np.ndarray:
        """int64 (k * A, 2): the valid ``[lo, hi)`` ids of each action token of a timestep of ``task_id``
        (``k``: :meth:`chunk_size`)."""
        if task_id not in self._ranges:
            ranges = self.tok.action_token_ranges(self.spec(task_id))  # (A, 2)
            self._ranges[task_id] = np.tile(ranges, (self.chunk_size(task_id), 1))
        return self._ranges[task_id]

    def decoding_for(self, task_id: str) -> str:
        """``"mean"`` or ``"mode"``: how ``task_id``'s continuous action dimensions pick their bin (its entry in
        ``task_decoding``, else its domain's, else ``continuous_decoding``)."""
        return task_entry(self.task_decoding, task_id) or self.continuous_decoding

    def expected_dims(self, task_id: str) -> np.ndarray:
        """bool (k * A,): the action tokens of ``task_id`` decoded by their expected bin (see :meth:`decoding_for`)."""
        continuous = self.decoding_for(task_id) == "mean" and self.spec(task_id).action.kind == "continuous"
        return np.full(len(self.action_ranges(task_id)), continuous)

    # -------------------------------------------------------------------- act
    def acts_through_session(self, task_id: str) -> bool:
        """Whether :meth:`act_chunks` on ``task_id`` takes the KV-cached path.

        It does with ``use_session`` unless the task has a prompt: the session drops the oldest timesteps
        of a full window, and a prompt must never leave it.
        """
        return self.use_session and task_id not in self._prompts

    def act(self, task_id: str, observations: Sequence[Mapping[str, Any]],
            env_ids: Sequence[int] | None = None) -> list[np.ndarray]:
        """One action per environment, for a task that takes one action per timestep (see :meth:`act_chunks`).

        Raises:
            ValueError: the checkpoint predicts chunks of actions for this task; and as :meth:`act_chunks`.
        """
        k = self.chunk_size(task_id)
        if k > 1:
            raise ValueError(f"Task {task_id!r}: this checkpoint predicts chunks of {k} actions (ModelConfig.action_chunk); "
                             "act_chunks returns them and PolicyActor executes them one control tick at a time")
        return [c[0] for c in self.act_chunks(task_id, observations, env_ids)]

    @torch.inference_mode()
    def act_chunks(self, task_id: str, observations: Sequence[Mapping[str, Any]],
                   env_ids: Sequence[int] | None = None) -> list[np.ndarray]:
        """One chunk of actions per environment: the next ``k`` actions (:meth:`chunk_size`; 1 without chunking).

        The one place that picks how to act (:meth:`acts_through_session`): through the KV-cached session
        (:meth:`_act_through_session`) or by recomputing the whole window (:meth:`_act_recomputing`).

        Args:
            task_id: the task all these environments run.
            observations: one observation per environment (field name -> value,
                no time axis), in environment order; ``reset`` sets the number
                of environments (the first call resets to ``len(observations)``).
            env_ids: the environments these observations belong to (default: all, in order); the others keep
                their context.

        Returns:
            One array ``(k, *action shape)`` per environment, typed as the task's action spec.

        Raises:
            KeyError: unknown task, or an observation with a missing/unexpected key.
            ValueError: a field of the wrong shape or dtype, a wrong number of
                observations, or a timestep longer than the model's context.
        """
        spec = self.spec(task_id)
        ids = self._checked_env_ids(task_id, spec, observations, env_ids)
        if self.acts_through_session(task_id):
            tokens = self._act_through_session(task_id, spec, observations, ids)
        else:
            tokens = self._act_recomputing(task_id, spec, observations, ids)
        chunks = self.tok.decode_actions(spec, tokens.reshape(len(ids), self.chunk_size(task_id), -1))
        return [np.asarray(c) for c in chunks]  # (k, *action shape) each

    def _checked_env_ids(self, task_id: str, spec: TimestepSpec, observations: Sequence[Mapping[str, Any]],
                         env_ids: Sequence[int] | None) -> list[int]:
        """The environments of ``observations`` (default all), checked with the observations themselves.

        The first call after construction resets to ``len(observations)`` environments.
        """
        if not self._envs:
            self.reset(len(observations))
        ids = list(range(self.num_envs)) if env_ids is None else [int(i) for i in env_ids]
        if len(observations) != len(ids):
            raise ValueError(f"Expected {len(ids)} observations (one per environment), got {len(observations)}")
        bad = [i for i in ids if not 0 <= i < self.num_envs]
        if bad or len(set(ids)) != len(ids):
            raise ValueError(f"env_ids must be distinct indices in [0, {self.num_envs}), got {ids}")
        for i, obs in zip(ids, observations):
            # The fields are the checkpoint's: a task whose observation changed since needs new data and training.
            check_observation(spec, obs, where=f"Task {task_id!r} (as this checkpoint was trained on it), env {i} "
                                               "observation")
        return ids

    def _tokenize(self, spec: TimestepSpec, obs: Mapping[str, Any]) -> _Timestep:
        """One observation as a timestep: its tokens up to the separator, their local positions, its patches."""
        one = {f.name: [obs[f.name]] if f.kind == "text" else np.asarray(obs[f.name])[None] for f in spec.observation}
        ep = self.tok.tokenize_episode(spec, one, None, image_slots=self.model.cfg.slots_per_image)  # up to the separator
        return _Timestep(
            ep.tokens.astype(np.int64),
            ep.local_pos.astype(np.int64),
            np.asarray(ep.patches, dtype=np.float32),
            ep.patch_pos.astype(np.int64),
        )

    # ------------------------------------------------------ the KV-cached path
    def _act_through_session(self, task_id: str, spec: TimestepSpec, observations: Sequence[Mapping[str, Any]],
                             env_ids: list[int]) -> np.ndarray:
        """The KV-cached path: one prefill of the new observation, then one decode step per action token (with
        hidden action inputs, the prefill reads every action token's logits); int64 (n, k * A) action tokens.

        Taken with ``use_session`` for tasks without a prompt (evaluation and deployment use it): tens of
        times faster than recomputing, and it steps any subset of the environments. The contexts live in
        the session (made on the first call after :meth:`reset`); ``_envs`` records only each one's task.
        """
        if self._session is None:
            self._session = InferenceSession(
                self.model, SessionConfig(num_envs=self.num_envs, seed=self.seed), device=self.device,
                patch_id=self.tok.layout.patch_id,
            )
        for i in env_ids:
            if self._envs[i].task_id != task_id:  # a new task starts from an empty context
                self._envs[i].task_id = task_id
                self._session.reset([i])
        current = [self._tokenize(spec, obs) for obs in observations]
        out = self._session.step(current, self.action_ranges(task_id), env_ids=env_ids, temperature=self.temperature,
                                 expected_dims=self.expected_dims(task_id))
        return out.action_tokens

    # ----------------------------------------------------- the recomputing path
    def _act_recomputing(self, task_id: str, spec: TimestepSpec, observations: Sequence[Mapping[str, Any]],
                         env_ids: list[int]) -> np.ndarray:
        """The recomputing path: one forward over each whole window per action token (one in all with hidden
        action inputs), the environments ``env_ids`` at once; int64 (n, k * A) action tokens.

        Taken without ``use_session`` and for tasks with a prompt. It is the reference semantics (the
        session is tested against it) and the only path that keeps a prompt in the window. The contexts
        are the timesteps in ``_envs``.
        """
        self._leave_session()
        ranges = self.action_ranges(task_id)  # (k * A, 2)
        current = self._tokenize_and_embed(spec, observations)
        obs_len = len(current[0].tokens)
        envs = [self._envs[i] for i in env_ids]
        prompt = self._fit_windows(task_id, obs_len, len(ranges), envs)
        batch = self._window_batch([prompt + list(env.steps) + [cur] for env, cur in zip(envs, current)], len(ranges))
        action_tokens = self._decode_recomputing(batch, ranges, self.expected_dims(task_id), obs_len)  # (n, k * A)
        self._remember(envs, current, action_tokens, obs_len)
        return action_tokens

    def _leave_session(self) -> None:
        """Drop the session when acting switches to recomputing: its contexts are not shared with this path."""
        if self._session is not None:
            self._session = None
            for env in self._envs:
                env.task_id = None

    def _tokenize_and_embed(self, spec: TimestepSpec, observations: Sequence[Mapping[str, Any]]) -> list[_Timestep]:
        """The new observations as timesteps, their patches embedded once (later steps re-use them from the context)."""
        current = [self._tokenize(spec, obs) for obs in observations]
        if sum(len(c.patches) for c in current):
            pe = self._embed_images(current)  # (sum r, D)
            for c, emb in zip(current, pe.split(len(pe) // len(current))):  # every env of a task: the same images
                c.patch_emb = emb
        return current

    def _embed_images(self, steps: list[_Timestep]) -> torch.Tensor:
        """``GatoModel.embed_images`` of the timesteps' patches, one timestep after another; with ``keypoint_film``
        each patch conditioned on its own timestep's instruction."""
        instruction = None
        if self.model.cfg.keypoint_film:
            parts = []
            for step in steps:
                pidx = patch_slots(step.tokens, self.tok.layout.patch_id)
                t = lambda a: torch.from_numpy(a)[None].to(self.device)  # noqa: E731
                parts.append(self.model.patch_instructions(t(step.tokens), t(step.local_pos), t(pidx), len(step.patches)))
            instruction = torch.cat(parts)
        return self.model.embed_images(torch.from_numpy(np.concatenate([s.patches for s in steps])).to(self.device),
                                       torch.from_numpy(np.concatenate([s.patch_pos for s in steps])).to(self.device),
                                       instruction)

    def _fit_windows(self, task_id: str, obs_len: int, A: int, envs: list[_EnvContext]) -> list[_Timestep]:
        """Make room in the windows of ``envs`` for the task's prompt and a new timestep; returns the prompt.

        A window on another task starts empty; otherwise whole oldest timesteps leave until the new one fits.

        Raises:
            ValueError: one timestep, or one timestep after the prompt, does not fit the context.
        """
        context = self.model.cfg.context
        need = obs_len + A - 1  # the last action token is chosen, never fed
        if need > context:
            raise ValueError(
                f"Task {task_id!r}: one timestep needs {need} tokens of context but the model has {context}"
            )
        prompt = self._prompts.get(task_id, [])
        room = context - sum(len(t.tokens) for t in prompt)
        if need > room:
            raise ValueError(f"Task {task_id!r}: the prompt leaves {room} tokens of context, a timestep needs {need}")
        for env in envs:
            if env.task_id != task_id:
                env.task_id, env.steps = task_id, deque()
            while env.steps and env.num_tokens + need > room:
                env.steps.popleft()  # drop whole oldest timesteps
        return prompt

    def _window_batch(self, seqs: list[list[_Timestep]], A: int) -> _WindowBatch:
        """The windows ``seqs`` as one right-padded batch with room for the ``A - 1`` fed action tokens."""
        lengths = np.array([sum(len(t.tokens) for t in s) for s in seqs])  # (B,)
        B, width = len(seqs), int(lengths.max()) + A - 1
        tokens = np.full((B, width), self.tok.layout.pad_id, np.int64)
        local_pos = np.zeros((B, width), np.int64)
        patch_index = np.full((B, width), -1, np.int64)
        patch_embs, n_patches = [], 0
        for b, steps in enumerate(seqs):
            tok_b = np.concatenate([t.tokens for t in steps])
            tokens[b, : len(tok_b)] = tok_b
            local_pos[b, : len(tok_b)] = np.concatenate([t.local_pos for t in steps])
            slots = np.flatnonzero(tok_b == self.tok.layout.patch_id)
            patch_index[b, slots] = n_patches + np.arange(len(slots))
            n_patches += len(slots)
            patch_embs += [t.patch_emb for t in steps if t.patch_emb is not None]
        dev = self.device
        patch_emb = torch.cat(patch_embs) if patch_embs else None  # (P, D) in patch_index order
        context = None
        if self.model.cfg.cross_attn_layers:
            context = self._image_context(seqs, width)
            patch_emb = None
        return _WindowBatch(torch.from_numpy(tokens).to(dev), torch.from_numpy(local_pos).to(dev),
                            torch.from_numpy(patch_index).to(dev), patch_emb, lengths, context)

    def _image_context(self, seqs: list[list[_Timestep]], width: int) -> ImageContext:
        """Cross-attention fusion: every timestep with images is a frame (its latents, ``_Timestep.patch_emb``);
        each token's frame is its timestep's, and the ``A - 1`` fed action positions past a window are the
        newest timestep's."""
        frames, index = [], np.full((len(seqs), width), -1, np.int64)
        for b, steps in enumerate(seqs):
            col = 0
            for t in steps:
                if t.patch_emb is not None:
                    index[b, col:col + len(t.tokens)] = len(frames)
                    frames.append(t.patch_emb)
                col += len(t.tokens)
            index[b, col:] = index[b, col - 1]
        if not frames:
            return self.model.image_context(None, None, torch.zeros(0, dtype=torch.long), torch.from_numpy(index))
        latents = torch.stack(frames)  # (F, M, D): the frames of one task have the same images
        valid = torch.ones(latents.shape[:2], dtype=torch.bool, device=latents.device)
        return ImageContext(latents, valid, torch.from_numpy(index).to(self.device))

    def _decode_recomputing(self, batch: _WindowBatch, ranges: np.ndarray, expect: np.ndarray,
                            obs_len: int) -> np.ndarray:
        """Choose the action tokens one by one, each by a forward over the whole batch, feeding each choice back.

        With hidden action inputs the model reads the padding id at every action position whatever was chosen,
        so one forward over the windows and ``A - 1`` padding slots gives every action token's logits.

        Returns:
            int64 (B, A): the chosen ids, each inside its dimension's range.
        """
        if self.model.cfg.action_inputs == "hidden":
            return self._decode_hidden(batch, ranges, expect, obs_len)
        dev = self.device
        B, A = len(batch.lengths), len(ranges)
        rows = torch.arange(B, device=dev)
        pos = torch.from_numpy(batch.lengths).to(dev)  # (B,) index of the next token to write
        action_tokens = torch.empty((B, A), dtype=torch.long, device=dev)
        for k in range(A):
            n = int(batch.lengths.max()) + k
            ctx = None if batch.context is None else batch.context._replace(index=batch.context.index[:, :n])
            hidden = self.model(batch.tokens[:, :n], batch.local_pos[:, :n], batch.patch_index[:, :n], None, None,
                                patch_embeddings=batch.patch_emb, context=ctx)  # (B, n, D)
            lo, hi = int(ranges[k, 0]), int(ranges[k, 1])
            logits = self.model.logits(hidden[rows, pos - 1])[:, lo:hi].float()  # (B, hi - lo): valid ids only
            action_tokens[:, k] = self._choose(logits, expect[k]) + lo
            if k + 1 < A:  # feed the chosen token back
                batch.tokens[rows, pos] = action_tokens[:, k]
                batch.local_pos[rows, pos] = obs_len + k
                pos = pos + 1
        return action_tokens.cpu().numpy()

    def _decode_hidden(self, batch: _WindowBatch, ranges: np.ndarray, expect: np.ndarray, obs_len: int) -> np.ndarray:
        """All ``A`` action tokens from one forward: the padding id (``_window_batch``'s filler) at the ``A - 1``
        fed action positions, local positions ``obs_len ..``; position ``p`` predicts token ``p + 1``. int64 (B, A)."""
        dev = self.device
        B, A = len(batch.lengths), len(ranges)
        lengths = torch.from_numpy(batch.lengths).to(dev)
        cols = torch.arange(A, device=dev)
        slots = lengths[:, None] + cols[:-1]  # (B, A - 1) the fed action positions
        rows = torch.arange(B, device=dev)[:, None]
        batch.local_pos[rows, slots] = obs_len + cols[:-1]
        hidden = self.model(batch.tokens, batch.local_pos, batch.patch_index, None, None,
                            patch_embeddings=batch.patch_emb, context=batch.context)  # (B, width, D)
        h = hidden[rows, lengths[:, None] - 1 + cols]  # (B, A, D): the separator's, then each action slot's
        action_tokens = torch.empty((B, A), dtype=torch.long, device=dev)
        for k in range(A):
            lo, hi = int(ranges[k, 0]), int(ranges[k, 1])
            logits = self.model.logits(h[:, k])[:, lo:hi].float()  # (B, hi - lo): valid ids only
            action_tokens[:, k] = self._choose(logits, expect[k]) + lo
        return action_tokens.cpu().numpy()

    def _choose(self, logits: torch.Tensor, expected: bool) -> torch.Tensor:
        """(B,) the chosen column of ``logits`` (B, n): sampled with the temperature; greedily the expected
        column (rounded) when ``expected``, else the most likely one."""
        if self.temperature > 0:
            probs = torch.softmax(logits / self.temperature, dim=-1)
            return torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        if expected:
            return expected_ids(logits)
        return logits.argmax(dim=-1)

    def _remember(self, envs: list[_EnvContext], current: list[_Timestep], action_tokens: np.ndarray,
                  obs_len: int) -> None:
        """Append each environment's new timestep (its observation and chosen action tokens) to its context."""
        A = action_tokens.shape[1]
        for env, cur, a in zip(envs, current, action_tokens):
            env.steps.append(
                _Timestep(
                    np.concatenate([cur.tokens, a]),
                    np.arange(obs_len + A, dtype=np.int64),
                    cur.patches,
                    cur.patch_pos,
                    cur.patch_emb,
                )
            )
