"""The Gato transformer: embeddings, pre-norm decoder blocks, LM head.

Reads top-down like nanoGPT's ``model.py``: the image patch embedding
(Gato section 2.2: one ResNet-v2 block with GroupNorm and GELU, plus learned
row and column position embeddings), attention, MLP, block, then the model.

Inputs follow the training batch of ``omnipolicy.datasets.WindowLoader``:

    tokens      int64 (B, S)    ids of the whole vocabulary; ``layout.patch_id`` where a patch goes
    local_pos   int64 (B, S)    position of each token within its timestep
    patch_index int64 (B, S)    row of ``patches`` for patch tokens, -1 elsewhere
    patches     float32 (P, 3, 16, 16)
    patch_pos   int64 (P, 2)    (row, col) of each patch within its image
    loss_mask   bool  (B, S)    targets: the model predicts ``tokens[:, t]`` from ``tokens[:, :t]``

With ``image_encoder="resampler"`` each image takes ``N = resampler_latents`` slots and ``patch_index``
indexes its latents (``image * N + latent``; the patches are whole images, one after another, each from its
patch (0, 0)). With ``fusion="cross-attention"`` the images have no slots, and two more inputs say which
images each token attends to (:mod:`~omnipolicy.agent.cross_attention`):

    frame_index int64 (B, S)    each token's frame (its timestep's images), -1 where it has none
    image_frame int64 (I,)      frame of each image, ascending

With ``image_encoder="vq"`` the images are ordinary ids of ``tokens`` (an image tokenizer's codes between
``<image>`` and ``</image>``): no patches come and the model has no patch embedding.

The embedding of a token is its table embedding (or its patch embedding) plus
a learned local position (within the timestep) and a learned window position
(within the context; windows start at a timestep boundary, so training and
acting see the same positions). The LM head covers the whole vocabulary; the
loss computes it only where ``loss_mask`` is set.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PATCH_SIZE, ModelConfig
from .cross_attention import GatedCrossAttention, ImageContext, frame_latents
from .moe import MoE, RouterStats
from .resampler import PerceiverResampler


def expected_ids(logits: Tensor) -> Tensor:
    """The expected offset under ``softmax(logits)`` over the last axis, rounded: (...,) int64.

    Masked (-inf) logits weigh 0, so the result lies between the lowest and highest valid offsets;
    greedy decoding of ordinal ids (continuous bins) with ``continuous_decoding="mean"``.
    """
    offsets = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.float32)
    return (torch.softmax(logits.float(), dim=-1) @ offsets).round().long()


def gaussian_bin_targets(index: Tensor, bins: int, sigma: float) -> Tensor:
    """Target distributions (N, bins): a Gaussian of ``sigma`` bins centred on each ``index``, integrated over each bin.

    Bin ``j`` covers ``[j - 0.5, j + 0.5)``; mass outside ``[-0.5, bins - 0.5)`` is dropped and each row renormalised.
    """
    edges = torch.arange(bins + 1, device=index.device, dtype=torch.float32) - 0.5
    cdf = torch.special.ndtr((edges[None, :] - index.float()[:, None]) / sigma)  # (N, bins + 1)
    q = cdf[:, 1:] - cdf[:, :-1]
    return q / q.sum(-1, keepdim=True)


class PatchEmbedding(nn.Module):
    """One ResNet-v2 (pre-activation) block per 16x16 patch, projected to the model width.

    stem conv (kernel = stride = ``patch_stride``) -> [GroupNorm, GELU, conv3x3] x 2 + skip
    -> flatten -> linear to ``n_embd``. The skip path is not normalised, so a
    patch's absolute intensity survives (a flat black and a flat white patch
    embed differently; GroupNorm alone would map them to the same vector).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, g = cfg.patch_channels, cfg.patch_groups
        self.stem = nn.Conv2d(3, c, kernel_size=cfg.patch_stride, stride=cfg.patch_stride)
        self.norm1 = nn.GroupNorm(g, c)
        self.conv1 = nn.Conv2d(c, c, kernel_size=3, padding=1, bias=False)  # GroupNorm follows: a bias would be inert
        self.norm2 = nn.GroupNorm(g, c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1)
        self.proj = nn.Linear(c * cfg.patch_grid**2, cfg.n_embd)

    def features(self, patches: Tensor) -> Tensor:
        """The block's feature maps before the projection: (P, 3, 16, 16) -> (P, C, G, G)."""
        x = self.stem(patches)
        h = self.conv1(F.gelu(self.norm1(x)))
        h = self.conv2(F.gelu(self.norm2(h)))
        return x + h

    def forward(self, patches: Tensor) -> Tensor:
        return self.proj(self.features(patches).flatten(1))  # (P, D)


