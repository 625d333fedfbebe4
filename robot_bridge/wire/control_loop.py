"""A fixed-rate control loop that measures itself and never sends a late action.

:class:`ControlLoop` calls a policy callback once per tick of a fixed grid on
the monotonic clock (tick ``k`` is due at ``t0 + k / rate``), hands the action
to ``send``, and records for every tick:

- **latency**: from the callback's start (the observation goes in) to the
  moment its action is handed to ``send`` (the action goes out);
- **jitter**: how late the loop woke for the tick (wake time minus due time);
- **deadline misses**: the action was not ready ``deadline`` seconds after the
  tick was due. The late action is never sent; the configured fallback is
  sent instead (``hold``: the last action sent again; ``default``: a safe
  action given by the task, a value or a zero-argument callable), and counted.

By default the callback runs in a worker thread and the loop waits for it
only until the deadline, so the fallback goes out on time even when the
policy stalls; while a stalled callback is still running, later ticks miss
too (a second call is never started beside it). With ``threaded=False`` the
callback runs in the loop's thread and a late action is replaced after the
fact. When the loop falls a whole period behind it skips the ticks it
missed (counted) instead of bursting to catch up.

With a ``trigger`` (an event set when a new observation is complete), a tick is
due when the event is set instead of on the grid: at the soonest
``TRIGGER_SPACING[0]`` periods after the last tick and at the latest
``TRIGGER_SPACING[1]`` periods after it, set or not. Acting on each observation
as it arrives puts no phase lag between the robot's clock and the loop's.

The loop ends after ``max_steps`` ticks, ``duration_s`` seconds, or when
:meth:`ControlLoop.stop` is called -- from another thread or from a signal
handler (it only sets a flag; the loop notices it within one period).
:meth:`ControlLoop.run` can install that handler for SIGINT/SIGTERM itself and
restores the previous ones afterwards. The summary (p50 / p99 / max latency,
jitter, misses) is printed at the end and returned as a :class:`LoopSummary`.

>>> sent = []
>>> cfg = ControlLoopConfig(rate_hz=200.0, max_steps=5, print_summary=False)
>>> with ControlLoop(lambda step: step * 10, cfg, send=sent.append) as loop:
...     summary = loop.run()
>>> len(sent), summary.steps, set(sent) <= {0, 10, 20, 30, 40}  # a missed tick (a loaded machine) resends its last
(5, 5, True)
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

FALLBACKS = ("hold", "default")
TRIGGER_SPACING = (0.9, 1.5)
"""With a trigger: the least and the most time between two ticks, in periods. The least keeps a robot that publishes
faster than the control rate from driving the loop (and the rate limit per tick) faster; the most lets the loop
act (or hold) when the robot falls silent."""


@dataclass(frozen=True)
class ControlLoopConfig:
    """Rate, deadline and fallback of a :class:`ControlLoop`."""

    rate_hz: float = 20.0
    """Ticks per second (Gato's real robot ran at 20 Hz)."""
    deadline_s: float | None = None
    """Seconds after a tick is due by which its action must be out; default one period."""
    fallback: str = "hold"
    """On a deadline miss send `hold` (the last action sent again) or `default` (the task's safe action)."""
    default_action: Any = None
    """The safe action for `default` (a value, or a callable returning it); also sent by `hold` before any action."""
    max_steps: int | None = None
    """Stop after this many ticks (None: no limit)."""
    duration_s: float | None = None
    """Stop after this many seconds (None: no limit)."""
    threaded: bool = True
    """Run the callback in a worker thread so a fallback goes out at the deadline even while it stalls."""
    trigger: Any = None
    """Tick when this event is set rather than on the fixed grid (see the module's docstring): an object with
    ``is_set()`` and ``wait(timeout) -> bool`` such as a ``threading.Event``; the callback clears it when it takes the
    observation."""
    spin_s: float = 0.0005
    """Busy-wait this long before each tick instead of sleeping (sleep wakes up late by up to a scheduler slice)."""
    print_summary: bool = True
    """Print the summary when the loop ends."""

    def __post_init__(self) -> None:
        if not (isinstance(self.rate_hz, (int, float)) and math.isfinite(self.rate_hz) and self.rate_hz > 0):
            raise ValueError(f"ControlLoopConfig.rate_hz must be a positive finite number, got {self.rate_hz!r}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"ControlLoopConfig.deadline_s must be > 0 or None (one period), got {self.deadline_s!r}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"ControlLoopConfig.fallback must be one of {list(FALLBACKS)}, got {self.fallback!r}")
        if self.fallback == "default" and self.default_action is None:
            raise ValueError("ControlLoopConfig.fallback='default' needs a default_action (the task's safe action)")
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 0):
            raise ValueError(f"ControlLoopConfig.max_steps must be an int >= 0 or None, got {self.max_steps!r}")
        if self.duration_s is not None and not self.duration_s >= 0:
            raise ValueError(f"ControlLoopConfig.duration_s must be >= 0 or None, got {self.duration_s!r}")
        if self.trigger is not None and not (callable(getattr(self.trigger, "wait", None))
                                             and callable(getattr(self.trigger, "is_set", None))):
            raise ValueError(f"ControlLoopConfig.trigger must have wait(timeout) and is_set() (a threading.Event), "
                             f"got {type(self.trigger).__name__}")
        if not self.spin_s >= 0:
            raise ValueError(f"ControlLoopConfig.spin_s must be >= 0, got {self.spin_s!r}")

    @property
    def period_s(self) -> float:
        return 1.0 / self.rate_hz

    @property
    def deadline(self) -> float:
        """The deadline in seconds after the tick (one period unless set)."""
        return self.period_s if self.deadline_s is None else self.deadline_s


