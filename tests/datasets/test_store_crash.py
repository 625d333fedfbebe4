"""SIGKILL at random moments: the store still loads, holds every committed episode, and a rerun continues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from omnipolicy.datasets import EpisodeStore
from omnipolicy.datasets.cli import verify_dataset
from omnipolicy.datasets.layout import is_store

# Shared by the writer subprocess and the checks here: episode i is a pure function of i.
EPISODES = r'''
import numpy as np
from omnipolicy.datasets import Episode
from omnipolicy.tokenizers import FieldSpec, TimestepSpec

SPEC = TimestepSpec(
    (FieldSpec("image", "image", (32, 32, 3), "uint8"), FieldSpec("state", "continuous", (6,), "float32"),
     FieldSpec("instruction", "text", (), "str")),
    FieldSpec("action", "discrete", (), "int64", n=4),
)

def make(i):
    rng = np.random.default_rng(i)
    t = int(rng.integers(20, 60))
    return Episode("toy/crash-v0", {
        "image": rng.integers(0, 256, (t, 32, 32, 3), dtype=np.uint8),
        "state": rng.normal(size=(t, 6)).astype(np.float32),
        "instruction": ["survive the crash"] * t},
        rng.integers(0, 4, t), rng.normal(size=t), seed=i, spec=SPEC)
'''

WRITER = EPISODES + r'''
import sys
from omnipolicy.datasets import EpisodeStore
store = EpisodeStore(sys.argv[1], data_file_size_mb=0.3)
store.recover()
rng = np.random.default_rng(int(sys.argv[2]))
limit = int(sys.argv[3])
while store.num_episodes < limit:
    first = store.num_episodes
    ids = store.append_episodes([make(first + k) for k in range(int(rng.integers(1, 4)))])
    print("committed", ids[-1] + 1, flush=True)
'''

NS: dict = {}
exec(EPISODES, NS)  # noqa: S102 (the same generator the subprocess runs)


def _check_store(root: Path, at_least: int, checked: int) -> int:
    store = EpisodeStore(root)
    assert store.num_episodes >= at_least
    for i in range(checked, store.num_episodes):
        ep, want = store.load_episode(i), NS["make"](i)
        assert ep.seed == i
        np.testing.assert_array_equal(ep.observations["image"], want.observations["image"])
        np.testing.assert_array_equal(ep.observations["state"], want.observations["state"])
        np.testing.assert_array_equal(ep.actions, want.actions)
    report = verify_dataset(root, images=False)
    assert report.ok, report.errors
    return store.num_episodes


def test_sigkill_while_appending(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    checked, kills = 0, 0
    deadline = time.monotonic() + 25
    while kills < 12 and time.monotonic() < deadline:
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(kills), "100000"],
                                stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # the writer is up and has committed once
        assert first.startswith("committed"), first
        time.sleep(float(rng.uniform(0.0, 0.4)))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        committed = max(int(line.split()[1]) for line in [first, *out.splitlines()] if line.startswith("committed"))
        checked = _check_store(root, committed, checked)
        kills += 1
    assert kills >= 5
    # a rerun continues to a target, then everything is clean and contiguous
    target = checked + 5
    subprocess.run([sys.executable, "-c", WRITER, str(root), "99", str(target)], check=True, capture_output=True)
    store = EpisodeStore(root)
    assert store.num_episodes == target and store.seeds("toy/crash-v0") == set(range(target))
    _check_store(root, target, checked)
    report = verify_dataset(root)
    assert report.ok and not report.warnings, (report.errors, report.warnings)


def _marked_pids(mark: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if mark.encode() in (d / "environ").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _wait_for_commit(root: Path, more_than: int, proc: subprocess.Popen, timeout: float = 90.0) -> int:
    """Poll ``root`` until it commits more than ``more_than`` episodes; fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_store(root) and (n := EpisodeStore(root).num_episodes) > more_than:
            return n
        if proc.poll() is not None:
            pytest.fail(f"collect exited with {proc.returncode} before committing more than {more_than} episodes")
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    pytest.fail(f"collect committed no more than {more_than} episodes to {root} within {timeout:.0f} s")


def test_sigkill_during_collect_then_rerun_continues(tmp_path: Path) -> None:
    pytest.importorskip("gymnasium")
    out = tmp_path / "demos"
    mark = f"OMNIPOLICY_TEST_MARK={uuid.uuid4().hex}"
    env = dict(os.environ, **dict([mark.split("=")]))
    episodes = 400  # the expert collects ~75 CartPole episodes/s on 2 idle cores: enough left to kill mid-run
    cmd = [sys.executable, "-m", "omnipolicy", "collect", "--task", "classic/cartpole-v1", "--episodes", str(episodes),
           "--out", str(out), "--workers", "2", "--flush-seconds", "0.05"]
    root = out / "classic" / "cartpole-v1"
    committed = 0
    for extra in (0.0, 0.3):  # killed right after a commit, then a little later (likely mid-append)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = _wait_for_commit(root, committed, proc)  # this run committed at least one episode
        time.sleep(extra)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = EpisodeStore(root)
        seeds = store.seeds("classic/cartpole-v1")
        assert store.num_episodes >= seen and len(seeds) == store.num_episodes and seeds <= set(range(episodes))
        assert verify_dataset(root).ok
        committed = store.num_episodes
    assert committed < episodes, "the runs were meant to be killed mid-collection"
    deadline = time.monotonic() + 10
    while _marked_pids(mark) and time.monotonic() < deadline:  # workers notice their parent is gone
        time.sleep(0.2)
    assert _marked_pids(mark) == []
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
    store = EpisodeStore(root)
    assert store.num_episodes == episodes and store.seeds("classic/cartpole-v1") == set(range(episodes))
    np.testing.assert_allclose(store.returns(), 500.0)  # the CartPole expert balances to the limit
    report = verify_dataset(root)
    assert report.ok and not report.warnings, (report.errors, report.warnings)
