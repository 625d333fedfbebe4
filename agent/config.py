"""Model configuration and the named presets.

A :class:`ModelConfig` is everything needed to build a :class:`~omnipolicy.agent.model.GatoModel`
except the vocabulary size, which comes from the tokenizer's
:class:`~omnipolicy.tokenizers.VocabLayout` (``config.with_vocab(layout.vocab_size)``).
Presets live in one table, ``PRESETS``; the paper's three sizes use Gato's layer, width, head and feed-forward counts
(arXiv 2205.06175, table 1) with context 1024. The CPU presets are small
enough to train usefully on two cores in minutes.

>>> cfg = PRESETS["cpu-tiny"].with_vocab(3051)
>>> cfg.num_params() > 0, cfg.head_dim
(True, 32)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from omnipolicy.tokenizers.chunking import ActionChunking

PATCH_SIZE = 16
"""Side of an image patch in pixels (fixed by the tokenizer)."""
ACTION_INPUTS = ("tokens", "hidden")
"""What the model reads at action positions (see ``ModelConfig.action_inputs``)."""
IMAGE_ENCODERS = ("patches", "resampler", "vq")
"""How an image becomes model inputs (see ``ModelConfig.image_encoder``)."""
FUSIONS = ("early", "cross-attention")
"""Where the images meet the token stream (see ``ModelConfig.fusion``)."""
FFN_KINDS = ("dense", "moe")
"""Feed-forward of the blocks (see ``ModelConfig.ffn``)."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder-only transformer and its embeddings.

    Attributes:
        n_layer: number of transformer blocks.
        n_embd: model width D.
        n_head: attention heads (``n_embd`` must be divisible by it).
        d_ff: hidden width of the MLP.
        context: maximum sequence length S (learned window positions).
        local_positions: size of the learned local-position table (positions
            within one timestep, ``0 .. L-1``; a timestep may hold at most this many tokens).
        pos_bins: size of the patch row and column position tables (Gato: 128);
            larger patch indices are clamped to the last entry.
        patch_channels: channels of the ResNet-v2 patch embedding block.
        patch_stride: stride of the stem convolution on a 16x16 patch (1, 2, 4, 8 or 16).
        dropout: dropout probability on embeddings, attention output and MLP output.
        bias: biases in linear layers and norms (GPT-2 style).
        tie_embeddings: share the token embedding with the LM head.
        value_features: Fourier features of a continuous bin's value added
            (through a learned projection) to its table embedding, so that
            neighbouring bins start out similar and rarely seen bins are not
            blank; 0 disables (plain Gato).
        action_inputs: what the model reads at an action token's position: ``"tokens"`` (Gato: the action
            token itself, so later predictions see earlier actions) or ``"hidden"`` (the padding token: every
            action is predicted from the observations, local position and earlier hidden slots alone). Small
            demonstration sets of smooth experts teach a model that reads past actions to copy the last one
            (the "copycat problem" of behaviour cloning with history, Wen et al. 2020, arXiv 2010.14876):
            near-perfect on the data, stuck on its own first mistake when it acts. ``"hidden"`` removes the shortcut.
        action_chunk: ``k``, the actions a timestep of a continuous-action task holds and the model predicts at
            once (ACT's action chunking; :mod:`omnipolicy.tokenizers.chunking`); 1: one action (Gato). Tasks with
            a discrete action keep one. With ``action_inputs="hidden"`` a chunk is decoded in one forward pass.
        chunk_execution: how chunks are executed, which also sets how training episodes are tokenized:
            ``"ensemble"`` (query every tick, temporal ensembling of the overlapping chunks) or ``"receding"``
            (query every k-th tick, execute the chunk open loop; the model sees every k-th observation).
        image_encoder: how an image becomes model inputs: ``"patches"`` (Gato: every 16x16 patch one token, embedded
            by the ResNet block plus row/column embeddings), ``"resampler"`` (a Perceiver Resampler,
            :mod:`~omnipolicy.agent.resampler`: the image's patch embeddings become ``resampler_latents`` learned
            latents, so an 84x84 frame takes N slots instead of 36) or ``"vq"`` (each patch is a discrete code of a
            trained image tokenizer, between ``<image>`` and ``</image>`` markers, looked up in the token table like
            any other id; the model then has no patch embedding and its vocabulary holds the codes).
        resampler_latents: ``N``, latents per image of the resampler.
        resampler_depth: attention + feed-forward layers of the resampler.
        fusion: where the images meet the token stream: ``"early"`` (their slots are in the sequence: Gato, Gemini)
            or ``"cross-attention"`` (Flamingo, :mod:`~omnipolicy.agent.cross_attention`: the images leave the
            sequence; gated cross-attention blocks let each token attend to the resampler latents of its
            timestep's images; the gates start at 0, so the untrained blocks change nothing). Needs the resampler.
        cross_attn_every: a gated cross-attention block before every this many transformer blocks (1: every block;
            Flamingo-9B: 4), starting with the first.
        film: condition each image patch on the instruction before the transformer sees it (FiLM, Perez et al.
            2018, as RT-1 conditions its image encoder on the instruction): the patch's embedding ``e`` becomes
            ``e * (1 + gamma) + beta``, where ``(gamma, beta)`` is a learned linear map of the mean table embedding of
            the text tokens before it in its timestep (the instruction); the map starts at zero, so an untrained
            FiLM changes nothing. A patch can then say "I am what the instruction names" in one vector, where
            without it the choice among the objects is left to attention. Needs ``image_encoder="patches"`` and early
            fusion.
        keypoints: ``K`` spatial-softmax keypoints per image (Levine et al. 2016, robomimic's visuomotor encoders;
            0: none): ``K`` learned 1x1 maps of the patch block's features, each a softmax over the whole image's
            cells, give ``K`` expected (x, y) positions in the image (in patch widths); a learned linear map of
            those ``2K`` numbers (zero at the start, so untrained keypoints change nothing) is added to every patch
            embedding of the image. Where a feature is becomes a value in every slot of its image, as the object's
            pose is in its token on the located tasks. Needs a patch embedding (``image_encoder`` patches or
            resampler).
        keypoint_film: condition the keypoint maps on the instruction (FiLM of the patch block's features, channel
            by channel, by a learned map of the timestep's mean text embedding, zero at the start), so that a
            keypoint can be "where the named object is" rather than where one fixed feature is. Needs
            ``keypoints`` > 0, ``image_encoder="patches"`` and early fusion.
        ffn: feed-forward of every block: ``"dense"`` (one MLP of width ``d_ff``) or ``"moe"`` (a dropless top-k
            mixture of ``moe_experts`` MLPs of that shape, :mod:`omnipolicy.agent.moe`).
        moe_experts: experts per MoE layer ``E``.
        moe_top_k: experts each token is sent to ``k`` (``1 <= k <= E``).
        moe_aux_coef: weight of the load-balancing loss ``E * sum_i f_i P_i`` (mean over layers) in training.
        moe_z_coef: weight of the router z-loss (mean over layers) in training.
        vocab_size: size of the embedding table and logits; ``None`` until
            bound to a tokenizer layout with :meth:`with_layout` (or :meth:`with_vocab`).
        continuous_ids: ``[start, stop)`` of the continuous-bin ids, bound by :meth:`with_layout`.
        separator_id, pad_id: the layout's separator and padding ids, bound by :meth:`with_layout`
            (``action_inputs="hidden"`` needs them).
    """

    n_layer: int
    n_embd: int
    n_head: int
    d_ff: int
    context: int = 1024
    local_positions: int = 512
    pos_bins: int = 128
    patch_channels: int = 64
    patch_stride: int = 2
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    value_features: int = 16
    action_inputs: str = "tokens"
    action_chunk: int = 1
    chunk_execution: str = "ensemble"
    image_encoder: str = "patches"
    resampler_latents: int = 8
    resampler_depth: int = 2
    fusion: str = "early"
    cross_attn_every: int = 1
    film: bool = False
    keypoints: int = 0
    keypoint_film: bool = False
    ffn: str = "dense"
    moe_experts: int = 8
    moe_top_k: int = 2
    moe_aux_coef: float = 0.01
    moe_z_coef: float = 0.001
    vocab_size: int | None = None
    continuous_ids: tuple[int, int] | None = None
    separator_id: int | None = None
    pad_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "d_ff", "context", "local_positions", "pos_bins", "patch_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"ModelConfig: n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.patch_stride not in (1, 2, 4, 8, 16):
            raise ValueError(f"ModelConfig.patch_stride must be one of (1, 2, 4, 8, 16), got {self.patch_stride!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.vocab_size is not None and (not isinstance(self.vocab_size, int) or self.vocab_size <= 0):
            raise ValueError(f"ModelConfig.vocab_size must be a positive int or None, got {self.vocab_size!r}")
        if self.value_features < 0 or self.value_features % 2:
            raise ValueError(f"ModelConfig.value_features must be an even int >= 0, got {self.value_features!r}")
        if self.action_inputs not in ACTION_INPUTS:
            raise ValueError(f"ModelConfig.action_inputs must be one of {ACTION_INPUTS}, got {self.action_inputs!r}")
        self._check_vision()
        try:
            self.chunking
        except ValueError as e:
            raise ValueError(f"ModelConfig: {e}") from None
        self._check_moe()
        if self.continuous_ids is not None:
            lo, hi = (int(v) for v in self.continuous_ids)
            if not 0 <= lo < hi <= (self.vocab_size or hi):
                raise ValueError(f"ModelConfig.continuous_ids must be a range inside the vocabulary, got {self.continuous_ids!r}")
            object.__setattr__(self, "continuous_ids", (lo, hi))

    def _check_vision(self) -> None:
        """Validate the image encoder and fusion options (see the class docstring)."""
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"ModelConfig.image_encoder must be one of {IMAGE_ENCODERS}, got {self.image_encoder!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"ModelConfig.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        for name in ("resampler_latents", "resampler_depth", "cross_attn_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.film, bool):
            raise ValueError(f"ModelConfig.film must be a bool, got {self.film!r}")
        if self.film and (self.image_encoder != "patches" or self.fusion != "early"):
            raise ValueError(f"ModelConfig.film conditions the patch embeddings in the sequence: it needs "
                             f"image_encoder='patches' and fusion='early', got {self.image_encoder!r} and {self.fusion!r}")
        if isinstance(self.keypoints, bool) or not isinstance(self.keypoints, int) or self.keypoints < 0:
            raise ValueError(f"ModelConfig.keypoints must be an int >= 0, got {self.keypoints!r}")
        if self.keypoints and not self.embeds_patches:
            raise ValueError(f"ModelConfig.keypoints reads the patch block's features: it needs image_encoder 'patches' "
                             f"or 'resampler', got {self.image_encoder!r}")
        if not isinstance(self.keypoint_film, bool):
            raise ValueError(f"ModelConfig.keypoint_film must be a bool, got {self.keypoint_film!r}")
        if self.keypoint_film and (not self.keypoints or self.image_encoder != "patches" or self.fusion != "early"):
            raise ValueError(f"ModelConfig.keypoint_film conditions the keypoint maps of the patches in the sequence: it "
                             f"needs keypoints > 0, image_encoder='patches' and fusion='early', got {self.keypoints}, "
                             f"{self.image_encoder!r} and {self.fusion!r}")
        if self.fusion == "cross-attention" and self.image_encoder != "resampler":
            why = " (vq images are codes in the token sequence: early fusion only)" if self.image_encoder == "vq" else ""
            raise ValueError(f"ModelConfig.fusion='cross-attention' attends to the resampler's latents: it needs "
                             f"image_encoder='resampler', got image_encoder={self.image_encoder!r}{why}")

    @property
    def slots_per_image(self) -> int | None:
        """Sequence slots an image takes: ``None`` for one per patch, ``resampler_latents``, or 0 when the images
        leave the sequence (cross-attention). The tokenizer lays out timesteps with it."""
        if self.fusion == "cross-attention":
            return 0
        if self.image_encoder == "resampler":
            return self.resampler_latents
        return None

    @property
    def cross_attn_layers(self) -> tuple[int, ...]:
        """The transformer blocks preceded by a gated cross-attention block (none with early fusion)."""
        if self.fusion != "cross-attention":
            return ()
        return tuple(range(0, self.n_layer, self.cross_attn_every))

    def _check_moe(self) -> None:
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"ModelConfig.ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        if not isinstance(self.moe_experts, int) or self.moe_experts < 1:
            raise ValueError(f"ModelConfig.moe_experts must be an int >= 1, got {self.moe_experts!r}")
        if not isinstance(self.moe_top_k, int) or not 1 <= self.moe_top_k <= self.moe_experts:
            raise ValueError(f"ModelConfig.moe_top_k must be an int in [1, moe_experts={self.moe_experts}], "
                             f"got {self.moe_top_k!r}")
        for name in ("moe_aux_coef", "moe_z_coef"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"ModelConfig.{name} must be a float >= 0, got {getattr(self, name)!r}")

    @property
    def chunking(self) -> ActionChunking:
        """``action_chunk`` and ``chunk_execution`` as the tokenizer takes them."""
        return ActionChunking(self.action_chunk, self.chunk_execution)

    @property
    def embeds_patches(self) -> bool:
        """Whether the model has the patch embedding (every image encoder but ``"vq"``, whose images are codes)."""
        return self.image_encoder != "vq"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def patch_groups(self) -> int:
        """GroupNorm groups in the patch block: 32 as in Gato, fewer when there are fewer channels."""
        g = min(32, self.patch_channels)
        while self.patch_channels % g:
            g -= 1
        return g

    @property
    def patch_grid(self) -> int:
        """Side of the feature map after the stem convolution."""
        return PATCH_SIZE // self.patch_stride

    def with_vocab(self, vocab_size: int) -> "ModelConfig":
        """This config bound to a vocabulary size only (no value features without :meth:`with_layout`)."""
        return dataclasses.replace(self, vocab_size=int(vocab_size))

    def with_layout(self, layout) -> "ModelConfig":
        """This config bound to a tokenizer's :class:`~omnipolicy.tokenizers.VocabLayout` (a new object)."""
        lo = layout.continuous_offset
        return dataclasses.replace(self, vocab_size=int(layout.vocab_size), continuous_ids=(lo, lo + layout.num_bins),
                                   separator_id=int(layout.separator_id), pad_id=int(layout.pad_id))

    def num_params(self, vocab_size: int | None = None) -> int:
        """Exact number of parameters of the model this config builds.

        Args:
            vocab_size: overrides ``self.vocab_size`` (needed when it is ``None``).

        Raises:
            ValueError: no vocabulary size is known.
        """
        v = self.vocab_size if vocab_size is None else vocab_size
        if v is None:
            raise ValueError("ModelConfig.num_params needs a vocab_size (bind one with with_vocab or pass it)")
        d, c, b = self.n_embd, self.patch_channels, int(self.bias)
        norm = 2 * d if self.bias else d
        embed = v * d + self.context * d + self.local_positions * d
        patch = 0 if not self.embeds_patches else (
            2 * self.pos_bins * d  # row and column tables
            + 3 * c * self.patch_stride**2 + c  # stem conv
            + 2 * (2 * c + 9 * c * c) + c  # two (GroupNorm, conv3x3) pairs; the first conv has no bias
            + c * self.patch_grid**2 * d + d  # projection to the model width
        )
        block = norm + (d * 3 * d + 3 * d * b) + (d * d + d * b) + norm + self._ffn_params(self.moe_experts)
        head = 0 if self.tie_embeddings else v * d
        values = self.value_features * d if self.continuous_ids is not None else 0
        vision = 0
        if self.image_encoder == "resampler":  # latents; per layer 2 norms, q, kv, out, a norm and the x4 feed-forward
            ff = norm + 2 * 4 * d * d
            vision = self.resampler_latents * d + self.resampler_depth * (2 * norm + 4 * d * d + ff) + norm
        # gated cross-attention blocks: a norm, q, kv, out, the x4 feed-forward and two scalar gates each
        vision += len(self.cross_attn_layers) * (norm + 4 * d * d + norm + 2 * 4 * d * d + 2)
        vision += (d * 2 * d + 2 * d) if self.film else 0  # the FiLM map: weight and bias
        k = self.keypoints
        vision += (c * k + k + 2 * k * d + d) if k else 0  # the keypoint maps (1x1 conv) and their projection
        vision += (d * 2 * c + 2 * c) if self.keypoint_film else 0  # the keypoints' FiLM map
        return embed + values + patch + self.n_layer * block + norm + head + vision

    def num_active_params(self, vocab_size: int | None = None) -> int:
        """Parameters one token's forward pass uses: :meth:`num_params` less the experts it is not routed to
        (``moe_experts - moe_top_k`` per MoE layer); equal to :meth:`num_params` for a dense model.

        Raises:
            ValueError: no vocabulary size is known.
        """
        idle = self._ffn_params(self.moe_experts) - self._ffn_params(self.moe_top_k)
        return self.num_params(vocab_size) - self.n_layer * idle

    def _ffn_params(self, experts: int) -> int:
        """Parameters of one block's feed-forward with ``experts`` experts (the router counted in full)."""
        d, f, b = self.n_embd, self.d_ff, int(self.bias)
        mlp = (d * f + f * b) + (f * d + d * b)
        return mlp if self.ffn == "dense" else d * self.moe_experts + experts * mlp

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        d = dict(d)
        if d.get("continuous_ids") is not None:
            d["continuous_ids"] = tuple(d["continuous_ids"])
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    # Gato, table 1: layers, width, heads, feed-forward; context 1024.
    "gato-79m": ModelConfig(n_layer=8, n_embd=768, n_head=24, d_ff=3072, context=1024),
    "gato-364m": ModelConfig(n_layer=12, n_embd=1536, n_head=12, d_ff=6144, context=1024),
    "gato-1.18b": ModelConfig(n_layer=24, n_embd=2048, n_head=16, d_ff=8192, context=1024),
    # Small enough to train usefully on two CPU cores in minutes.
    "cpu-tiny": ModelConfig(
        n_layer=2, n_embd=128, n_head=4, d_ff=512, context=256, local_positions=256, patch_channels=16, patch_stride=4
    ),
    "cpu-small": ModelConfig(
        n_layer=4, n_embd=256, n_head=8, d_ff=1024, context=512, local_positions=256, patch_channels=32, patch_stride=4
    ),
}
"""Named model configurations (vocabulary size unbound)."""


def get_preset(name: str) -> ModelConfig:
    """The preset called ``name``.

    Raises:
        KeyError: unknown name (the message lists the presets).
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"Unknown model preset {name!r}. Available presets: {', '.join(PRESETS)}") from None


def format_params(n: int) -> str:
    """``79_123_456 -> '79.12M'``."""
    if n >= 1e9:
        return f"{n / 1e9:.3f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{n / 1e3:.1f}K"


def presets_table(layout, adjust: Callable[[ModelConfig], ModelConfig] | None = None) -> str:
    """One line per preset with its shape and exact parameter count when bound to ``layout``.

    Args:
        layout: the tokenizer's :class:`~omnipolicy.tokenizers.VocabLayout`.
        adjust: applied to each preset first (a training run's overrides, such as ``ffn="moe"``); with
            mixture-of-experts feed-forwards the table also gives the experts and the active parameters per token.
    """
    cfgs = {name: (adjust(cfg) if adjust else cfg).with_layout(layout) for name, cfg in PRESETS.items()}
    moe = any(cfg.ffn == "moe" for cfg in cfgs.values())
    head = f"{'preset':<11} {'layers':>6} {'width':>6} {'heads':>5} {'ff':>6} {'context':>7} {'params':>14}"
    lines = [f"{head:<72} {'experts':>9} {'active':>14}" if moe else head]
    for name, cfg in cfgs.items():
        n = cfg.num_params()
        line = (f"{name:<11} {cfg.n_layer:>6} {cfg.n_embd:>6} {cfg.n_head:>5} {cfg.d_ff:>6} {cfg.context:>7} "
                f"{n:>14,d} ({format_params(n)})")
        if moe:
            a = cfg.num_active_params()
            experts = f"{cfg.moe_experts} top-{cfg.moe_top_k}" if cfg.ffn == "moe" else "dense"
            line = f"{line:<72} {experts:>9} {a:>14,d} ({format_params(a)})"
        lines.append(line)
    lines.append(f"(vocabulary size {layout.vocab_size}; embeddings tied with the LM head"
                 + ("; active: parameters one token uses, the experts it is routed to)" if moe else ")"))
    return "\n".join(lines)