def _stats_ms(values_s: Sequence[float]) -> dict[str, float]:
    if not len(values_s):
        return {"p50_ms": math.nan, "p99_ms": math.nan, "max_ms": math.nan, "mean_ms": math.nan}
    ms = np.asarray(values_s, dtype=np.float64) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "mean_ms": float(ms.mean())}


@dataclass
class LoopSummary:
    """What a run measured.

    Attributes:
        steps: ticks served (an action or a fallback was due).
        rate_hz: the configured rate; achieved_rate_hz: ticks per second measured between the first and last wake-up.
        duration_s: from the first tick to the end of the last.
        latency: p50/p99/max/mean ms from callback start to action out (late callbacks: to their return).
        jitter: p50/p99/max/mean ms the loop woke after each tick was due.
        misses: ticks whose action was not out by the deadline; fallbacks: fallback actions sent.
        skipped_ticks: ticks skipped because the loop fell a whole period behind.
        miss_steps: the tick indices that missed (the first 1000).
        stopped_by: ``max_steps``, ``duration``, ``stop`` or ``error``.
    """

    steps: int
    rate_hz: float
    achieved_rate_hz: float
    duration_s: float
    latency: dict[str, float]
    jitter: dict[str, float]
    misses: int
    fallbacks: int
    skipped_ticks: int
    miss_steps: list[int] = field(default_factory=list)
    stopped_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lat, jit = self.latency, self.jitter
        return (f"control loop: {self.steps} steps at {self.achieved_rate_hz:.2f} Hz (target {self.rate_hz:g}) "
                f"in {self.duration_s:.2f} s; latency p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, "
                f"max {lat['max_ms']:.2f} ms; jitter p50 {jit['p50_ms']:.3f} ms, p99 {jit['p99_ms']:.3f} ms, "
                f"max {jit['max_ms']:.3f} ms; deadline misses {self.misses} ({self.fallbacks} fallbacks sent), "
                f"skipped ticks {self.skipped_ticks}; stopped by {self.stopped_by}")


