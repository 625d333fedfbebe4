"""``omnipolicy tokenize-demo``: tokenize two synthetic episodes and show the result.

An Atari-like episode (84x84 RGB frames, 18 discrete actions) and a
Meta-World-like episode (39-dim state, instruction text, 4-dim bounded
continuous action) are generated, tokenized, and their actions decoded back.
The command prints the vocabulary layout, each timestep's layout, the tokens of
the first timesteps, the action round-trip error against the bin resolution,
and the valid action id ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tyro

from .episode import TokenizedEpisode, Tokenizer
from .spec import FieldSpec, TimestepSpec

ATARI_SPEC = TimestepSpec((FieldSpec("image", "image", (84, 84, 3), "uint8"),),
                          FieldSpec("action", "discrete", (), "int64", n=18))
METAWORLD_SPEC = TimestepSpec(
    (FieldSpec("state", "continuous", (39,), "float64"), FieldSpec("instruction", "text", (), "str")),
    FieldSpec("action", "continuous", (4,), "float32", low=(-1.0,) * 4, high=(1.0,) * 4),
)


@dataclass(frozen=True)
class DemoConfig:
    """Tokenize a synthetic Atari-like and Meta-World-like episode and print the layout."""

    timesteps: int = 50
    """Timesteps per synthetic episode."""
    show: int = 2
    """How many timesteps of tokens to print per episode."""
    seed: int = 0
    """Seed of the synthetic data."""
    instruction: str = "Open a drawer."
    """Instruction text of the Meta-World-like episode."""


def _synthetic(spec: TimestepSpec, t: int, rng: np.random.Generator, instruction: str) -> tuple[dict, np.ndarray]:
    if spec is ATARI_SPEC:
        frames = rng.integers(0, 256, (t, 84, 84, 3), dtype=np.uint8)
        return {"image": frames}, rng.integers(0, 18, t)
    state = rng.normal(scale=0.3, size=(t, 39))
    state[0, 0] = 300.0  # one value beyond the mu-law range: reported as clipped
    return {"state": state, "instruction": [instruction] * t}, rng.uniform(-1, 1, (t, 4)).astype(np.float32)


def _symbolic(tok: Tokenizer, row: np.ndarray, limit: int = 20) -> str:
    """Token ids as readable symbols, runs of one id collapsed (``<patch> x36``)."""
    lay = tok.layout
    names = {lay.special_id(s): ("|" if s == "separator" else f"<{s}>") for s in lay.special}

    def symbol(v: int) -> str:
        if v in names:
            return names[v]
        if v < lay.continuous_offset:
            return f"t{v}"
        if v < lay.discrete_offset:
            return f"c{v - lay.continuous_offset}"
        return f"d{v - lay.discrete_offset}"

    out, i, ids = [], 0, row.tolist()
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[i]:
            j += 1
        out.append(symbol(ids[i]) + (f" x{j - i + 1}" if j > i else ""))
        i = j + 1
    if len(out) > limit:  # keep the head and the separator + action tail
        tail = out[-(out[::-1].index("|") + 1):] if "|" in out else out[-4:]
        out = out[: limit - len(tail)] + ["..."] + tail
    return " ".join(out)


def _describe(tok: Tokenizer, name: str, spec: TimestepSpec, obs: dict, actions: np.ndarray, show: int) -> list[str]:
    ep: TokenizedEpisode = tok.tokenize_episode(spec, obs, actions)
    t = ep.num_timesteps
    lines = [f"== {name}: {t} timesteps, {ep.tokens.size:,} tokens, {ep.patches.shape[0]:,} image patches",
             f"   tokens per timestep L = {ep.tokens_per_timestep} "
             f"(observation + separator {ep.obs_tokens_per_timestep}, action {ep.action_size}); "
             f"loss on {int(ep.per_timestep(ep.loss_mask)[0].sum())} of them"]
    for seg_name, kind, start, stop in ep.segments:
        lines.append(f"   [{start:3d}, {stop:3d})  {kind:10s} {seg_name}")
    lines.append("   tokens (text id tN, continuous bin cN, discrete value dN, <patch>, <pad>, | separator):")
    for i in range(min(show, t)):
        lines.append(f"   t={i}: {_symbolic(tok, ep.per_timestep()[i])}")
    decoded = tok.decode_actions(spec, ep.action_tokens())
    a = spec.action
    if a.kind == "discrete":
        lines.append(f"   decoded actions equal the originals: {bool((decoded == actions).all())} "
                     f"(first {decoded[:8].tolist()})")
    else:
        err = float(np.abs(decoded - np.clip(actions, a.low, a.high)).max())
        half_bin = float(np.max((np.asarray(a.high) - np.asarray(a.low)) / 2048))  # bins are (high - low) / 1024 wide
        lines.append(f"   action round trip: max |decoded - original| = {err:.6f} (half a bin = {half_bin:.6f})")
    for field in spec.fields("text"):
        width = next(stop - start for n, _, start, stop in ep.segments if n == field.name)
        ids = ep.per_timestep()[0, :width]
        back = tok.decode_text(ids[ids != tok.layout.pad_id])
        lines.append(f"   text {field.name!r}: {obs[field.name][0]!r} -> {ids.tolist()} -> {back!r} "
                     f"(exact: {back == obs[field.name][0]})")
    if ep.clipped:
        lines.append(f"   clipped values: {ep.clipped}")
    ranges = tok.action_token_ranges(spec)
    lines.append(f"   valid action ids per element: {[tuple(r) for r in ranges.tolist()]}")
    return lines


def main(argv: list[str] | None = None, prog: str = "omnipolicy tokenize-demo") -> None:
    """Entry point of ``omnipolicy tokenize-demo``."""
    cfg = tyro.cli(DemoConfig, args=argv, prog=prog)
    if cfg.timesteps < 1:
        raise SystemExit(f"{prog}: --timesteps must be >= 1, got {cfg.timesteps}")
    tok = Tokenizer.default()
    lay = tok.layout
    rng = np.random.default_rng(cfg.seed)
    out = [f"Vocabulary layout (version {lay.version}, text model {lay.text_model}): {lay.vocab_size} ids"]
    out += [f"   {name:10s} [{start}, {stop})" for name, (start, stop) in lay.ranges().items()]
    for name, spec in (("Atari-like (84x84x3 frames, 18 actions)", ATARI_SPEC),
                       ("Meta-World-like (39-dim state + instruction, 4-dim bounded action)", METAWORLD_SPEC)):
        obs, actions = _synthetic(spec, cfg.timesteps, rng, cfg.instruction)
        out += _describe(tok, name, spec, obs, actions, cfg.show)
    print("\n".join(out))


if __name__ == "__main__":
    main()