class SpatialKeypoints(nn.Module):
    """Spatial-softmax keypoints of whole images (``ModelConfig.keypoints``), added to each of their patches.

    Each of ``K`` learned 1x1 maps of the patch block's features is a softmax over all the cells of one image
    (every patch's ``G x G`` grid); its expected cell centre is the keypoint's (x, y), in patch widths and
    heights from the image's top-left corner (so an image cut short at a window's end keeps the coordinates of
    the cells it has). A linear map of an image's ``2K`` coordinates, zero at the start, is what each of its
    patches gets. The patches are images one after another, each from patch (0, 0) in raster order (as the
    resampler reads them); a lone zero-position patch (a buffer's padding) is an image of its own.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.grid = cfg.patch_grid
        self.maps = nn.Conv2d(cfg.patch_channels, cfg.keypoints, kernel_size=1)
        self.proj = nn.Linear(2 * cfg.keypoints, cfg.n_embd)
        self.film = nn.Linear(cfg.n_embd, 2 * cfg.patch_channels) if cfg.keypoint_film else None
        for layer in (self.proj, self.film):
            if layer is not None:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def coordinates(self, feats: Tensor, patch_pos: Tensor, instruction: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(xy, image)``: each image's keypoints (P, K, 2) (x, y; rows past the number of images are zero) and
        each patch's image (P,), from feature maps (P, C, G, G) and patch positions (P, 2); with
        ``keypoint_film``, each patch's instruction vector (P, D) (:meth:`GatoModel.patch_instructions`) scales
        and shifts its features first."""
        P, G = feats.shape[0], self.grid
        if self.film is not None:
            if instruction is None:
                raise ValueError("these keypoints are conditioned on the instruction (keypoint_film): pass each patch's "
                                 "instruction vector (GatoModel.patch_instructions)")
            gamma, beta = self.film(instruction.to(feats.dtype)).chunk(2, dim=-1)  # (P, C) each
            feats = feats * (1 + gamma[..., None, None]) + beta[..., None, None]
        image = ((patch_pos == 0).all(1).long().cumsum(0) - 1).clamp(min=0)  # (P,)
        off = (torch.arange(G, device=feats.device, dtype=torch.float32) + 0.5) / G
        ys = patch_pos[:, :1].float() + off  # (P, G) cell centres in patch heights from the image's top
        xs = patch_pos[:, 1:].float() + off  # (P, G) and in patch widths from its left
        logits = self.maps(feats).float().flatten(2)  # (P, K, G * G)
        K = logits.shape[1]
        peak = logits.new_full((P, K), float("-inf"))  # each image's largest logit (the softmax is shift-free)
        peak.scatter_reduce_(0, image[:, None].expand(P, K), logits.detach().amax(2), "amax")
        w = torch.exp(logits - peak[image].unsqueeze(-1))  # (P, K, G * G)
        cx = xs[:, None, :].expand(P, G, G).reshape(P, 1, G * G)  # column of each cell, row-major
        cy = ys[:, :, None].expand(P, G, G).reshape(P, 1, G * G)
        sums = torch.stack([w.sum(2), (w * cx).sum(2), (w * cy).sum(2)], -1)  # (P, K, 3)
        total = sums.new_zeros(P, K, 3).index_add_(0, image, sums)
        xy = total[..., 1:] / total[..., :1].clamp(min=1e-30)
        return xy.to(feats.dtype), image

    def forward(self, feats: Tensor, patch_pos: Tensor, instruction: Tensor | None = None) -> Tensor:
        """What each patch gets from its image's keypoints, (P, D)."""
        xy, image = self.coordinates(feats, patch_pos, instruction)
        return self.proj(xy.flatten(1))[image]