class _Worker:
    """One thread that runs the callback for one tick at a time."""

    def __init__(self, callback: Callable[[int], Any], clock: Callable[[], float]) -> None:
        self.callback, self.clock = callback, clock
        self._job = threading.Condition()
        self._step: int | None = None
        self._closed = False
        self.done = threading.Event()
        self.busy = False
        self.result: tuple[int, Any, float, float, BaseException | None] | None = None
        self.thread = threading.Thread(target=self._run, name="control-loop-callback", daemon=True)
        self.thread.start()

    def submit(self, step: int) -> None:
        self.busy = True
        self.done.clear()
        with self._job:
            self._step = step
            self._job.notify()

    def _run(self) -> None:
        while True:
            with self._job:
                while self._step is None and not self._closed:
                    self._job.wait()
                if self._closed:
                    return
                step, self._step = self._step, None
            start = self.clock()
            action, error = None, None
            try:
                action = self.callback(step)
            except BaseException as e:  # handed to the loop thread, which re-raises it
                error = e
            self.result = (step, action, start, self.clock(), error)
            self.busy = False
            self.done.set()

    def close(self, timeout: float) -> None:
        with self._job:
            self._closed = True
            self._job.notify()
        self.thread.join(timeout)


class ControlLoop:
    """Run ``callback(step) -> action`` at a fixed rate and hand each action to ``send``.

    Args:
        callback: reads the newest observation and returns the action of tick ``step``.
        config: rate, deadline, fallback and stop conditions.
        send: called in the loop's thread with every action that goes out (callback results
            on time, and fallbacks); ``None`` only records.
        clock: a monotonic clock in seconds (tests may pass a fake one with ``sleep``).
        sleep: sleeps a number of seconds.

    Use it as a context manager (the worker thread stops on exit), or call
    :meth:`close` yourself.
    """

    def __init__(
        self,
        callback: Callable[[int], Any],
        config: ControlLoopConfig | None = None,
        send: Callable[[Any], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not callable(callback):
            raise TypeError(f"ControlLoop callback must be callable, got {type(callback).__name__}")
        self.callback = callback
        self.config = ControlLoopConfig() if config is None else config
        self.send = send
        self.clock, self.sleep = clock, sleep
        self._stop = False
        self._worker: _Worker | None = None
        self.last_action: Any = None
        self.summary: LoopSummary | None = None

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> "ControlLoop":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker thread (a callback still running is left to finish on its own)."""
        self._stop = True
        if self._worker is not None:
            self._worker.close(timeout=self.config.period_s)
            self._worker = None

    def stop(self, *_: Any) -> None:
        """Ask the loop to end after the current tick. Safe from a signal handler (it only sets a flag)."""
        self._stop = True

    # ---------------------------------------------------------------- timing
    def _wait_until(self, t: float) -> None:
        spin = self.config.spin_s
        while True:
            left = t - self.clock()
            if left <= 0:
                return
            if left > spin:
                self.sleep(left - spin)
            # else: busy-wait the last ``spin`` seconds

    def _wait_for_trigger(self, last_due: float | None) -> float:
        """Wait for the trigger (at most :data:`TRIGGER_SPACING` after the last tick); returns the tick's due time (the
        caller waits until it)."""
        period, trigger = self.config.period_s, self.config.trigger
        now = self.clock()
        earliest = now if last_due is None else last_due + TRIGGER_SPACING[0] * period
        latest = (now if last_due is None else last_due) + TRIGGER_SPACING[1] * period
        fired = trigger.is_set()
        while not fired and not self._stop:
            left = latest - self.clock()
            if left <= 0:
                break
            fired = trigger.wait(min(left, period))  # in slices: a stop is noticed within a period
        return max(self.clock(), earliest) if fired else latest

    def _fallback(self) -> Any:
        cfg = self.config
        if cfg.fallback == "hold" and self.last_action is not None:
            return self.last_action
        d = cfg.default_action
        return d() if callable(d) else d

    def _emit(self, action: Any) -> None:
        if action is None:
            return  # nothing to hold yet and no default given: send nothing
        if self.send is not None:
            self.send(action)
        self.last_action = action

    # ------------------------------------------------------------------- run
    def run(self, handle_signals: Sequence[int] = ()) -> LoopSummary:
        """Run until a stop condition; print and return the summary.

        Args:
            handle_signals: signals (e.g. ``(signal.SIGINT, signal.SIGTERM)``) whose handler
                becomes :meth:`stop` for the run (main thread only); the previous handlers come back after.

        Raises:
            Exception: whatever the callback or ``send`` raised (the loop stops first).
        """
        cfg = self.config
        previous = {s: signal.signal(s, self.stop) for s in handle_signals}
        self._stop = False
        if cfg.threaded and self._worker is None:
            self._worker = _Worker(self.callback, self.clock)
        period, deadline = cfg.period_s, cfg.deadline
        latencies: list[float] = []
        jitters: list[float] = []
        misses: list[int] = []
        fallbacks = skipped = steps = 0
        stopped_by = "stop"
        t0 = self.clock() + min(period, 0.001)
        end = math.inf if cfg.duration_s is None else t0 + cfg.duration_s
        k = 0
        first_wake = last_wake = due = None
        try:
            while True:
                if self._stop:
                    break
                if cfg.max_steps is not None and steps >= cfg.max_steps:
                    stopped_by = "max_steps"
                    break
                due = t0 + k * period if cfg.trigger is None else self._wait_for_trigger(due)
                if due >= end or self._stop:
                    stopped_by = "duration" if due >= end else "stop"
                    break
                self._wait_until(due)
                wake = self.clock()
                first_wake = wake if first_wake is None else first_wake
                last_wake = wake
                jitters.append(wake - due)
                action, on_time = self._tick(k, due + deadline, latencies)
                if on_time:
                    self._emit(action)
                else:
                    misses.append(k)
                    fb = self._fallback()
                    fallbacks += fb is not None
                    self._emit(fb)
                steps += 1
                k += 1
                behind = -math.inf if cfg.trigger is not None else self.clock() - (t0 + k * period)
                if behind > period:  # a whole period late: skip the ticks already missed
                    n = int(behind // period)
                    skipped += n
                    k += n
        except BaseException:
            stopped_by = "error"
            raise
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            duration = max(self.clock() - t0, 1e-9)
            self.summary = LoopSummary(
                steps=steps,
                rate_hz=cfg.rate_hz,
                achieved_rate_hz=(steps - 1) / (last_wake - first_wake) if steps > 1 and last_wake > first_wake else 0.0,
                duration_s=duration,
                latency=_stats_ms(latencies),
                jitter=_stats_ms(jitters),
                misses=len(misses),
                fallbacks=fallbacks,
                skipped_ticks=skipped,
                miss_steps=misses[:1000],
                stopped_by=stopped_by,
            )
            if cfg.print_summary:
                print(self.summary, flush=True)
        return self.summary

    def _tick(self, k: int, deadline_at: float, latencies: list[float]) -> tuple[Any, bool]:
        """Get tick ``k``'s action; ``(action, on_time)``."""
        w = self._worker
        if w is None:  # synchronous: run it here, judge it after
            start = self.clock()
            action = self.callback(k)
            out = self.clock()
            latencies.append(out - start)
            return action, out <= deadline_at
        if w.busy:  # the previous callback is still running past its deadline
            w.done.wait(max(0.0, deadline_at - self.clock()))
            if w.busy:
                return None, False  # this tick misses too
            self._collect(w, latencies, late=True)  # it finished meanwhile; its action is stale, never sent
        w.submit(k)
        w.done.wait(max(0.0, deadline_at - self.clock()))
        if w.busy:
            return None, False  # collected (as late) when it finishes
        out = self.clock()
        action = self._collect(w, latencies, late=False, out=out)
        return action, out <= deadline_at

    def _collect(self, w: _Worker, latencies: list[float], late: bool, out: float | None = None) -> Any:
        step, action, start, end, error = w.result
        w.result = None
        if error is not None:
            raise error
        latencies.append((end if late else out) - start)
        return action
