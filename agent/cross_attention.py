"""Flamingo's gated cross-attention (arXiv 2204.14198): the token stream attends to the images' resampler latents.

``ModelConfig.fusion = "cross-attention"``. The images leave the token sequence; before every
``cross_attn_every``-th transformer block a :class:`GatedCrossAttention` block adds

    x = x + tanh(gate_attn) * xattn(ln(x), latents)
    x = x + tanh(gate_ff) * ff(x)              (ff: LayerNorm, x4, GELU)

with both gates scalar parameters initialised to 0, so an untrained block is the identity and the model
starts exactly as the model without images. Each token attends only to the latents of its *frame*: the
images of its own timestep (a timestep's images are taken to arrive at its start, with its other
observations); a token whose timestep has no image attends to nothing and its attention output is 0.

Frames are given as an :class:`ImageContext`: the latents of every frame, padded to the frame with the most
images, and each token's frame.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .resampler import FeedForward


class ImageContext(NamedTuple):
    """What the cross-attention blocks attend to.

    Attributes:
        latents: (F, M, D) each frame's latents (its images' ``resampler_latents`` each, concatenated).
        valid: (F, M) bool, False on the padding of frames with fewer images.
        index: (B, S) int64 each token's frame, -1 where it has none.
    """

    latents: Tensor
    valid: Tensor
    index: Tensor


def frame_latents(latents: Tensor, image_frame: Tensor, num_frames: int) -> tuple[Tensor, Tensor]:
    """Group image latents by frame.

    Args:
        latents: (I, N, D) latents of each image.
        image_frame: (I,) int64 frame of each image, ascending.
        num_frames: F.

    Returns:
        ``(frames, valid)``: (F, K * N, D) latents of each frame's images in order, padded to the most images
        ``K`` of a frame, and (F, K * N) bool, False on the padding.
    """
    I, N, D = latents.shape
    counts = torch.bincount(image_frame, minlength=num_frames)  # (F,)
    K = int(counts.max()) if I else 1
    first = torch.cumsum(counts, 0) - counts  # (F,) first image of each frame
    slot = torch.arange(I, device=latents.device) - first[image_frame]  # (I,) place within the frame
    frames = latents.new_zeros(num_frames, K, N, D).index_put((image_frame, slot), latents)
    valid = torch.zeros(num_frames, K, dtype=torch.bool, device=latents.device)
    valid[image_frame, slot] = True
    return frames.view(num_frames, K * N, D), valid.repeat_interleave(N, dim=1)


class GatedCrossAttention(nn.Module):
    """One gated cross-attention block (tanh gates at 0: the identity until trained)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D = cfg.n_embd
        self.n_head = cfg.n_head
        self.norm = nn.LayerNorm(D, bias=cfg.bias)
        self.to_q = nn.Linear(D, D, bias=False)
        self.to_kv = nn.Linear(D, 2 * D, bias=False)
        self.to_out = nn.Linear(D, D, bias=False)
        self.ff = FeedForward(cfg)
        self.gate_attn = nn.Parameter(torch.zeros(()))
        self.gate_ff = nn.Parameter(torch.zeros(()))

    def attend(self, x: Tensor, ctx: ImageContext) -> Tensor:
        """The ungated attention output (B, S, D) of the tokens ``x`` (B, S, D) over their frames' latents."""
        B, S, D = x.shape
        H, hd = self.n_head, D // self.n_head
        has = ctx.index >= 0  # (B, S)
        idx = ctx.index.clamp(min=0)
        q = self.to_q(self.norm(x)).view(B, S, H, hd)
        latents = ctx.latents.to(x.dtype)
        if latents.shape[0] <= B * S:  # (B, S, M, 2D): each frame projected once, then gathered
            kv = self.to_kv(latents)[idx]
        else:  # more frames than tokens (a session's frame buffer): project only the latents read
            kv = self.to_kv(latents[idx])
        M = kv.shape[2]
        k, v = kv.view(B, S, M, 2, H, hd).unbind(3)  # 2 x (B, S, M, H, hd)
        scores = torch.einsum("bshd,bsmhd->bshm", q, k) * hd**-0.5  # (B, S, H, M)
        allowed = ctx.valid[idx] | ~has.unsqueeze(-1)  # (B, S, M); a token without a frame reads any, then 0
        scores = scores.masked_fill(~allowed.unsqueeze(2), float("-inf"))
        y = torch.einsum("bshm,bsmhd->bshd", scores.softmax(-1), v).reshape(B, S, D)
        return self.to_out(y) * has.unsqueeze(-1).to(x.dtype)  # tokens without a frame: 0

    def forward(self, x: Tensor, ctx: ImageContext) -> Tensor:
        """``x + tanh(gate_attn) * xattn(ln(x))``, then ``+ tanh(gate_ff) * ff(x)``; (B, S, D)."""
        x = x + torch.tanh(self.gate_attn).to(x.dtype) * self.attend(x, ctx)
        return x + torch.tanh(self.gate_ff).to(x.dtype) * self.ff(x)
