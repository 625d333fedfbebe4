"""ControlLoop: rate accuracy, deadline misses and their fallbacks, stopping from a signal handler."""

from __future__ import annotations

import doctest
import os
import signal
import threading
import time

import pytest

from omnipolicy.robot_bridge.wire import control_loop
from omnipolicy.robot_bridge.wire.control_loop import ControlLoop, ControlLoopConfig


def test_docstring_example_runs():
    result = doctest.testmod(control_loop)
    assert result.failed == 0 and result.attempted > 0


def test_rate_is_accurate_and_jitter_small_with_a_fast_callback():
    cfg = ControlLoopConfig(rate_hz=100.0, duration_s=0.5, print_summary=False)
    wakes = []
    with ControlLoop(lambda step: wakes.append((step, time.monotonic())) or step, cfg) as loop:
        s = loop.run()
    assert s.stopped_by == "duration" and 40 <= s.steps <= 50
    # the ticks sit on the grid: wake time against tick index has the period as its slope (skips included)
    k, t = zip(*wakes)
    slope = sum((a - sum(k) / len(k)) * (b - sum(t) / len(t)) for a, b in zip(k, t)) / sum((a - sum(k) / len(k)) ** 2 for a in k)
    assert slope == pytest.approx(0.01, rel=0.01)
    if s.skipped_ticks == 0:  # (a loaded machine can deschedule the loop for a whole period)
        assert s.achieved_rate_hz == pytest.approx(100.0, rel=0.03)
    assert s.jitter["p50_ms"] < 2.0 and s.latency["p50_ms"] < 5.0 and s.misses <= 5


@pytest.mark.parametrize("threaded", [True, False])
def test_deadline_misses_send_the_held_action_and_are_counted(threaded):
    slow = {3, 8}

    def policy(step):
        if step in slow:
            time.sleep(0.075)  # 1.5 periods: misses its deadline
        return step

    sent = []
    cfg = ControlLoopConfig(rate_hz=20.0, max_steps=12, threaded=threaded, print_summary=False)
    with ControlLoop(policy, cfg, send=sent.append) as loop:
        s = loop.run()
    # threaded: the fallback goes out at the slow tick's deadline; synchronous: when the late action comes back.
    # Either way the next tick starts 25 ms late (the stalled call ends then) and normally meets its deadline.
    assert slow <= set(s.miss_steps) and s.misses <= len(slow) + 2  # spares for a loaded machine
    assert s.fallbacks == s.misses and len(sent) == s.steps
    assert not slow & set(sent)  # a late action is never sent
    if s.skipped_ticks == 0:  # sent[i] belongs to tick i: its own action, or on a miss the held previous one
        for i, a in enumerate(sent):
            assert a == (sent[i - 1] if i in s.miss_steps else i)
    assert s.latency["max_ms"] >= 70.0  # the slow calls are in the latency record


def test_a_loop_a_whole_period_behind_skips_the_ticks_it_missed():
    sent = []
    cfg = ControlLoopConfig(rate_hz=20.0, max_steps=6, threaded=False, print_summary=False)
    with ControlLoop(lambda step: time.sleep(0.13) or step if step == 2 else step, cfg, send=sent.append) as loop:
        s = loop.run()
    # tick 2 returns at 230 ms: tick 3 (due 150 ms) is skipped, tick 4 (due 200 ms) runs at once
    assert s.skipped_ticks == 1 and s.miss_steps == [2] and sent == [0, 1, 1, 4, 5, 6]


def test_default_fallback_sends_the_safe_action():
    cfg = ControlLoopConfig(rate_hz=50.0, max_steps=6, deadline_s=0.01, fallback="default",
                            default_action=lambda: "safe", print_summary=False)
    sent = []
    with ControlLoop(lambda step: time.sleep(0.03) if step == 2 else step, cfg, send=sent.append) as loop:
        s = loop.run()
    assert sent[:2] == [0, 1] and sent[2] == "safe" and 2 in s.miss_steps


def test_stop_from_a_signal_handler_ends_the_loop_and_restores_the_handler(capsys):
    before = signal.getsignal(signal.SIGUSR1)
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    timer.start()
    with ControlLoop(lambda step: step, ControlLoopConfig(rate_hz=50.0)) as loop:
        t0 = time.monotonic()
        s = loop.run(handle_signals=(signal.SIGUSR1,))
    assert s.stopped_by == "stop" and time.monotonic() - t0 < 1.0 and 5 <= s.steps <= 20
    assert signal.getsignal(signal.SIGUSR1) is before
    out = capsys.readouterr().out
    assert "deadline misses 0" in out and "latency p50" in out and "p99" in out  # summary printed at the end
    assert s.to_dict()["steps"] == s.steps


def test_callback_errors_stop_the_loop_and_propagate():
    def policy(step):
        if step == 2:
            raise RuntimeError("policy failed")
        return step

    with ControlLoop(policy, ControlLoopConfig(rate_hz=100.0, max_steps=10, print_summary=False)) as loop:
        with pytest.raises(RuntimeError, match="policy failed"):
            loop.run()
        assert loop.summary.stopped_by == "error" and loop.summary.steps == 2


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)


class FakeTrigger:
    """An event set at given times of a fake clock (a robot's observations arriving)."""

    def __init__(self, clock: FakeClock, times: list[float]) -> None:
        self.clock, self.pending = clock, sorted(times)

    def is_set(self) -> bool:
        return bool(self.pending) and self.pending[0] <= self.clock.t

    def clear(self) -> None:
        self.pending = [t for t in self.pending if t > self.clock.t]

    def wait(self, timeout: float) -> bool:
        if self.is_set():
            return True
        if self.pending and self.pending[0] <= self.clock.t + timeout:
            self.clock.t = self.pending[0]
            return True
        self.clock.t += timeout
        return False


def test_a_triggered_loop_ticks_on_each_observation_within_its_spacing():
    clock = FakeClock()
    # observations at a 30 ms phase, silence, then two 20 ms apart (faster than the 10 Hz rate), then one more
    trigger = FakeTrigger(clock, [0.03, 0.13, 0.23, 0.60, 0.62, 0.75])
    ticks = []

    def policy(step):
        ticks.append(clock.t)
        trigger.clear()  # the callback takes the observation
        return step

    cfg = ControlLoopConfig(rate_hz=10.0, max_steps=8, threaded=False, trigger=trigger, spin_s=0.0, print_summary=False)
    sent = []
    with ControlLoop(policy, cfg, send=sent.append, clock=clock, sleep=clock.sleep) as loop:
        s = loop.run()
    # on each observation; 1.5 periods after the last tick when none comes (0.38, 0.53); 0.9 periods apart at least
    # (0.62: the observations of 0.60 and 0.62 in one tick), then on time again (0.75)
    assert ticks == pytest.approx([0.03, 0.13, 0.23, 0.38, 0.53, 0.62, 0.75, 0.90])
    assert sent == list(range(8)) and s.misses == 0 and s.skipped_ticks == 0 and s.stopped_by == "max_steps"


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="rate_hz must be a positive finite number"):
        ControlLoopConfig(rate_hz=0)
    with pytest.raises(ValueError, match=r"fallback must be one of \['hold', 'default'\]"):
        ControlLoopConfig(fallback="zero")
    with pytest.raises(ValueError, match="needs a default_action"):
        ControlLoopConfig(fallback="default")
    with pytest.raises(ValueError, match=r"trigger must have wait\(timeout\) and is_set\(\)"):
        ControlLoopConfig(trigger=object())
    with pytest.raises(TypeError, match="callback must be callable"):
        ControlLoop(42)
