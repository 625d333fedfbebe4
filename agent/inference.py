"""KV-cached acting: :class:`InferenceSession`.

A session holds, for ``B`` environments at once, a preallocated static-shape
KV cache over the whole context window (``n_layer x B x heads x K x head_dim``
with ``K = context + C``) and the input embeddings of the tokens in the window.
One control step is

1. **prefill** of one timestep's observation tokens (image patches through
   the model's patch embedder and row/column embeddings, local positions
   ``0 .. L-1``), preceded by the previous timestep's last action token (it
   was chosen but never fed), padded to a fixed width ``C``;
2. **decode**: one step per action dimension ``k = 1 .. A-1`` reusing the
   cache; every step's logits are masked to that dimension's valid ids (the
   tokenizer's ``action_token_ranges``) before the greedy / sampled choice.
   With ``action_inputs="hidden"`` the model reads the padding id at every
   action position whatever was chosen, so there is no decode step: the
   prefill carries the ``A - 1`` fed action positions too and its last
   ``A`` outputs give every action token at once (a chunk of ``k`` actions,
   ``k * A`` tokens, in one forward pass).

The last block of the prefill runs attention and MLP for the last token only
(the others need only their keys and values), the LM head computes only the
rows of the action ids, and a rebuild skips the last block's outputs entirely.

Eviction. The model adds a learned *window* position (``0 .. context-1``,
counted from the first token of the window, which starts at a timestep
boundary) at its input, so every key and value of every layer depends on
where the window starts: dropping the oldest timestep changes all of them,
and a ring buffer cannot reuse them. When a new timestep no longer fits, the
session drops whole oldest timesteps and rebuilds the cache over the kept
window from the stored input embeddings (one causal forward, no patch
re-embedding). The result equals a full recomputation over the same window.
How much is dropped is ``SessionConfig.evict_keep``: ``1.0`` drops only what is
needed (the window stays full, and from then on every step rebuilds, a
forward over the whole context); the default ``0.5`` drops down to half the
context, so a rebuild happens once every ``~context / (2 L)`` steps and the
steps in between cost only the prefill and the decodes.

Images. With ``image_encoder="resampler"`` an image's slots read its resampler latents, computed once when
the image arrives (eagerly, before the prefill) and kept, like every input embedding, in the stored inputs
that a rebuild reuses. With ``fusion="cross-attention"`` the images have no slots: each timestep's latents
are kept in a frame buffer (one slot per timestep, reused cyclically: a window never holds more timesteps
than the context has tokens), each cached token remembers its timestep's frame, and the gated
cross-attention blocks run in the prefill, the decode steps and the rebuilds over them.

On CUDA the weights run in bfloat16 (logits in float32), the fixed-size
prefill and the decode step are captured as CUDA graphs and replayed; the
decode graph reads its position, local position, input token and action
dimension from device buffers that the previous replay advanced, so a
control step has one host synchronisation: reading the action tokens. On the
CPU the same code runs eagerly and attends only to the filled part of the
cache.

>>> import torch
>>> from omnipolicy.agent import ModelConfig, GatoModel
>>> cfg = ModelConfig(n_layer=1, n_embd=32, n_head=2, d_ff=64, context=32, local_positions=16,
...                   patch_channels=8, patch_stride=4, vocab_size=40)
>>> session = InferenceSession(GatoModel(cfg), SessionConfig(num_envs=2))
>>> obs = [ObsTokens(np.array([3, 4, 5])), ObsTokens(np.array([6, 7, 8]))]
>>> out = session.step(obs, action_ranges=np.array([[10, 20], [20, 30]]))
>>> out.action_tokens.shape, bool(((out.action_tokens[:, 0] >= 10) & (out.action_tokens[:, 0] < 20)).all())
((2, 2), True)
>>> session.num_tokens.tolist()  # the window: 3 observation tokens and 2 action tokens
[5, 5]
"""

from __future__ import annotations

import copy
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from omnipolicy.tokenizers.image import image_starts, patch_slots

from .config import PATCH_SIZE
from .cross_attention import ImageContext
from .model import GatoModel, expected_ids

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class SessionConfig:
    """How an :class:`InferenceSession` batches, evicts and runs."""

    num_envs: int = 1
    """Environments stepped as one batch (rows of the KV cache)."""
    evict_keep: float = 0.5
    """When a new timestep (with its action) no longer fits the context, drop whole oldest timesteps until the
    window fills at most this fraction of the context; 1.0 drops only what is needed (the window then stays full
    and every later step rebuilds the cache)."""
    prefill_size: int = 0
    """Static prefill width C (the observation tokens of one timestep plus the previous action's last token);
    0 sizes it from the first step (rounded up to a multiple of 16) and grows it when a longer observation comes."""
    max_patches: int = 0
    """Static image-slot capacity per environment and step (patches, or resampler latents); 0 sizes it from the
    first step and grows it."""
    dtype: str = "auto"
    """Weights and cache dtype: auto (bfloat16 on CUDA, float32 on the CPU), float32, bfloat16 or float16."""
    cuda_graphs: bool = True
    """Capture the prefill and the decode step as CUDA graphs and replay them (CUDA only)."""
    seed: int = 0
    """Seed of the sampling noise (used when temperature > 0)."""

    def __post_init__(self) -> None:
        if not isinstance(self.num_envs, int) or self.num_envs < 1:
            raise ValueError(f"SessionConfig.num_envs must be an int >= 1, got {self.num_envs!r}")
        if not 0.0 < self.evict_keep <= 1.0:
            raise ValueError(f"SessionConfig.evict_keep must be in (0, 1], got {self.evict_keep!r}")
        for name in ("prefill_size", "max_patches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"SessionConfig.{name} must be an int >= 0 (0 = automatic), got {value!r}")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"SessionConfig.dtype must be one of {['auto', *_DTYPES]}, got {self.dtype!r}")


class ObsTokens(NamedTuple):
    """One environment's observation at one timestep, tokenized.

    ``tokens`` are the observation tokens up to and including the separator
    (``TokenizedEpisode.tokens`` of ``tokenize_episode(spec, obs, None)``);
    their local positions are ``0 .. L-1``. The k-th ``patch_id`` token takes
    ``patches[k]``. Any object with these three attributes is accepted
    (``Policy``'s per-timestep record too).
    """

    tokens: np.ndarray  # int (L,)
    patches: np.ndarray | None = None  # float32 (p, 3, 16, 16)
    patch_pos: np.ndarray | None = None  # int (p, 2) (row, col)


@dataclass
class StepResult:
    """What one :meth:`InferenceSession.step` returns.

    Attributes:
        action_tokens: int64 (n, A), one row per stepped environment (in ``env_ids`` order).
        logits: float32 (n, A, V) logits of each decoded position with the
            invalid ids set to ``-inf`` (only when asked for; ``None`` otherwise).
        rebuilt: environments (ids) whose window was shortened and cache rebuilt before this step.
    """

    action_tokens: np.ndarray
    logits: Tensor | None = None
    rebuilt: list[int] = field(default_factory=list)


@dataclass
class _EnvState:
    steps: deque = field(default_factory=deque)  # token count of each timestep in the window, oldest first
    fill: int = 0  # tokens whose keys/values are in the cache (positions 0 .. fill-1)
    pending: int = -1  # last action token of the newest timestep, chosen but not yet fed (-1: none)
    pending_local: int = 0  # its local position
    frames: deque = field(default_factory=deque)  # cross-attention: frame slot of each timestep in the window (-1: none)
    frames_seen: int = 0  # timesteps given a frame slot (the next one takes frames_seen % frame capacity)

    @property
    def window_tokens(self) -> int:
        return self.fill + (self.pending >= 0)


_ObsArrays = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]
"""One observation as arrays: int tokens (L,), float32 patches (p, 3, 16, 16) and int patch positions (p, 2)."""


