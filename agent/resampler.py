"""The Perceiver Resampler: an image's patch embeddings -> a few learned latents (Flamingo, arXiv 2204.14198).

``ModelConfig.image_encoder = "resampler"``. Each image's patch embeddings (the ResNet patch block plus the
row/column position embeddings, :meth:`GatoModel.embed_patches`) become ``N = resampler_latents`` vectors:
``N`` learned latents attend to the concatenation ``[patch features; latents]`` (so they also exchange
information with each other), then pass a x4 feed-forward, both residual, ``resampler_depth`` times, and a
final norm (open_flamingo's ``PerceiverResampler``, src/helpers.py; heads as the model's). Images of different
sizes in one batch are padded to the largest and the padding is masked out of the attention.

Which image a patch belongs to needs no extra input: patches come image after image in raster order, so an
image starts at its patch ``(0, 0)`` (:func:`image_of_patch`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig


def image_of_patch(patch_pos: Tensor) -> tuple[Tensor, Tensor]:
    """Each patch's image and its place in that image, from the (row, col) positions (an image starts at (0, 0)).

    Args:
        patch_pos: (P, 2) int64 (row, col) of each patch, images one after another in raster order.

    Returns:
        ``(image, place)``: (P,) int64 image index (``0 .. I-1``) and (P,) int64 index within the image.
    """
    start = (patch_pos[:, 0] == 0) & (patch_pos[:, 1] == 0)  # (P,)
    image = start.long().cumsum(0) - 1  # (P,)
    idx = torch.arange(len(patch_pos), device=patch_pos.device)
    first = torch.where(start, idx, 0).cummax(0).values  # (P,) first patch of each patch's image
    return image, idx - first


class FeedForward(nn.Sequential):
    """``LayerNorm -> Linear(D, 4D) -> GELU -> Linear(4D, D)`` without biases in the linears (Flamingo)."""

    def __init__(self, cfg: ModelConfig) -> None:
        D = cfg.n_embd
        super().__init__(nn.LayerNorm(D, bias=cfg.bias), nn.Linear(D, 4 * D, bias=False), nn.GELU(),
                         nn.Linear(4 * D, D, bias=False))


class PerceiverAttention(nn.Module):
    """Latents attend to ``[media; latents]``: queries from the latents, keys and values from both."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D = cfg.n_embd
        self.n_head = cfg.n_head
        self.norm_media = nn.LayerNorm(D, bias=cfg.bias)
        self.norm_latents = nn.LayerNorm(D, bias=cfg.bias)
        self.to_q = nn.Linear(D, D, bias=False)
        self.to_kv = nn.Linear(D, 2 * D, bias=False)
        self.to_out = nn.Linear(D, D, bias=False)

    def forward(self, media: Tensor, latents: Tensor, media_valid: Tensor) -> Tensor:
        """(I, N, D) attention output of the latents over media (I, n, D) and latents (I, N, D); media_valid (I, n)."""
        I, N, D = latents.shape
        H, hd = self.n_head, D // self.n_head
        lat = self.norm_latents(latents)
        kv_in = torch.cat([self.norm_media(media), lat], dim=1)  # (I, n + N, D)
        q = self.to_q(lat).view(I, N, H, hd).transpose(1, 2)  # (I, H, N, hd)
        k, v = (t.view(I, -1, H, hd).transpose(1, 2) for t in self.to_kv(kv_in).split(D, dim=2))  # (I, H, n + N, hd)
        allowed = torch.cat([media_valid, media_valid.new_ones(I, N)], dim=1)  # (I, n + N)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, None, :])  # (I, H, N, hd)
        return self.to_out(y.transpose(1, 2).reshape(I, N, D))


class PerceiverResampler(nn.Module):
    """Patch embeddings of images -> ``resampler_latents`` latents per image.

    Args:
        cfg: the model config (width, heads, ``resampler_latents``, ``resampler_depth``).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.empty(cfg.resampler_latents, cfg.n_embd))
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(cfg), FeedForward(cfg)]) for _ in range(cfg.resampler_depth)
        )
        self.norm = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        nn.init.normal_(self.latents, mean=0.0, std=0.02)

    def forward(self, features: Tensor, patch_pos: Tensor) -> Tensor:
        """The latents of every image.

        Args:
            features: (P, D) patch embeddings, images one after another (each from its patch (0, 0)).
            patch_pos: (P, 2) int64 (row, col) of each patch.

        Returns:
            (I, N, D) latents, images in order.
        """
        image, place = image_of_patch(patch_pos)
        I = int(image[-1]) + 1 if len(image) else 0
        n = int(place.max()) + 1 if len(place) else 0
        D = features.shape[1]
        media = features.new_zeros(I, n, D).index_put((image, place), features)  # (I, n, D)
        valid = torch.zeros(I, n, dtype=torch.bool, device=features.device).index_put((image, place), torch.ones_like(image, dtype=torch.bool))
        x = self.latents.to(features.dtype).expand(I, -1, -1)  # (I, N, D)
        for attn, ff in self.layers:
            x = x + attn(media, x, valid)
            x = x + ff(x)
        return self.norm(x)