def timestep_starts(local_pos: Tensor) -> Tensor:
    """The first position of each token's timestep, (B, S) int64, from the local positions (B, S): the last
    position at or before it whose local position is 0 (0 for the tokens before a row's first timestep starts)."""
    idx = torch.arange(local_pos.shape[1], device=local_pos.device).expand_as(local_pos)
    return torch.where(local_pos == 0, idx, 0).cummax(1).values


class InstructionFiLM(nn.Module):
    """FiLM of the image patches by the instruction (``ModelConfig.film``): ``e * (1 + gamma) + beta``.

    ``(gamma, beta)`` is a linear map, zero at the start, of the mean table embedding of the text tokens up to
    each position within its timestep (text comes first in a timestep, so a patch's mean covers the whole
    instruction; text after the separator, an answer, comes after every patch and never counts).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.text_ids = cfg.continuous_ids[0]  # text ids are [0, continuous offset) (tokenizers.vocab)
        self.proj = nn.Linear(cfg.n_embd, 2 * cfg.n_embd)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, tokens: Tensor, local_pos: Tensor, slots: Tensor, table: Tensor) -> Tensor:
        """``x`` (B, S, D) with the ``slots`` (B, S) bool positions conditioned on their timestep's text.

        ``tokens``: the ids the model reads (B, S); ``local_pos``: positions within the timestep (B, S);
        ``table``: the token table (V, D). A row may begin inside a timestep (a pending action token): its
        first positions count as one timestep with whatever text they hold (none)."""
        gamma, beta = self.proj(instruction_means(tokens, local_pos, table, self.text_ids).to(x.dtype)).chunk(2, dim=-1)
        return torch.where(slots.unsqueeze(-1), x * (1 + gamma) + beta, x)


def instruction_means(tokens: Tensor, local_pos: Tensor, table: Tensor, text_ids: int) -> Tensor:
    """(B, S, D): at each position, the mean table embedding of the text tokens (ids below ``text_ids``) from its
    timestep's start up to it (zero where there are none), from ``tokens`` and ``local_pos`` (B, S)."""
    is_text = (tokens < text_ids).unsqueeze(-1).to(table.dtype)  # (B, S, 1)
    feats = torch.cat([table[tokens] * is_text, is_text], dim=-1)  # (B, S, D + 1)
    total = feats.cumsum(1)
    start = timestep_starts(local_pos)
    before = (total - feats).gather(1, start.unsqueeze(-1).expand_as(total))  # sums before each timestep
    seg = total - before  # (B, S, D + 1) sums within the timestep up to each position
    return seg[..., :-1] / seg[..., -1:].clamp(min=1.0)


