"""Mixture-of-experts feed-forward (``ModelConfig.ffn = "moe"``).

Every token's feed-forward is a weighted sum of ``k`` of ``E`` expert MLPs, each
of the dense MLP's shape (so ``d_ff`` keeps its meaning), chosen per token by a
router (Switch Transformer, Fedus et al. 2021, arXiv 2101.03961; Mixtral,
Jiang et al. 2024, arXiv 2401.04088)::

    logits = x W_r                      (T, E): a linear map without bias, in float32
    p      = softmax(logits)            (T, E)
    top-k of p, renormalised            (T, k) chosen experts and their weights (summing to 1)
    y      = sum_j w_j expert_{e_j}(x)  (T, D)

Training adds two auxiliary losses (:class:`RouterStats`, collected by
``GatoModel.router_loss`` and averaged over the layers):

- load balancing, ``E * sum_i f_i P_i`` (Switch), with ``f_i`` the share of the
  token-to-expert assignments that go to expert ``i`` (``sum_i f_i = 1``) and
  ``P_i`` the mean router probability of expert ``i``: 1.0 when the routing is
  perfectly balanced, up to ``E`` when every token goes to one expert;
- the router z-loss (ST-MoE, Zoph et al. 2022, arXiv 2202.08906), the mean over
  tokens of ``logsumexp(logits)^2``: it keeps the router's logits small.

Dropless: every token reaches its ``k`` experts (no capacity factor, nothing
dropped): the layer loops over the experts, gathers each one's tokens with
``index_select`` and scatters the weighted outputs back with ``index_add``. A
token's output therefore depends on that token only, as in the dense MLP,
which the KV-cached session relies on. On CUDA without gradients (the
session, validation) every expert runs on every token instead and the gates
(zero for the experts not chosen) combine them: static shapes and no host
synchronisation, so CUDA graphs capture the step.

>>> import torch
>>> from torch import nn
>>> from omnipolicy.agent.config import ModelConfig
>>> cfg = ModelConfig(n_layer=1, n_embd=16, n_head=2, d_ff=32, ffn="moe", moe_experts=4, moe_top_k=2)
>>> layer = MoE(cfg, make_expert=lambda: nn.Linear(16, 16))
>>> layer(torch.randn(2, 3, 16)).shape
torch.Size([2, 3, 16])
>>> weights, experts = route(torch.randn(5, 4), k=2)
>>> experts.shape, torch.allclose(weights.sum(-1), torch.ones(5))
(torch.Size([5, 2]), True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig


def route(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-``k`` experts of each token and their renormalised router probabilities.

    Args:
        logits: (T, E) router logits (float32 or wider).
        k: experts per token.

    Returns:
        ``(weights, experts)``: (T, k) weights summing to 1 per token, and (T, k) int64 expert indices.
    """
    top_p, top_e = logits.softmax(-1).topk(k, dim=-1)  # (T, k)
    return top_p / top_p.sum(-1, keepdim=True), top_e