class _PrefillInputs(NamedTuple):
    """The host arrays of one prefill (``B`` rows of width ``C``), staged into the ``in_*`` device buffers."""

    tok: np.ndarray  # int64 (B, C) token ids
    loc: np.ndarray  # int64 (B, C) local positions
    pidx: np.ndarray  # int64 (B, C) index into the (B * P) patches, -1 elsewhere
    fill: np.ndarray  # int64 (B,) cache fill before the step
    cnt: np.ndarray  # int64 (B,) tokens of this step's prefill
    patches: np.ndarray | None  # float32 (B * P, 3, 16, 16); None without patch slots
    ppos: np.ndarray  # int64 (B * P, 2) (row, col)
    frame: np.ndarray  # int64 (B, C) cross-attention: each token's frame slot, -1 where none


class InferenceSession:
    """Batched, KV-cached action decoding for a :class:`~omnipolicy.agent.model.GatoModel`.

    Args:
        model: the trained model. Used as is when it already has the session's
            device and dtype and is in eval mode; otherwise a converted copy is made.
        config: batching, eviction and execution options.
        device: where to run; default the model's device.
        patch_id: the layout's image-patch token (``layout.patch_id``); ``None`` when no
            observation has images.

    Raises:
        ValueError: an invalid config (see :class:`SessionConfig`).
    """

    def __init__(
        self,
        model: GatoModel,
        config: SessionConfig | None = None,
        device: str | torch.device | None = None,
        patch_id: int | None = None,
    ) -> None:
        self.config = config = SessionConfig() if config is None else config
        self.patch_id = None if patch_id is None else int(patch_id)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if config.dtype == "auto":
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = _DTYPES[config.dtype]
        p = next(model.parameters())
        if p.device != self.device or p.dtype != self.dtype or model.training:
            model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        self.model = model
        cfg = model.cfg
        self.cfg = cfg
        self.B = config.num_envs
        self.H = cfg.n_head
        self.D = cfg.n_embd
        self.context = cfg.context
        self.vocab_size = int(cfg.vocab_size)
        self.use_graphs = self.device.type == "cuda" and config.cuda_graphs
        self.hidden = cfg.action_inputs == "hidden"  # action positions read the padding id (ModelConfig.action_inputs)
        # the LM head in float32: greedy choices do not flip on bfloat16 rounding of the logits
        w = model.lm_head.weight
        self._head_w = w if w.dtype == torch.float32 else w.detach().float()
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self._envs = [_EnvState() for _ in range(self.B)]
        self.C = 0  # prefill width
        self.P = 0  # patch slots per env
        self.A_cap = 0  # action dims the buffers hold
        self.K = 0  # cache length (context + C)
        self._graphs: dict[tuple, Any] = {}
        self._record = False  # eager mode: keep the logits (return_logits)
        self._expect = False  # some action dimension is decoded by its expected id (see step's expected_dims)
        self._static = False  # run the graph-mode bodies eagerly (static shapes, device-side decode state)
        self._pool = None
        self.slots = cfg.slots_per_image  # None: one slot per patch; N: resampler latents per image; 0: cross-attention
        self._xattn_at = {layer: i for i, layer in enumerate(cfg.cross_attn_layers)}  # block -> its xattn block
        self.frames = self.frames_valid = None  # cross-attention: (B, F, M, D) latents of each frame slot, (B, F, M)
        self.stats = {"steps": 0, "rebuilds": 0, "rebuilt_tokens": 0, "evicted_timesteps": 0}
        with torch.inference_mode():
            self._allocate(max(config.prefill_size, 16), config.max_patches, 16)
            if self._xattn_at:
                self._ensure_frames(cfg.resampler_latents)

    # ---------------------------------------------------------------- buffers
    def _allocate(self, C: int, P: int, A_cap: int) -> None:
        """(Re)allocate every static buffer, keeping the cache and history contents."""
        dev, dt, B, L, H = self.device, self.dtype, self.B, self.cfg.n_layer, self.H
        hd, D, V = self.D // self.H, self.D, self.vocab_size
        K = self.context + C
        old = getattr(self, "k_cache", None)
        k_cache = torch.zeros((L, B, H, K, hd), device=dev, dtype=dt)  # (layers, B, H, K, hd)
        v_cache = torch.zeros_like(k_cache)
        hist = torch.zeros((B, K, D), device=dev, dtype=dt)  # input embeddings without the window position
        tok_frame = torch.full((B, K), -1, device=dev, dtype=torch.long)  # cross-attention: frame slot of each token
        if old is not None:
            n = min(self.K, K)
            k_cache[..., :n, :] = self.k_cache[..., :n, :]
            v_cache[..., :n, :] = self.v_cache[..., :n, :]
            hist[:, :n] = self.hist[:, :n]
            tok_frame[:, :n] = self.tok_frame[:, :n]
        self.k_cache, self.v_cache, self.hist, self.tok_frame = k_cache, v_cache, hist, tok_frame
        self.C, self.P, self.A_cap, self.K = C, P, A_cap, K
        i64 = dict(device=dev, dtype=torch.long)
        # inputs of the prefill, staged from the host each step
        self.in_tok = torch.zeros((B, C), **i64)
        self.in_loc = torch.zeros((B, C), **i64)
        self.in_pidx = torch.full((B, C), -1, **i64)  # index into the (B * P) patches, -1 elsewhere
        self.in_fill = torch.zeros((B,), **i64)  # cache fill before the step
        self.in_cnt = torch.ones((B,), **i64)  # tokens of this step's prefill
        self.in_patches = torch.zeros((B * P if self.slots is None else 0, 3, PATCH_SIZE, PATCH_SIZE), device=dev, dtype=dt)
        self.in_ppos = torch.zeros((B * P, 2), **i64)
        self.in_slots = torch.zeros((B * P if self.slots else 0, D), device=dev, dtype=dt)  # resampler slots' latents
        self.in_frame = torch.full((B, C), -1, **i64)  # cross-attention: frame slot of each prefill token
        self.dec_frame = torch.full((B,), -1, **i64)  # and of the decoded tokens
        self.in_mask = torch.zeros((A_cap, V), device=dev, dtype=torch.float32)  # 0 on valid ids, -inf elsewhere
        self.in_temp = torch.ones((), device=dev, dtype=torch.float32)
        self.in_expect = torch.zeros((A_cap,), device=dev, dtype=torch.bool)  # dims decoded by the expected id
        self.noise = torch.zeros((B, A_cap, V), device=dev, dtype=torch.float32)  # Gumbel noise for sampling
        # decode state, advanced by each decode step on the device
        self.dec_tok = torch.zeros((B,), **i64)
        self.dec_pos = torch.zeros((B,), **i64)
        self.dec_loc = torch.zeros((B,), **i64)
        self.dec_k = torch.zeros((1,), **i64)  # action dimension being chosen
        # inputs of a cache rebuild (graph mode): rows and their shifts
        self.rb_rows = torch.zeros((B,), **i64)
        self.rb_shift = torch.zeros((B,), **i64)
        # outputs
        self.out_tok = torch.zeros((B, A_cap), **i64)
        self.out_logits = torch.zeros((B, A_cap, V), device=dev, dtype=torch.float32)
        # constants
        self._rows = torch.arange(B, device=dev)
        self._pad_tok = torch.full((B, 1), self.cfg.pad_id if self.hidden else 0, device=dev, dtype=torch.long)
        self._cols = torch.arange(C, device=dev)
        self._keys = torch.arange(K, device=dev)
        # prefill masks are views of one matrix: _causal[i, j] = -inf where j > i + K, so that
        # _causal[:S, K - start : K - start + kv_len] lets query i see keys 0 .. start + i
        self._causal = torch.full((C, 2 * K), float("-inf"), device=dev, dtype=dt).triu_(K + 1)
        self._mask_key = None
        if dev.type == "cuda":
            pin = dict(pin_memory=True)
            self._host = {
                "tok": torch.zeros((B, C), dtype=torch.long, **pin),
                "loc": torch.zeros((B, C), dtype=torch.long, **pin),
                "pidx": torch.zeros((B, C), dtype=torch.long, **pin),
                "fill": torch.zeros((B,), dtype=torch.long, **pin),
                "cnt": torch.zeros((B,), dtype=torch.long, **pin),
                "patches": torch.zeros((B * P, 3, PATCH_SIZE, PATCH_SIZE), dtype=dt, **pin),
                "ppos": torch.zeros((B * P, 2), dtype=torch.long, **pin),
                "frame": torch.zeros((B, C), dtype=torch.long, **pin),
                "mask": torch.zeros((A_cap, V), dtype=torch.float32, **pin),
                "rb_rows": torch.zeros((B,), dtype=torch.long, **pin),
                "rb_shift": torch.zeros((B,), dtype=torch.long, **pin),
            }
        self._graphs.clear()

    # ------------------------------------------------------------------ state
    @property
    def num_envs(self) -> int:
        return self.B

    @property
    def num_tokens(self) -> np.ndarray:
        """int64 (B,): tokens of each environment's window (cached ones plus the pending action token)."""
        return np.array([e.window_tokens for e in self._envs], dtype=np.int64)

    def window_timesteps(self, env: int) -> int:
        """Number of timesteps in environment ``env``'s window (the newest ones of its episode)."""
        return len(self._envs[self._check_env(env)].steps)

    def _check_env(self, env: int) -> int:
        if not isinstance(env, (int, np.integer)) or not 0 <= env < self.B:
            raise IndexError(f"env index {env!r} out of range for a session of {self.B} environments")
        return int(env)

    def _env_list(self, env_ids: Sequence[int] | None) -> list[int]:
        if env_ids is None:
            return list(range(self.B))
        ids = [self._check_env(e) for e in env_ids]
        if len(set(ids)) != len(ids):
            raise ValueError(f"env_ids must not repeat an environment, got {list(env_ids)}")
        return ids

    def reset(self, env_ids: Sequence[int] | None = None, seed: int | None = None) -> None:
        """Start new episodes: forget the windows of ``env_ids`` (default all).

        Args:
            env_ids: environments to reset.
            seed: reseed the sampling noise (default: the config's seed when every environment is reset).
        """
        for e in self._env_list(env_ids):
            self._envs[e] = _EnvState()
        if seed is not None or env_ids is None:
            self.generator.manual_seed(self.config.seed if seed is None else seed)

    def rollback(self, steps: int = 1, env_ids: Sequence[int] | None = None) -> None:
        """Remove the newest ``steps`` timesteps from the windows of ``env_ids`` (default all).

        The cache of the remaining timesteps stays valid (positions do not
        move), so this costs nothing; timesteps evicted earlier do not come back.

        Raises:
            ValueError: an environment has fewer than ``steps`` timesteps in its window.
        """
        ids = self._env_list(env_ids)
        for e in ids:
            if len(self._envs[e].steps) < steps:
                raise ValueError(f"env {e} has {len(self._envs[e].steps)} timesteps in its window, cannot roll back {steps}")
        for e in ids:
            st = self._envs[e]
            for _ in range(steps):
                st.steps.pop()
                if st.frames:
                    st.frames.pop()
                    st.frames_seen -= 1
            # the newest kept timestep's last action token was fed by the next step's prefill
            st.fill, st.pending = sum(st.steps), -1

    def _fed(self, action_token: int) -> int:
        """What the model reads for an action token it chose (the padding id with hidden action inputs)."""
        return self.cfg.pad_id if self.hidden else action_token

    # ------------------------------------------------------------- the model
    def _embed(self, tok: Tensor, loc: Tensor, pidx: Tensor | None, patches: Tensor | None, ppos: Tensor | None,
               slot_emb: Tensor | None = None) -> Tensor:
        """Input embeddings without the window position, as ``GatoModel.embed`` computes them. (B, S, D)

        The image slots (``pidx >= 0``) read ``slot_emb`` (n, D) when given (the resampler's latents, computed
        before), else the embeddings of ``patches``."""
        m = self.model
        x = m.wte(tok)  # (B, S, D)
        if slot_emb is None and patches is not None and patches.shape[0] > 0:
            instruction = m.patch_instructions(tok, loc, pidx, patches.shape[0]) if self.cfg.keypoint_film else None
            slot_emb = m.embed_patches(patches, ppos, instruction)  # (n, D)
        if slot_emb is not None and slot_emb.shape[0] > 0:
            x = torch.where((pidx >= 0).unsqueeze(-1), slot_emb[pidx.clamp(min=0)].to(x.dtype), x)
            if m.film is not None:
                x = m.film(x, tok, loc, pidx >= 0, m.wte.weight)
        return x + m.wle(loc)

    def _context(self, rows: Tensor, frame: Tensor) -> ImageContext | None:
        """The cross-attention blocks' input for tokens of ``rows`` (B,) whose frame slots are ``frame`` (B, S)."""
        if not self._xattn_at:
            return None
        B, F, M, D = self.frames.shape
        index = torch.where(frame >= 0, rows.unsqueeze(1) * F + frame, -1)  # (B, S) into the flat frames
        return ImageContext(self.frames.view(B * F, M, D), self.frames_valid.view(B * F, M), index)

    def _ensure_frames(self, M: int) -> None:
        """Frame buffers of (at least) ``M`` latents per frame, one frame slot per possible timestep of a window."""
        if self.frames is not None and self.frames.shape[2] >= M:
            return
        old, old_valid, F = self.frames, self.frames_valid, self.context
        self.frames = torch.zeros((self.B, F, M, self.D), device=self.device, dtype=self.dtype)
        self.frames_valid = torch.zeros((self.B, F, M), device=self.device, dtype=torch.bool)
        if old is not None:
            self.frames[:, :, : old.shape[2]] = old
            self.frames_valid[:, :, : old.shape[2]] = old_valid
        self._graphs.clear()  # captured graphs read the old buffers

    def _xattn(self, layer: int, x: Tensor, ctx: ImageContext | None) -> Tensor:
        """``x`` through the gated cross-attention block before block ``layer``, if it has one."""
        if ctx is None or layer not in self._xattn_at:
            return x
        return self.model.xattn[self._xattn_at[layer]](x, ctx)

    def _forward_new(
        self,
        pre: Tensor,
        pos: Tensor | None,
        kv_len: int,
        env: int | None = None,
        start: int | None = None,
        last: Tensor | None = None,
        kv_only: bool = False,
        n_out: int = 1,
        frame: Tensor | None = None,
    ) -> Tensor | None:
        """Run new tokens through the blocks, writing their keys/values at ``pos``.

        The last block runs its attention and MLP only for the tokens whose outputs are wanted
        (``last``; the others' outputs of that block would only feed the logits), or not at all
        (``kv_only``): only their keys and values are needed.

        Args:
            pre: (B, S, D) input embeddings without the window position.
            pos: (B, S) window position of each token (also its cache slot); unused with ``start``.
            kv_len: cache slots the attention reads (all written slots a valid query may see).
            env: run on this one environment's row (``pre`` then has one row) instead of all rows.
            start: eager fast path: every row writes the slots ``start .. start + S - 1`` and
                ``kv_len == start + S`` (plain slices, no per-row mask); the outputs are the last ``n_out`` tokens'.
            last: (B, n_out) indices of the tokens whose outputs are wanted (without ``start``).
            kv_only: fill the cache only, return nothing.
            n_out: tokens per row whose outputs are wanted.
            frame: (B, S) cross-attention: each token's frame slot (-1: none); kept for rebuilds.

        Returns:
            (B, n_out) hidden states (before the final norm) of the wanted tokens of each row, or ``None``.
        """
        B, S, D = pre.shape
        H, hd, K = self.H, D // self.H, self.K
        one = slice(None) if env is None else slice(env, env + 1)
        ctx = None
        if self._xattn_at:
            row_ids = self._rows[:B] if env is None else self._rows[env : env + 1]
            ctx = self._context(row_ids, frame)
        if start is None:
            slot = pos.clamp(max=K - 1)  # padding queries of full windows stay inside the buffer
            rows = self._rows[:B, None]
            self.hist[one][rows, slot] = pre
            if ctx is not None:
                self.tok_frame[one][rows, slot] = frame
            x = pre + self.model.wpe(pos.clamp(max=self.context - 1))
            visible = self._keys[:kv_len] <= pos.unsqueeze(-1)  # (B, S, kv_len): causal over the cache
            mask = torch.zeros(visible.shape, device=pre.device, dtype=pre.dtype).masked_fill_(~visible, float("-inf"))
            mask = mask.unsqueeze(1)  # (B, 1, S, kv_len), shared by every layer
        else:
            self.hist[one, start : start + S] = pre
            if ctx is not None:
                self.tok_frame[one, start : start + S] = frame
            x = pre + self.model.wpe.weight[start : start + S]
            mask = None
            if S > 1:  # query i sees keys 0 .. start + i
                mask = self._causal[:S, K - start : K - start + kv_len]
        n_layer = len(self.model.blocks)
        for layer, blk in enumerate(self.model.blocks):
            x = self._xattn(layer, x, ctx)
            h = blk.ln_1(x)
            q, k, v = blk.attn.c_attn(h).view(B, S, 3, H, hd).permute(2, 0, 3, 1, 4)  # 3 x (B, H, S, hd)
            kc, vc = self.k_cache[layer, one], self.v_cache[layer, one]  # (B, H, K, hd)
            if start is None:
                kc[rows, :, slot] = k.transpose(1, 2)
                vc[rows, :, slot] = v.transpose(1, 2)
            else:
                kc[:, :, start : start + S] = k
                vc[:, :, start : start + S] = v
            if layer == n_layer - 1 and S > 1:  # the last block: only one query per row matters
                if kv_only:
                    return None
                if start is None:
                    rows_n = self._rows[:B, None]  # (B, 1) with last (B, n_out)
                    q, mask, x = q[rows_n, :, last].transpose(1, 2), mask[rows_n, :, last].transpose(1, 2), x[rows_n, last]
                elif n_out == 1:  # the last token sees every key
                    q, mask, x = q[:, :, -1:], None, x[:, -1:]
                else:
                    q, mask, x = q[:, :, -n_out:], mask[-n_out:], x[:, -n_out:]
                S = n_out
            y = F.scaled_dot_product_attention(q, kc[:, :, :kv_len], vc[:, :, :kv_len], attn_mask=mask)
            x = x + blk.attn.c_proj(y.transpose(1, 2).reshape(B, S, D))
            x = x + blk.mlp(blk.ln_2(x))
        return x

    def _choose(self, h: Tensor, greedy: bool, span: tuple[int, int], k: int | None = None) -> Tensor:
        """Choose an action dimension from hidden states (B, D); record the choice (and the masked logits).

        Only the LM-head rows of ``span`` (the union of the action ranges) are computed. ``k`` is the
        dimension in eager mode; CUDA graphs read and advance the device counter ``dec_k`` instead.
        """
        lo, hi = span
        logits = F.linear(self.model.ln_f(h).float(), self._head_w[lo:hi])  # (B, hi - lo) float32
        kd = self.dec_k
        logits = logits + (self.in_mask[k, lo:hi] if k is not None else self.in_mask[:, lo:hi].index_select(0, kd))
        if not greedy:
            noise = self.noise[:, k, lo:hi] if k is not None else self.noise[:, :, lo:hi].index_select(1, kd).squeeze(1)
            choice = (logits / self.in_temp + noise).argmax(dim=-1) + lo
        else:
            choice = logits.argmax(dim=-1)
            if self._expect:  # ordinal ids: the expected id under the masked softmax, rounded (a valid id: masked ones weigh 0)
                expected = expected_ids(logits)
                flag = self.in_expect[k] if k is not None else self.in_expect.index_select(0, kd).squeeze(0)
                choice = torch.where(flag, expected, choice)
            choice = choice + lo
        if k is not None:
            self.out_tok[:, k] = choice
            if self._record:
                self.out_logits[:, k, lo:hi] = logits
        else:
            self.out_logits[:, :, lo:hi].index_copy_(1, kd, logits.unsqueeze(1))
            self.out_tok.index_copy_(1, kd, choice.unsqueeze(1))
            kd.add_(1)
        return choice

    def _choose_all(self, h: Tensor, greedy: bool, span: tuple[int, int], record: bool) -> None:
        """Choose action dimensions ``0 .. n-1`` at once from hidden states (B, n, D), as :meth:`_choose` does each
        (the prefill of hidden action inputs, whose outputs give every dimension); ``record`` keeps the logits."""
        lo, hi = span
        n = h.shape[1]
        logits = F.linear(self.model.ln_f(h).float(), self._head_w[lo:hi]) + self.in_mask[:n, lo:hi]  # (B, n, hi - lo)
        if not greedy:
            choice = (logits / self.in_temp + self.noise[:, :n, lo:hi]).argmax(dim=-1)
        else:
            choice = logits.argmax(dim=-1)
            if self._expect:  # the expected id where asked (see _choose)
                choice = torch.where(self.in_expect[:n], expected_ids(logits), choice)
        self.out_tok[:, :n] = choice + lo
        if record:
            self.out_logits[:, :n, lo:hi] = logits

    def _prefill_body(self, greedy: bool, span: tuple[int, int], kv_len: int, width: int | None = None,
                      start: int | None = None, n_out: int = 1) -> None:
        """Prefill and choose the first ``n_out`` action tokens from the outputs of each row's last ``n_out`` tokens
        (``n_out > 1``: hidden action inputs, whose prefill carries the fed action positions)."""
        S = self.C if width is None else width
        tok, loc = self.in_tok[:, :S], self.in_loc[:, :S]
        pos = self.in_fill.unsqueeze(1) + self._cols[:S]  # (B, S)
        pre = self._embed(tok, loc, self.in_pidx[:, :S], self.in_patches if self.P else None, self.in_ppos,
                          self.in_slots if self.slots else None)
        last = (self.in_cnt - 1).clamp(min=0)  # (B,) last real token of each row
        wanted = (last[:, None] - (n_out - 1) + self._cols[:n_out]).clamp(min=0)  # (B, n_out)
        frame = self.in_frame[:, :S]
        x = self._forward_new(pre, pos, kv_len, start=start, last=wanted, n_out=n_out, frame=frame)  # (B, n_out, D)
        self.dec_frame.copy_(frame[self._rows, last])  # the decoded action tokens belong to the same timestep
        if n_out > 1:  # hidden action inputs: every action dimension at once, no decode step follows
            self._choose_all(x, greedy, span, record=start is None or self._record)
        elif start is None:  # graph mode: the decode graph reads its state from the device
            self.dec_k.zero_()
            self.dec_tok.copy_(self._choose(x[:, 0], greedy, span))
            self.dec_pos.copy_(self.in_fill + self.in_cnt)
            self.dec_loc.copy_(loc[self._rows, last] + 1)
        else:  # eager, every row has S tokens
            self.dec_tok.copy_(self._choose(x[:, 0], greedy, span, k=0))
            self.dec_loc.copy_(loc[:, -1] + 1)

    def _decode_body(self, greedy: bool, span: tuple[int, int], kv_len: int, start: int | None = None,
                     k: int | None = None) -> None:
        fed = self.dec_tok[:, None] if not self.hidden else self._pad_tok  # the chosen action, or the padding id
        pre = self._embed(fed, self.dec_loc[:, None], None, None, None)  # (B, 1, D)
        pos = self.dec_pos[:, None] if start is None else None
        x = self._forward_new(pre, pos, kv_len, start=start, frame=self.dec_frame[:, None])
        self.dec_tok.copy_(self._choose(x[:, 0], greedy, span, k=k))
        if start is None:
            self.dec_pos.add_(1)
        self.dec_loc.add_(1)

    def _rebuild(self, rows: list[int], shifts: list[int], lengths: list[int]) -> None:
        """Drop ``shifts[i]`` oldest tokens of env ``rows[i]`` and recompute its cache over the kept ``lengths[i]``.

        With CUDA graphs (and in the static mode that tests them) the recomputed length is rounded up to
        a multiple of 64 and the rebuild is captured once per (rows, length) and replayed: an eager
        rebuild of a large model costs more in kernel launches than in arithmetic. The slots past a
        row's kept length then hold garbage, as they already do for the shorter rows of a batch; no
        query sees a slot past its own position, and the next tokens overwrite them.
        """
        R, M = len(rows), max(lengths)
        if not (self.use_graphs or self._static):
            self._rebuild_body(self._to_device(np.array(rows)), self._to_device(np.array(shifts)), M)
            return
        M = min(self.context, -(-M // 64) * 64)
        self._stage_into("rb_rows", self.rb_rows, np.array(rows, np.int64))
        self._stage_into("rb_shift", self.rb_shift, np.array(shifts, np.int64))
        fn = lambda: self._rebuild_body(self.rb_rows[:R], self.rb_shift[:R], M)  # noqa: E731
        g = self._graph(("rebuild", R, M), fn, restore=(self.hist, self.k_cache, self.v_cache)) if self.use_graphs else None
        if g is not None:
            g.replay()
        else:
            fn()

    def _rebuild_body(self, r: Tensor, shift: Tensor, M: int) -> None:
        """Shift the input embeddings of rows ``r`` left by ``shift`` and recompute their first ``M`` cache slots."""
        idx = (self._keys.unsqueeze(0) + shift.unsqueeze(1)).clamp(max=self.K - 1)  # (R, K)
        hist = torch.gather(self.hist[r], 1, idx.unsqueeze(-1).expand(-1, -1, self.D))  # (R, K, D) shifted left
        self.hist[r] = hist
        ctx = None
        if self._xattn_at:
            tok_frame = torch.gather(self.tok_frame[r], 1, idx)  # (R, K) shifted with the tokens
            self.tok_frame[r] = tok_frame
            ctx = self._context(r, tok_frame[:, :M])
        x = hist[:, :M] + self.model.wpe(self._keys[:M])  # (R, M, D)
        R, D, H = len(r), self.D, self.H
        hd = D // H
        for layer, blk in enumerate(self.model.blocks):
            x = self._xattn(layer, x, ctx)
            h = blk.ln_1(x)
            q, k, v = (t.view(R, M, H, hd).transpose(1, 2) for t in blk.attn.c_attn(h).split(D, dim=2))  # (R, H, M, hd)
            self.k_cache[layer][r, :, :M] = k
            self.v_cache[layer][r, :, :M] = v
            if layer == len(self.model.blocks) - 1:
                break  # nothing reads the last block's outputs: only its keys and values were needed
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + blk.attn.c_proj(y.transpose(1, 2).reshape(R, M, D))
            x = x + blk.mlp(blk.ln_2(x))

    # ------------------------------------------------------------ CUDA graphs
    def _graph(self, key: tuple, fn: Callable[[], None], restore: Sequence[Tensor] = ()) -> Any:
        """The CUDA graph of ``fn`` (captured on first use; ``restore``: buffers the warm-up runs must not change)."""
        g = self._graphs.get(key)
        if g is None:
            saved = [t.clone() for t in restore]
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up (kernel selection, workspace) before capture
                    fn()
                    for t, s in zip(restore, saved):
                        t.copy_(s)
            torch.cuda.current_stream(self.device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            g = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(g, pool=self._pool):
                    fn()
            except RuntimeError as e:  # keep acting, eagerly, and say why
                warnings.warn(f"InferenceSession: CUDA graph capture of {key[0]} failed ({e}); running eagerly", stacklevel=3)
                self.use_graphs, self._static = False, True
                return None
            self._graphs[key] = g
        return g

    # -------------------------------------------------------------- stepping
    def _obs_arrays(self, o: Any, e: int) -> _ObsArrays:
        tok = np.asarray(o.tokens).reshape(-1)
        if tok.size == 0 or tok.dtype.kind not in "iu":
            raise ValueError(f"env {e}: observation tokens must be a non-empty integer array, got {tok.dtype} of shape {tok.shape}")
        if tok.min() < 0 or tok.max() >= self.vocab_size:
            raise ValueError(f"env {e}: observation token ids must be in [0, {self.vocab_size}), got [{tok.min()}, {tok.max()}]")
        patches = getattr(o, "patches", None)
        ppos = getattr(o, "patch_pos", None)
        n_slots = int((tok == self.patch_id).sum()) if self.patch_id is not None else 0
        n_patches = 0 if patches is None else len(patches)
        if n_patches:
            patches = np.asarray(patches, dtype=np.float32).reshape(n_patches, 3, PATCH_SIZE, PATCH_SIZE)
            ppos = np.asarray(ppos).reshape(n_patches, 2)
        if self.slots is None and n_slots != n_patches:
            raise ValueError(f"env {e}: {n_slots} patch tokens but {n_patches} patches were given")
        if self.slots is not None:
            n_images = len(image_starts(ppos)) if n_patches else 0
            if n_slots != n_images * self.slots:
                raise ValueError(f"env {e}: {n_slots} image slots but {n_images} image(s) of {self.slots} slots each "
                                 f"were given (ModelConfig.slots_per_image)")
        return tok, patches, ppos

    def _evict(self, st: _EnvState, need: int) -> tuple[int, int] | None:
        """Drop oldest timesteps so ``need`` more tokens fit; ``(shift, new_fill)`` when the cache must be rebuilt."""
        if st.window_tokens + need <= self.context:
            return None
        target = max(need, int(self.config.evict_keep * self.context))
        dropped = 0
        while st.steps and st.window_tokens - dropped + need > target:
            dropped += st.steps.popleft()
            if st.frames:
                st.frames.popleft()
            self.stats["evicted_timesteps"] += 1
        if not st.steps:
            st.fill, st.pending = 0, -1
            return None
        new_fill = st.fill - dropped
        st.fill = new_fill
        return dropped, new_fill

    @torch.inference_mode()
    def step(
        self,
        observations: Sequence[Any],
        action_ranges: np.ndarray,
        env_ids: Sequence[int] | None = None,
        temperature: float = 0.0,
        return_logits: bool = False,
        expected_dims: Sequence[bool] | np.ndarray | None = None,
    ) -> StepResult:
        """Feed one timestep's observation per environment and decode its action tokens.

        Args:
            observations: one :class:`ObsTokens` (or compatible object) per stepped environment.
            action_ranges: int (A, 2): valid ``[lo, hi)`` ids of each action token
                (``Tokenizer.action_token_ranges(spec)``); the same for all environments.
            env_ids: the environments these observations belong to (default all, in order).
            temperature: 0 for greedy decoding, > 0 to sample from ``softmax(logits / temperature)``.
            return_logits: also return the masked logits (costs a device-to-host copy).
            expected_dims: bool (A,): with greedy decoding, these dimensions take the expected id under the
                masked softmax (rounded to the nearest id) instead of the most likely one. For ordinal ids
                (continuous bins): an uncertain, spread-out prediction gives its mean, not one extreme mode.

        Returns:
            The :class:`StepResult`.

        Raises:
            ValueError: wrong number of observations, invalid token ids or ranges,
                patches that do not match the patch tokens, or a timestep longer than the context.
        """
        ids, ranges, expect, arrays = self._checked_step_inputs(observations, action_ranges, env_ids, temperature,
                                                                expected_dims)
        A = len(ranges)
        rebuilt, counts = self._make_room(arrays, ids, A)
        frames = self._encode_images(arrays, ids)  # the resampler's latents, once per image

        # stage the prefill inputs, the logit masks and (when sampling) the noise on the device
        prefill = self._prefill_inputs(arrays, ids, counts, frames)
        mask = self._set_action_masks(ranges, expect)
        self._stage(prefill, mask)
        greedy = temperature == 0
        if not greedy:
            self._draw_noise(temperature)

        span = (int(ranges[:, 0].min()), int(ranges[:, 1].max()))  # the LM-head rows any action id needs
        self._span = span
        self._prefill_and_decode(ids, counts, A, greedy, span, return_logits)
        action_tokens = self.out_tok[:, :A].cpu().numpy()[ids]  # the one host synchronisation

        self._advance_windows(arrays, ids, counts, action_tokens, frames)
        self.stats["steps"] += 1
        logits = self._masked_logits(ids, A, span) if return_logits else None
        return StepResult(action_tokens.astype(np.int64), logits, rebuilt)

    def _checked_step_inputs(
        self,
        observations: Sequence[Any],
        action_ranges: np.ndarray,
        env_ids: Sequence[int] | None,
        temperature: float,
        expected_dims: Sequence[bool] | np.ndarray | None,
    ) -> tuple[list[int], np.ndarray, np.ndarray, list[_ObsArrays]]:
        """:meth:`step`'s arguments, checked: the stepped environments, the int64 (A, 2) ranges, the bool (A,)
        expected-id flags and each observation's arrays (see :meth:`_obs_arrays`)."""
        ids = self._env_list(env_ids)
        if len(observations) != len(ids):
            raise ValueError(f"Expected {len(ids)} observations (one per stepped environment), got {len(observations)}")
        ranges = np.asarray(action_ranges, dtype=np.int64)
        if ranges.ndim != 2 or ranges.shape[1] != 2 or len(ranges) < 1:
            raise ValueError(f"action_ranges must have shape (A, 2) with A >= 1, got {ranges.shape}")
        if (ranges[:, 0] < 0).any() or (ranges[:, 1] > self.vocab_size).any() or (ranges[:, 0] >= ranges[:, 1]).any():
            raise ValueError(f"action_ranges must be non-empty [lo, hi) ranges inside [0, {self.vocab_size}), got {ranges.tolist()}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature!r}")
        A = len(ranges)
        expect = np.zeros(A, bool) if expected_dims is None else np.asarray(expected_dims, dtype=bool).reshape(-1)
        if len(expect) != A:
            raise ValueError(f"expected_dims must have one flag per action dimension ({A}), got {len(expect)}")
        arrays = [self._obs_arrays(o, e) for o, e in zip(observations, ids)]
        for (tok, _, _), e in zip(arrays, ids):
            L = len(tok)
            if L + A - 1 > self.context:
                raise ValueError(f"env {e}: one timestep needs {L + A - 1} tokens of context but the model has {self.context}")
            if L + A > self.cfg.local_positions:
                raise ValueError(f"env {e}: a timestep of {L + A} tokens exceeds the model's {self.cfg.local_positions} local positions")
        return ids, ranges, expect, arrays

    def _make_room(self, arrays: list[_ObsArrays], ids: list[int], A: int) -> tuple[list[int], list[int]]:
        """Make each stepped window hold the new timestep: evict on the host, grow the static buffers, rebuild.

        Returns:
            The environments whose window was shortened and cache rebuilt, and each stepped environment's
            prefill token count (its observation, led by the previous action's last token when one is pending,
            and followed by the ``A - 1`` fed action positions with hidden action inputs).
        """
        rebuild_rows, shifts, lengths = [], [], []
        for (tok, _, _), e in zip(arrays, ids):
            r = self._evict(self._envs[e], len(tok) + A - 1)
            if r is not None:
                rebuild_rows.append(e), shifts.append(r[0]), lengths.append(r[1])
        fed = A - 1 if self.hidden else 0  # the hidden prefill carries the fed action positions too
        counts = [len(tok) + (self._envs[e].pending >= 0) + fed for (tok, _, _), e in zip(arrays, ids)]
        n_patch = max(((0 if p is None else len(p)) if self.slots is None else int((tok == self.patch_id).sum()))
                      for tok, p, _ in arrays)  # image slots
        C, P, A_cap = self.C, self.P, self.A_cap
        if max(counts) > C or n_patch > P or A + 3 > A_cap:
            self._allocate(max(C, -(-max(counts) // 16) * 16), max(P, n_patch), max(A_cap, A + 3))
        if rebuild_rows:
            self._rebuild(rebuild_rows, shifts, lengths)
            self.stats["rebuilds"] += len(rebuild_rows)
            self.stats["rebuilt_tokens"] += sum(lengths)
        return rebuild_rows, counts

    def _image_vectors(self, arrays: list[_ObsArrays]) -> list[Tensor | None]:
        """Each observation's image vectors (``GatoModel.embed_images``: its resampler latents, (r, D)), or None."""
        has = [a[1] is not None and len(a[1]) > 0 for a in arrays]
        out: list[Tensor | None] = [None] * len(arrays)
        if not any(has):
            return out
        patches = self._to_device(np.concatenate([a[1] for a, h in zip(arrays, has) if h])).to(self.dtype)
        ppos = self._to_device(np.concatenate([a[2] for a, h in zip(arrays, has) if h]).astype(np.int64))
        vec = self.model.embed_images(patches, ppos)  # (sum r, D)
        counts = [len(image_starts(a[2])) * self.cfg.resampler_latents for a, h in zip(arrays, has) if h]
        parts = iter(vec.split(counts))
        return [next(parts) if h else None for h in has]

    def _encode_images(self, arrays: list[_ObsArrays], ids: list[int]) -> dict[int, int]:
        """The resampler's latents of the step's images, computed once: into the slot buffer (early fusion) or a
        new frame slot per stepped environment (cross-attention); returns each environment's frame slot (-1: none)."""
        frames = dict.fromkeys(ids, -1)
        if not self.slots and not self._xattn_at:
            return frames
        for vec, e in zip(self._image_vectors(arrays), ids):
            if self.slots:
                if vec is not None:
                    self.in_slots[e * self.P : e * self.P + len(vec)] = vec
                continue
            st = self._envs[e]
            frames[e] = self._new_frame(st, e, vec)
        return frames

    def _new_frame(self, st: _EnvState, e: int, vec: Tensor | None) -> int:
        """Give environment ``e``'s next timestep a frame slot holding latents ``vec`` (M, D); -1 without images."""
        st.frames_seen += 1
        if vec is None:
            return -1
        self._ensure_frames(len(vec))
        f = (st.frames_seen - 1) % self.frames.shape[1]
        self.frames[e, f].zero_()
        self.frames[e, f, : len(vec)] = vec
        self.frames_valid[e, f] = torch.arange(self.frames.shape[2], device=self.device) < len(vec)
        return f

    def _prefill_inputs(self, arrays: list[_ObsArrays], ids: list[int], counts: list[int],
                        frames: dict[int, int] | None = None) -> _PrefillInputs:
        """The host arrays of the prefill, one row per environment of the session.

        A stepped row holds the previous action's last token (when one is pending), then the observation
        tokens, then (hidden action inputs) the padding id at the fed action positions; its patches go to its
        ``P`` patch slots. Rows not stepped keep one token written past
        their fill, which no later query sees.
        """
        B, C, P = self.B, self.C, self.P
        tok_in = np.zeros((B, C), np.int64)
        loc_in = np.zeros((B, C), np.int64)
        pidx_in = np.full((B, C), -1, np.int64)
        fill_in = np.array([st.fill for st in self._envs], np.int64)  # inactive rows write only past their fill
        cnt_in = np.ones(B, np.int64)
        patches_in = np.zeros((B * P, 3, PATCH_SIZE, PATCH_SIZE), np.float32) if P and self.slots is None else None
        ppos_in = np.zeros((B * P, 2), np.int64)
        frame_in = np.full((B, C), -1, np.int64)
        for (tok, patches, ppos), e, c in zip(arrays, ids, counts):
            st, L = self._envs[e], len(tok)
            j = int(st.pending >= 0)  # 1 when the previous action's last token leads
            if frames is not None:
                frame_in[e, :c] = frames[e]
            if j:
                tok_in[e, 0], loc_in[e, 0] = self._fed(st.pending), st.pending_local
                frame_in[e, 0] = st.frames[-1] if st.frames else -1  # the previous timestep's token
            tok_in[e, j:j + L] = tok
            tok_in[e, j + L:c] = self.cfg.pad_id if self.hidden else 0  # the fed action positions (hidden only)
            loc_in[e, j:c] = np.arange(c - j)
            cnt_in[e] = c
            if patches is not None and len(patches) and self.slots != 0:
                slots = np.flatnonzero(tok == self.patch_id) + j
                pidx_in[e, slots] = e * P + np.arange(len(slots))
                if patches_in is not None:
                    patches_in[e * P : e * P + len(patches)] = patches
                    ppos_in[e * P : e * P + len(patches)] = ppos
        return _PrefillInputs(tok_in, loc_in, pidx_in, fill_in, cnt_in, patches_in, ppos_in, frame_in)

    def _set_action_masks(self, ranges: np.ndarray, expect: np.ndarray) -> np.ndarray | None:
        """Set which action dimensions take their expected id; the new additive logit masks, float32 (A_cap, V)
        (0 on each dimension's valid ids, -inf elsewhere), or ``None`` when neither changed since the last step."""
        key = ranges.tobytes() + expect.tobytes()
        if key == self._mask_key:
            return None
        A = len(ranges)
        mask = np.full((self.A_cap, self.vocab_size), -np.inf, np.float32)
        for k, (lo, hi) in enumerate(np.concatenate([ranges, np.repeat(ranges[-1:], self.A_cap - A, axis=0)])):
            mask[k, lo:hi] = 0.0
        self.in_expect.zero_()
        self.in_expect[:A] = torch.from_numpy(expect).to(self.device)
        self._expect = bool(expect.any())
        self._mask_key = key
        return mask

    def _draw_noise(self, temperature: float) -> None:
        """Draw the Gumbel noise of a sampled step into ``noise`` (the temperature into ``in_temp``)."""
        self.in_temp.fill_(float(temperature))
        u = torch.rand(self.noise.shape, generator=self.generator, device=self.device).clamp_(1e-20, 1 - 1e-7)
        self.noise.copy_(-torch.log(-torch.log(u)))

    def _prefill_and_decode(self, ids: list[int], counts: list[int], A: int, greedy: bool, span: tuple[int, int],
                            return_logits: bool) -> None:
        """Prefill, then ``A - 1`` decode steps (none with hidden action inputs, whose prefill gives all ``A``): the
        action tokens go to ``out_tok``, their logits to ``out_logits``.

        Three ways run the same bodies: replayed CUDA graphs; their bodies eagerly (``_static``: static shapes
        and device-side decode state, what a failed capture falls back to, and how tests check the graph code
        without a GPU); or eagerly over only the filled part of the cache (the CPU).
        """
        n_out = A if self.hidden else 1
        prefill = None
        if self.use_graphs:
            prefill = self._graph(("prefill", self.C, self.P, greedy, self._expect, span, n_out),
                                  lambda: self._prefill_body(greedy, span, self.K, n_out=n_out))
        if prefill is not None:
            self._replay_graphs(prefill, A - n_out, greedy, span)
        elif self._static:
            self._prefill_body(greedy, span, self.K, n_out=n_out)
            for _ in range(A - n_out):
                self._decode_body(greedy, span, self.K)
        else:
            self._decode_eagerly(ids, counts, A, greedy, span, return_logits)

    def _replay_graphs(self, prefill: Any, n_decode: int, greedy: bool, span: tuple[int, int]) -> None:
        """Replay the prefill graph, then the decode graph ``n_decode`` times (once per remaining action dimension)."""
        prefill.replay()
        decode = None
        if n_decode > 0:
            decode = self._graph(("decode", greedy, self._expect, span),
                                 lambda: self._decode_body(greedy, span, self.K),
                                 restore=(self.dec_tok, self.dec_pos, self.dec_loc, self.dec_k))
        for _ in range(n_decode):
            if decode is not None:
                decode.replay()
            else:  # the decode capture failed: same body, eagerly
                self._decode_body(greedy, span, self.K)

    def _decode_eagerly(self, ids: list[int], counts: list[int], A: int, greedy: bool, span: tuple[int, int],
                        return_logits: bool) -> None:
        """The eager prefill and decodes, attending only to the filled part of the cache (plain slices in lockstep)."""
        fills = [self._envs[e].fill for e in ids]
        ends = [f + c for f, c in zip(fills, counts)]
        self._record = return_logits
        n_out = A if self.hidden else 1
        if len(ids) == self.B and len(set(fills)) == 1 and len(set(counts)) == 1:  # lockstep: plain slices
            f, c = fills[0], counts[0]
            self._prefill_body(greedy, span, f + c, width=c, start=f, n_out=n_out)
            for k in range(n_out, A):
                self._decode_body(greedy, span, f + c + k, start=f + c + k - 1, k=k)
        else:
            self._prefill_body(greedy, span, max(ends), n_out=n_out)
            for k in range(n_out, A):
                self._decode_body(greedy, span, max(ends) + k)

    def _advance_windows(self, arrays: list[_ObsArrays], ids: list[int], counts: list[int],
                         action_tokens: np.ndarray, frames: dict[int, int]) -> None:
        """Add the stepped timesteps to their windows; the last action token of each stays pending (chosen, not fed)."""
        A = action_tokens.shape[1]
        decoded = 0 if self.hidden else A - 1  # tokens fed by decode steps (the hidden prefill fed them all)
        for (tok, _, _), e, c, a in zip(arrays, ids, counts, action_tokens):
            st = self._envs[e]
            st.steps.append(len(tok) + A)
            st.frames.append(frames[e])
            st.fill += c + decoded
            st.pending, st.pending_local = int(a[-1]), len(tok) + A - 1

    def _masked_logits(self, ids: list[int], A: int, span: tuple[int, int]) -> Tensor:
        """float32 (n, A, V) on the host: the recorded logits of the stepped rows, -inf outside the action span."""
        logits = torch.full((len(ids), A, self.vocab_size), float("-inf"))
        logits[:, :, span[0] : span[1]] = self.out_logits[ids, :A, span[0] : span[1]].cpu()
        return logits

    def _stage(self, prefill: _PrefillInputs, mask: np.ndarray | None) -> None:
        """Copy the step's inputs into the static device buffers (asynchronous from pinned memory on CUDA)."""
        pairs = [("tok", self.in_tok, prefill.tok), ("loc", self.in_loc, prefill.loc),
                 ("pidx", self.in_pidx, prefill.pidx), ("fill", self.in_fill, prefill.fill),
                 ("cnt", self.in_cnt, prefill.cnt)]
        if self._xattn_at:
            pairs.append(("frame", self.in_frame, prefill.frame))
        if mask is not None:
            pairs.append(("mask", self.in_mask, mask))
        if prefill.patches is not None:
            pairs += [("patches", self.in_patches, prefill.patches), ("ppos", self.in_ppos, prefill.ppos)]
        for name, dst, src in pairs:
            self._stage_into(name, dst, src)

    def _stage_into(self, name: str, dst: Tensor, src: np.ndarray) -> None:
        """Copy ``src`` into the leading rows of the static device buffer ``dst`` (through pinned ``_host[name]`` on CUDA)."""
        src_t = torch.from_numpy(src)
        if self.device.type == "cuda":
            stage = self._host[name][: len(src_t)]
            stage.copy_(src_t)
            dst[: len(src_t)].copy_(stage, non_blocking=True)
        else:
            dst[: len(src_t)].copy_(src_t)

    @torch.inference_mode()
    def append(self, timesteps: Sequence[Sequence[Any]], env_ids: Sequence[int] | None = None) -> None:
        """Feed whole past timesteps (observation and action tokens) without decoding: a prompt or a replayed history.

        Args:
            timesteps: per stepped environment, a sequence of timesteps, each an
                :class:`ObsTokens` whose ``tokens`` hold the observation, separator and action tokens.
            env_ids: the environments (default all, in order).

        Raises:
            ValueError: the window cannot hold them (this method does not evict).
        """
        ids = self._env_list(env_ids)
        if len(timesteps) != len(ids):
            raise ValueError(f"Expected {len(ids)} timestep lists (one per environment), got {len(timesteps)}")
        for seq, e in zip(timesteps, ids):
            st = self._envs[e]
            arrays = [self._obs_arrays(t, e) for t in seq]
            if not arrays:
                continue
            tok = np.concatenate(([self._fed(st.pending)] if st.pending >= 0 else []) + [a[0] for a in arrays]).astype(np.int64)
            loc = np.concatenate(([st.pending_local] if st.pending >= 0 else []) + [np.arange(len(a[0])) for a in arrays])
            if st.fill + len(tok) > self.context:
                raise ValueError(f"env {e}: appending {len(tok)} tokens to a window of {st.fill} exceeds the context {self.context}")
            if max(len(a[0]) for a in arrays) > self.cfg.local_positions:
                raise ValueError(f"env {e}: a timestep exceeds the model's {self.cfg.local_positions} local positions")
            patches = [a[1] for a in arrays if a[1] is not None and len(a[1])]
            pt = pp = pidx = slot_emb = frame = None
            if patches and self.slots != 0:
                pt = self._to_device(np.concatenate(patches)).to(self.dtype)
                pp = self._to_device(np.concatenate([a[2] for a in arrays if a[1] is not None and len(a[1])]).astype(np.int64))
                pidx = self._to_device(patch_slots(tok, self.patch_id))[None]
                if self.slots:
                    slot_emb = self.model.embed_images(pt, pp)  # (I * N, D) the resampler's latents
            new_frames = [-1] * len(arrays)
            if self._xattn_at:  # each timestep a frame; the pending token is the previous timestep's
                new_frames = [self._new_frame(st, e, vec) for vec in self._image_vectors(arrays)]
                lead = [st.frames[-1] if st.frames else -1] if st.pending >= 0 else []
                frame = self._to_device(np.concatenate(
                    [np.array(lead, np.int64)] + [np.full(len(a[0]), f, np.int64) for a, f in zip(arrays, new_frames)]))[None]
            n = len(tok)
            pos = torch.arange(st.fill, st.fill + n, device=self.device)[None]
            t_loc = self._to_device(loc.astype(np.int64))[None]
            t_tok = self.model.input_tokens(self._to_device(tok)[None], t_loc)  # the timesteps' actions, hidden or not
            self._forward_new(self._embed(t_tok, t_loc, pidx, pt, pp, slot_emb), pos, st.fill + n, env=e, kv_only=True,
                              frame=frame)
            st.steps.extend(len(a[0]) for a in arrays)
            st.frames.extend(new_frames)
            st.fill += n
            st.pending = -1

    def _to_device(self, a: np.ndarray) -> Tensor:
        """A host array on the session's device without blocking the host (pinned, asynchronous on CUDA)."""
        t = torch.from_numpy(np.ascontiguousarray(a))
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def weight_bytes_per_token(self, span: tuple[int, int] | None = None) -> int:
        """Bytes of weights one forward pass reads for a token: the blocks, the final norm and the LM-head rows used.

        Args:
            span: the ``[lo, hi)`` ids whose logits are computed (default: the last step's action span,
                or the whole vocabulary before any step).
        """
        m = self.model
        lo, hi = span or getattr(self, "_span", (0, self.vocab_size))
        n = sum(p.numel() * p.element_size() for p in m.blocks.parameters())
        n += sum(p.numel() * p.element_size() for p in m.ln_f.parameters())
        return n + (hi - lo) * self._head_w.shape[1] * self._head_w.element_size()