class TokenEmbedding(nn.Embedding):
    """The token table over the whole vocabulary, plus a smooth value term for continuous bins.

    A continuous id ``c`` (bin ``i`` of ``n``) also gets ``W f(u_i)``: ``f`` are
    ``value_features`` sines and cosines of the bin centre ``u_i`` in [-1, 1]
    and ``W`` is learned. Neighbouring bins thus share most of their
    embedding from the start, and a bin seldom seen in training is not a
    random vector. ``weight`` stays the plain table (tied with the LM head).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg.vocab_size, cfg.n_embd)
        self.value_proj: nn.Linear | None = None
        if cfg.value_features and cfg.continuous_ids is not None:
            lo, hi = cfg.continuous_ids
            n = hi - lo
            u = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1  # (n,) bin centres
            freq = torch.arange(1, cfg.value_features // 2 + 1, dtype=torch.float64) * (math.pi / 2)  # (F/2,)
            feats = torch.cat([torch.sin(u[:, None] * freq), torch.cos(u[:, None] * freq)], dim=1)  # (n, F)
            self.register_buffer("value_feats", feats.float(), persistent=False)
            self.value_proj = nn.Linear(cfg.value_features, cfg.n_embd, bias=False)
            self.lo, self.n = lo, n

    def reset_value_proj(self, std: float = 0.02) -> None:
        """Initialise the value term to the table's scale (each output element ~ N(0, std^2)).

        The features' squares sum to ``value_features / 2`` for every bin, so
        the weights get ``std / sqrt(value_features / 2)``: neighbouring bins
        then share about half of their embedding instead of nearly all of it
        (which slowed learning exact bins).
        """
        if self.value_proj is not None:
            nn.init.normal_(self.value_proj.weight, mean=0.0, std=std / math.sqrt(self.value_feats.shape[1] / 2))

    def forward(self, tokens: Tensor) -> Tensor:
        x = super().forward(tokens)  # (..., D)
        if self.value_proj is not None:
            rel = tokens - self.lo
            is_value = ((rel >= 0) & (rel < self.n)).unsqueeze(-1)  # (..., 1)
            value = self.value_proj(self.value_feats[rel.clamp(0, self.n - 1)])  # (..., D)
            x = x + value * is_value.to(value.dtype)
        return x


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor) -> Tensor:
        B, S, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=2)  # 3 x (B, S, D)
        q, k, v = (t.view(B, S, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, S, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, S, D)  # (B, S, D)
        return F.dropout(self.c_proj(y), self.dropout, self.training)

    def forward_selected(self, x: Tensor, query_pos: Tensor, query_valid: Tensor) -> Tensor:
        """Attention outputs at chosen query positions only (keys and values from every position).

        Args:
            x: (B, S, D) normalised block input.
            query_pos: (B, M) int64 positions whose output is wanted (ascending per row; padded).
            query_valid: (B, M) bool, False on padding.

        Returns:
            (N, D) outputs of the valid queries, row-major (N = ``query_valid.sum()``).
        """
        B, S, D = x.shape
        H, hd, M = self.n_head, D // self.n_head, query_pos.shape[1]
        w, b = self.c_attn.weight, self.c_attn.bias
        kv = F.linear(x, w[D:], None if b is None else b[D:])  # (B, S, 2D): no queries for unused positions
        k, v = (t.view(B, S, H, hd).transpose(1, 2) for t in kv.split(D, dim=2))  # (B, H, S, hd)
        xq = x.gather(1, query_pos.unsqueeze(-1).expand(B, M, D))  # (B, M, D)
        q = F.linear(xq, w[:D], None if b is None else b[:D]).view(B, M, H, hd).transpose(1, 2)  # (B, H, M, hd)
        allowed = torch.arange(S, device=x.device) <= query_pos.unsqueeze(-1)  # (B, M, S) causal
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(1),
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, M, hd)
        y = y.transpose(1, 2).reshape(B, M, D)[query_valid]  # (N, D)
        return F.dropout(self.c_proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.d_ff, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.d_ff, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")), self.dropout, self.training)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``.

    ``mlp`` is the dense :class:`MLP`, or with ``cfg.ffn == "moe"`` a :class:`~omnipolicy.agent.moe.MoE` of
    experts of that shape (every block's: Mixtral's choice, where Switch alternates dense and MoE blocks).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp: MLP | MoE = MoE(cfg, lambda: MLP(cfg)) if cfg.ffn == "moe" else MLP(cfg)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_selected(self, x: Tensor, selected: Tensor) -> Tensor:
        """The block's output at the ``selected`` (B, S) positions only, (N, D) row-major.

        Equal to ``self(x)[selected]``, without the queries, attention output
        and MLP of the positions nobody reads (the last block of a loss pass).
        """
        counts = selected.sum(1)  # (B,)
        M = int(counts.max()) if selected.numel() else 0
        query_pos = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :M]  # (B, M) selected first, ascending
        query_valid = torch.arange(M, device=x.device) < counts.unsqueeze(1)  # (B, M)
        x_sel = x[selected] + self.attn.forward_selected(self.ln_1(x), query_pos, query_valid)  # (N, D)
        return x_sel + self.mlp(self.ln_2(x_sel))


class GatoModel(nn.Module):
    """Decoder-only transformer over one token sequence of every modality.

    Args:
        cfg: model shape bound to a vocabulary (``cfg.with_layout(tokenizer.layout)``).

    Raises:
        ValueError: ``cfg.vocab_size`` is not set.
    """

    INERT_AT_START = ("film", "keypoints")
    """Modules that change nothing until trained (their output maps start at zero): a model without them can be
    fine-tuned with them (``train --init-from``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size is None:
            raise ValueError("GatoModel needs cfg.vocab_size; bind it with cfg.with_layout(tokenizer.layout)")
        if cfg.action_inputs == "hidden" and None in (cfg.continuous_ids, cfg.separator_id, cfg.pad_id):
            raise ValueError("ModelConfig.action_inputs='hidden' needs the layout's ids; bind it with cfg.with_layout(layout)")
        if (cfg.film or cfg.keypoint_film) and cfg.continuous_ids is None:
            raise ValueError("ModelConfig.film and keypoint_film need the layout's text ids; bind it with cfg.with_layout(layout)")
        self.cfg = cfg
        D = cfg.n_embd
        self.wte = TokenEmbedding(cfg)  # token table over the whole vocabulary (+ continuous value features)
        self.wpe = nn.Embedding(cfg.context, D)  # position within the context window
        self.wle = nn.Embedding(cfg.local_positions, D)  # position within the timestep
        if cfg.embeds_patches:  # "vq" images are codes of the token table
            self.patch_embed = PatchEmbedding(cfg)
            self.patch_row = nn.Embedding(cfg.pos_bins, D)
            self.patch_col = nn.Embedding(cfg.pos_bins, D)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(D, bias=cfg.bias)
        self.lm_head = nn.Linear(D, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        # registered last, so that the default model draws the same initial weights as before they existed
        self.resampler = PerceiverResampler(cfg) if cfg.image_encoder == "resampler" else None
        self.xattn = nn.ModuleList(GatedCrossAttention(cfg) for _ in cfg.cross_attn_layers)
        self._xattn_at = {layer: i for i, layer in enumerate(cfg.cross_attn_layers)}  # block index -> xattn index
        self.apply(self._init_weights)
        self.wte.reset_value_proj()
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        # made last and zeroed: the rest draws the same initial weights with FiLM as without, and FiLM starts inert
        self.film = InstructionFiLM(cfg) if cfg.film else None
        if self.film is not None:
            self.film.reset_parameters()
        self.keypoints = SpatialKeypoints(cfg) if cfg.keypoints else None  # the same: made last, projection zero

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        """Number of distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters())

    def router_stats(self) -> list[RouterStats]:
        """Each MoE block's :class:`~omnipolicy.agent.moe.RouterStats` of the last forward pass in training mode,
        in block order (empty for a dense model, or before any forward pass in training mode)."""
        return [blk.mlp.stats for blk in self.blocks if isinstance(blk.mlp, MoE) and blk.mlp.stats is not None]

    def router_loss(self) -> Tensor | None:
        """``moe_aux_coef * aux + moe_z_coef * z`` of the last forward pass in training mode, with ``aux`` and ``z``
        the load-balancing and z-losses averaged over the MoE blocks (a scalar in the autograd graph, to add to
        the mean token loss); ``None`` for a dense model or before any forward pass in training mode."""
        stats = self.router_stats()
        if not stats:
            return None
        aux = torch.stack([s.aux for s in stats]).mean()
        z = torch.stack([s.z for s in stats]).mean()
        return self.cfg.moe_aux_coef * aux + self.cfg.moe_z_coef * z

    def patch_instructions(self, tokens: Tensor, local_pos: Tensor, patch_index: Tensor, n_patches: int) -> Tensor:
        """Each patch's instruction vector (n_patches, D): the mean table embedding of its timestep's text tokens
        before it (what ``keypoint_film`` conditions on; zero for a patch no slot refers to), from the model's
        input ``tokens``, ``local_pos`` and ``patch_index`` (B, S)."""
        means = instruction_means(tokens, local_pos, self.wte.weight, self.cfg.continuous_ids[0])  # (B, S, D)
        flat = patch_index.reshape(-1)
        rows = torch.where(flat >= 0, flat, n_patches)  # positions that are no patch write to a spare last row
        out = means.new_zeros(n_patches + 1, means.shape[-1])  # (static shapes: the session's CUDA graphs)
        return out.index_copy(0, rows, means.reshape(-1, means.shape[-1]))[:n_patches]

    def embed_patches(self, patches: Tensor, patch_pos: Tensor, instruction: Tensor | None = None) -> Tensor:
        """Embeddings of image patches with their row/column positions (clamped to the table), (P, D);
        ``instruction`` (P, D): each patch's instruction vector, needed by ``keypoint_film``.

        Raises:
            ValueError: the model reads images as codes (``image_encoder="vq"``) and has no patch embedding.
        """
        if not self.cfg.embeds_patches:
            raise ValueError(f"This model reads images as codes (image_encoder={self.cfg.image_encoder!r}) and has no "
                             f"patch embedding, but {patches.shape[0]} image patches came; tokenize its images with "
                             "the checkpoint's image tokenizer")
        rc = patch_pos.clamp(0, self.cfg.pos_bins - 1)
        feats = self.patch_embed.features(patches)
        e = self.patch_embed.proj(feats.flatten(1)) + self.patch_row(rc[:, 0]) + self.patch_col(rc[:, 1])
        return e if self.keypoints is None else e + self.keypoints(feats, patch_pos, instruction)

    def encode_images(self, patches: Tensor, patch_pos: Tensor) -> Tensor:
        """The resampler's latents of whole images (patches one image after another, each from (0, 0)), (I, N, D)."""
        if self.resampler is None:
            raise ValueError(f"encode_images needs image_encoder='resampler', the model has {self.cfg.image_encoder!r}")
        return self.resampler(self.embed_patches(patches, patch_pos), patch_pos)

    def embed_images(self, patches: Tensor, patch_pos: Tensor, instruction: Tensor | None = None) -> Tensor:
        """The vectors images give the model, in order: the patch embeddings (P, D), or with the resampler each
        image's latents (I * N, D) (what early fusion's slots read, or what cross-attention attends to);
        ``instruction``: see :meth:`embed_patches`."""
        if self.resampler is None:
            return self.embed_patches(patches, patch_pos, instruction)
        return self.encode_images(patches, patch_pos).flatten(0, 1)

    def image_context(self, patches: Tensor | None, patch_pos: Tensor | None, image_frame: Tensor,
                      frame_index: Tensor) -> ImageContext:
        """The cross-attention blocks' input: each frame's latents and each token's frame (see the module docstring).

        Without images (none in the batch) a zero image stands in, which no token attends to: the resampler
        and the blocks stay in the graph with a zero contribution (every step then updates the same parameters).
        """
        if patches is None or patches.shape[0] == 0:
            patches = frame_index.new_zeros((1, 3, PATCH_SIZE, PATCH_SIZE), dtype=self.wpe.weight.dtype)
            patch_pos = frame_index.new_zeros((1, 2))
            image_frame = frame_index.new_zeros((1,))
            frame_index = torch.full_like(frame_index, -1)
        lat = self.encode_images(patches, patch_pos)  # (I, N, D)
        num_frames = int(image_frame.max()) + 1
        frames, valid = frame_latents(lat, image_frame, num_frames)
        return ImageContext(frames, valid, frame_index)

    def no_image_context(self, shape: tuple[int, int], device: torch.device) -> ImageContext:
        """The context of (B, S) tokens none of which has an image."""
        index = torch.full(shape, -1, dtype=torch.long, device=device)
        return self.image_context(None, None, index.new_zeros(0), index)

    def batch_context(self, batch: dict[str, Tensor]) -> ImageContext | None:
        """:meth:`image_context` of a training batch with cross-attention fusion, else None."""
        if not self.cfg.cross_attn_layers:
            return None
        if "frame_index" not in batch:  # a batch without images (synthetic windows)
            return self.no_image_context(batch["tokens"].shape, batch["tokens"].device)
        return self.image_context(batch["patches"], batch["patch_pos"], batch["image_frame"], batch["frame_index"])

    def run_blocks(self, x: Tensor, context: ImageContext | None, blocks: slice = slice(None)) -> Tensor:
        """The transformer ``blocks`` (a slice of them), each preceded by its gated cross-attention block if any
        (without a ``context``, no token has an image)."""
        if context is None and self.xattn:
            context = self.no_image_context(x.shape[:2], x.device)
        for i in range(len(self.blocks))[blocks]:
            if i in self._xattn_at:
                x = self.xattn[self._xattn_at[i]](x, context)
            x = self.blocks[i](x)
        return x

    def embed(
        self,
        tokens: Tensor,
        local_pos: Tensor,
        patch_index: Tensor,
        patches: Tensor | None,
        patch_pos: Tensor | None,
        positions: Tensor | None = None,
        patch_embeddings: Tensor | None = None,
    ) -> Tensor:
        """Input embeddings.

        Args:
            tokens, local_pos, patch_index: (B, S) int64; the sequence starts at a timestep boundary
                (with ``action_inputs="hidden"`` the actions are found after each timestep's separator).
            patches: (P, 3, 16, 16) float; patch_pos: (P, 2) int64 (row, col).
            positions: (S,) or (B, S) window positions; default ``0 .. S-1``.
            patch_embeddings: (P, D) from :meth:`embed_images`, instead of
                ``patches`` and ``patch_pos`` (a policy re-uses them across steps).

        Returns:
            (B, S, D) embeddings.
        """
        B, S = tokens.shape
        if positions is None:
            positions = torch.arange(S, device=tokens.device)
        tokens = self.input_tokens(tokens, local_pos)
        x = self.wte(tokens)  # (B, S, D)
        if self.cfg.slots_per_image == 0:  # cross-attention: the images are not in the sequence
            x = x + self.wle(local_pos) + self.wpe(positions)
            return F.dropout(x, self.cfg.dropout, self.training)
        pe = patch_embeddings
        if pe is None and patches is not None and patches.shape[0] > 0:
            instruction = None
            if self.cfg.keypoint_film:
                instruction = self.patch_instructions(tokens, local_pos, patch_index, patches.shape[0])
            pe = self.embed_images(patches, patch_pos, instruction)  # (P, D) or (I * N, D)
        if pe is not None and pe.shape[0] > 0:
            flat = patch_index.reshape(-1)  # (B*S,)
            slots = torch.nonzero(flat >= 0).squeeze(1)  # (P',) patch slots
            x = x.reshape(B * S, -1).index_copy(0, slots, pe[flat[slots]].to(x.dtype)).view(B, S, -1)  # slots take their patch
            if self.film is not None:
                x = self.film(x, tokens, local_pos, patch_index >= 0, self.wte.weight)
        elif self.training and torch.is_grad_enabled() and self.cfg.embeds_patches:
            # no image in this batch: keep the patch parameters in the graph with a zero contribution, so
            # every step updates the same parameters (DDP needs that; single-process then matches it exactly)
            zero = self.embed_images(x.new_zeros(1, 3, PATCH_SIZE, PATCH_SIZE), torch.zeros(1, 2, dtype=torch.long, device=x.device),
                                     x.new_zeros(1, x.shape[-1]) if self.cfg.keypoint_film else None)
            x = x + 0.0 * zero.sum()
            if self.film is not None:
                x = x + 0.0 * sum(p.sum() for p in self.film.parameters())
        x = x + self.wle(local_pos) + self.wpe(positions)
        return F.dropout(x, self.cfg.dropout, self.training)

    def forward(
        self,
        tokens: Tensor,
        local_pos: Tensor,
        patch_index: Tensor,
        patches: Tensor | None,
        patch_pos: Tensor | None,
        positions: Tensor | None = None,
        patch_embeddings: Tensor | None = None,
        context: ImageContext | None = None,
    ) -> Tensor:
        """Final hidden states (after the last norm), (B, S, D); see :meth:`embed` for the inputs and
        :meth:`image_context` for ``context`` (cross-attention fusion only)."""
        x = self.embed(tokens, local_pos, patch_index, patches, patch_pos, positions, patch_embeddings)
        return self.ln_f(self.run_blocks(x, context))

    def logits(self, hidden: Tensor) -> Tensor:
        """Logits over the whole vocabulary, (..., V), from hidden states (..., D)."""
        return self.lm_head(hidden)

    def input_tokens(self, tokens: Tensor, local_pos: Tensor) -> Tensor:
        """The tokens as the model reads them: with ``action_inputs="hidden"``, every token after the separator
        of its timestep (the actions, prompts' included) becomes the padding id. (B, S) int64."""
        if self.cfg.action_inputs != "hidden":
            return tokens
        is_sep = tokens == self.cfg.separator_id
        seps = is_sep.cumsum(1)  # separators up to and including each position
        start = timestep_starts(local_pos)
        after_sep = seps - seps.gather(1, start) + is_sep.gather(1, start).long() > 0
        return tokens.masked_fill(after_sep & ~is_sep, self.cfg.pad_id)

    def loss_terms(self, batch: dict[str, Tensor], bin_sigma: float = 0.0) -> tuple[Tensor, Tensor]:
        """Summed cross-entropy over the target positions and their number.

        The LM head, and the queries, attention output and MLP of the last
        block, run only on the positions whose next token carries loss
        (``loss_mask[:, 1:]``): a batch with few action tokens costs little
        more than the trunk minus most of its last block.

        With ``bin_sigma > 0`` a continuous-bin target is not one-hot but a Gaussian of that many bins
        around it (integrated over each bin, truncated to the bins; "HL-Gauss", Farebrother et al. 2024,
        arXiv 2403.03950), and its loss is the KL divergence to the prediction (0 at a perfect fit):
        neighbouring bins share credit, so the ordinal structure of the bins is learned from the
        first step instead of bin by bin. Text and discrete targets keep the plain cross-entropy.

        Args:
            batch: tensors in the WindowLoader format (see the module docstring).
            bin_sigma: width of the continuous targets in bins (0: Gato's one-hot cross-entropy).

        Returns:
            ``(loss_sum, count)``: float32 scalar sum of the token losses, int64 scalar count.
        """
        tokens = batch["tokens"]
        target_mask = batch["loss_mask"][:, 1:]  # (B, S-1): h[:, t] predicts tokens[:, t+1]
        x = self.embed(tokens, batch["local_pos"], batch["patch_index"], batch["patches"], batch["patch_pos"])
        context = self.batch_context(batch)
        x = self.run_blocks(x, context, slice(None, -1))  # (B, S, D)
        last = len(self.blocks) - 1
        if last in self._xattn_at:
            x = self.xattn[self._xattn_at[last]](x, context)
        # the last block only where a prediction is scored: same values as self(...)[selected]
        selected = F.pad(target_mask, (0, 1))  # (B, S)
        h_sel = self.ln_f(self.blocks[-1].forward_selected(x, selected))  # (N, D)
        targets = tokens[:, 1:][target_mask]  # (N,)
        logits = self.logits(h_sel).float()  # (N, V)
        if bin_sigma <= 0 or self.cfg.continuous_ids is None:
            return F.cross_entropy(logits, targets, reduction="sum"), target_mask.sum()
        logp = F.log_softmax(logits, dim=-1)
        nll = -logp.gather(1, targets[:, None]).squeeze(1)  # (N,)
        lo, hi = self.cfg.continuous_ids
        cont = (targets >= lo) & (targets < hi)
        q = gaussian_bin_targets(targets[cont] - lo, hi - lo, bin_sigma)  # (Nc, bins)
        kl = (q * (q.clamp_min(1e-30).log() - logp[cont][:, lo:hi])).sum(-1)
        return torch.where(cont, 0.0, nll).sum() + kl.sum(), target_mask.sum()