def load_balancing_loss(probs: Tensor, experts: Tensor) -> Tensor:
    """Switch's auxiliary loss ``E * sum_i f_i P_i`` (1.0 for perfectly balanced routing).

    Args:
        probs: (T, E) router probabilities (the full softmax, before top-k).
        experts: (T, k) int64 experts chosen for each token.

    Returns:
        A scalar: differentiable through ``probs`` (the shares ``f`` are counts); 0 when ``T == 0``.
    """
    T, E = probs.shape
    if T == 0:
        return probs.sum() * 0.0
    share = torch.bincount(experts.reshape(-1), minlength=E).to(probs.dtype) / experts.numel()  # (E,) f, sums to 1
    return E * (share * probs.mean(0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE's router z-loss: the mean over tokens of ``logsumexp(logits)^2``, a scalar (0 when there are no tokens).

    Args:
        logits: (T, E) router logits.
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return torch.logsumexp(logits, dim=-1).square().mean()


@dataclass
class RouterStats:
    """What one MoE layer's router did in a training forward pass.

    Attributes:
        aux: load-balancing loss (scalar, in the autograd graph).
        z: router z-loss (scalar, in the autograd graph).
        load: (E,) share of the token-to-expert assignments each expert received (detached; sums to 1).
        entropy: mean entropy of the tokens' router distributions in nats (detached; ``log E`` at uniform).
    """

    aux: Tensor
    z: Tensor
    load: Tensor
    entropy: Tensor


def router_stats(logits: Tensor, experts: Tensor) -> RouterStats:
    """The :class:`RouterStats` of router ``logits`` (T, E) and the experts (T, k) they chose."""
    probs = logits.softmax(-1)  # (T, E)
    E = logits.shape[1]
    load = torch.bincount(experts.reshape(-1), minlength=E).float() / max(experts.numel(), 1)
    entropy = torch.special.entr(probs.detach()).sum(-1).mean() if len(probs) else probs.new_zeros(())
    return RouterStats(load_balancing_loss(probs, experts), router_z_loss(logits), load.detach(), entropy.float())


class MoE(nn.Module):
    """A dropless top-k mixture of expert MLPs in place of the dense MLP of a block.

    Args:
        cfg: the model config (``moe_experts``, ``moe_top_k``, ``n_embd``).
        make_expert: builds one expert (the block's dense MLP class, so that each expert has its shape).

    Attributes:
        stats: the :class:`RouterStats` of the last forward pass in training mode (``None`` before the first);
            forward passes in eval mode (validation, acting) leave it as it is.
    """

    def __init__(self, cfg: ModelConfig, make_expert: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.num_experts, self.top_k = cfg.moe_experts, cfg.moe_top_k
        self.router = nn.Linear(cfg.n_embd, cfg.moe_experts, bias=False)
        self.experts = nn.ModuleList(make_expert() for _ in range(cfg.moe_experts))
        self.stats: RouterStats | None = None

    def router_logits(self, x: Tensor) -> Tensor:
        """Router logits (T, E) of tokens (T, D), in float32 (or ``x``'s dtype if wider), outside autocast."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.to(dtype), self.router.weight.to(dtype))

    def forward(self, x: Tensor) -> Tensor:
        """Outputs (..., D) of tokens (..., D); records :attr:`stats` in training mode."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (T, D)
        logits = self.router_logits(x)  # (T, E)
        weights, experts = route(logits, self.top_k)  # (T, k), (T, k)
        if self.training:
            self.stats = router_stats(logits, experts)
        if x.is_cuda and not torch.is_grad_enabled():
            out = self._combine_all(x, weights, experts)
        else:
            out = self._dispatch(x, weights, experts)
        return out.view(shape)

    def _dispatch(self, x: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
        """Each expert on its own tokens only: (T, D).

        With gradients every expert runs, on no tokens if none chose it, so that each expert's parameters get a
        (zero) gradient every step as data-parallel training needs; without, such experts are skipped.
        """
        T, k = experts.shape
        flat = experts.reshape(-1)  # (T k,)
        order = torch.argsort(flat, stable=True)  # assignments grouped by expert, tokens ascending within each
        token = order // k  # (T k,) the token of each sorted assignment
        gate = weights.reshape(-1)[order]  # (T k,)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()  # one host synchronisation
        keep_all = torch.is_grad_enabled() and self.training
        out = torch.zeros_like(x)  # (T, D)
        start = 0
        for expert, n in zip(self.experts, counts):
            if n or keep_all:
                idx = token[start : start + n]  # (n,)
                y = expert(x.index_select(0, idx))  # (n, D)
                out.index_add_(0, idx, (y * gate[start : start + n, None]).to(out.dtype))
            start += n
        return out

    def _combine_all(self, x: Tensor, weights: Tensor, experts: Tensor) -> Tensor:
        """Every expert on every token, combined by the gates (0 for unchosen experts): (T, D), static shapes."""
        gates = torch.zeros(x.shape[0], self.num_experts, device=x.device, dtype=weights.dtype)
        gates = gates.scatter(1, experts, weights)  # (T, E)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            out = out + (expert(x) * gates[:, e : e + 1]).to(out.dtype)
        return out
