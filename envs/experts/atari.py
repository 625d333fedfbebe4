"""Atari experts that read the emulator: Pong and Breakout.

ALE drives both games' paddles through the analogue paddle controller: each
frame a press moves a hidden resistance by 23 000 units (92 000 per agent step
at frameskip 4), clamped to [27 450, 790 196], and the paddle drifts to the
position the resistance encodes within about three steps. The resistance is not
in RAM; it is the first int32 of the serialized emulator state, so the experts
read it exactly every step, which makes them robust to sticky actions: a
repeated action shows up in the next reading and the plan adapts.

Both experts plan each contact on a private emulator (sticky actions off)
restored from the real one; see :class:`_PaddleExpert`. They act on hidden
emulator state, which is fine for demonstrations: the learner sees only pixels.
"""

from __future__ import annotations

import numpy as np

from omnipolicy.envs.experts.base import Expert

PRESS = 92_000  # resistance change of one agent step of UP/DOWN (4 frames x 23 000)
R_MIN, R_MAX = 27_450, 790_196


def paddle_resistance(ale) -> int:
    """The paddle controller's resistance (first int32 of the serialized state)."""
    return int.from_bytes(ale.cloneState().serialize()[:4], "little", signed=True)


def with_resistance(state, resistance: int):
    """A copy of an ``ALEState`` whose paddle resistance is ``resistance``."""
    import ale_py  # the simulator loads only when it is used: importing the task registry loads none

    raw = bytearray(state.serialize())
    raw[:4] = int(resistance).to_bytes(4, "little", signed=True)
    return ale_py.ALEState(bytes(raw))


class _Emulator:
    """A private ALE (sticky actions off) that replays the real game's state for lookahead."""

    def __init__(self, ale, game: str, action_set) -> None:
        import ale_py  # the simulator loads only when it is used: importing the task registry loads none

        self.ale = ale_py.ALEInterface()
        self.ale.setInt("random_seed", 0)
        self.ale.setFloat("repeat_action_probability", 0.0)
        self.ale.setLoggerMode(ale_py.LoggerMode.Error)
        self.ale.loadROM(ale_py.roms.get_rom_path(game))
        self.actions = list(action_set)

    def restore(self, state) -> None:
        self.ale.restoreState(state)

    def step(self, action: int) -> int:
        """One agent step (4 frames); returns the reward."""
        return sum(self.ale.act(self.actions[action]) for _ in range(4))

    def ram(self) -> np.ndarray:
        return self.ale.getRAM()


class _PaddleExpert(Expert):
    """Plan each paddle contact on a private emulator, then servo the paddle resistance to the plan.

    When the ball heads for our paddle, the private emulator replays its path up to
    the paddle's line (our paddle can't change it before). From ``PRE_STEPS``
    before that, each resistance reachable in time is tried: written into the
    replayed state (the paddle settles there, as the real one will after the
    presses) and played out by :meth:`_outcome`. Candidates are tried
    most-promising first by :meth:`_key`; the best outcome becomes the target and
    the paddle is pressed toward it. Every step the real resistance is read again,
    so a sticky action that knocks the paddle off its lattice triggers a re-plan.
    """

    GAME = ""
    PADDLE_RAM = 0
    DEC, INC, NOOP = 2, 3, 0  # RIGHT lowers the resistance, LEFT raises it
    SETTLE = 3
    """Steps the paddle needs to reach a new resistance's position."""
    PRE_STEPS = 6
    """Plans are played out from this many steps before the ball reaches the paddle's line."""
    LATE = 0
    """Presses allowed beyond the ``SETTLE`` margin (the paddle mostly settles in two steps)."""
    TELEPORT = False
    """Also write the candidate's settled paddle position into RAM (no sweep across the ball)."""
    TRIES = 8
    """Candidates played out per plan at most."""

    def reset(self, env, obs) -> None:
        if not hasattr(self, "sim"):
            self.sim = _Emulator(env.ale, self.GAME, env.env.unwrapped._action_set)
            self._reference = env.ale.cloneState()
            self._positions: dict[int, int] = {}
        self.prev = (0, 0)
        self.path: list[tuple[int, int]] = []  # predicted ball after each coming step, to the contact
        self.pre_state = None
        self.target: int | None = None

    # -- per game -------------------------------------------------------------------------------
    def _ball(self, ram: np.ndarray) -> tuple[int, int]:
        """(position along the paddle's axis of travel, position toward the paddle); (.., 0) if no ball."""
        raise NotImplementedError

    PADDLE_LINE = 0
    """Ball coordinate toward the paddle from which it can touch the paddle."""

    def _crossed(self, before: tuple[int, int], after: tuple[int, int]) -> bool:
        """The ball reached the paddle's line, turned back, or vanished between two steps."""
        return after[1] == 0 or after[1] < before[1] or after[1] >= self.PADDLE_LINE

    def _incoming(self, ball: tuple[int, int], prev: tuple[int, int]) -> bool:
        """Whether to plan now: the ball moves toward our paddle."""
        return ball[1] != 0 and prev[1] != 0 and ball[1] > prev[1]

    def _outcome(self, resistance: int, nudge: int = 0) -> float:
        """Value of playing the pre-contact state out with the paddle at ``resistance`` (< 0: a miss)."""
        raise NotImplementedError

    def _key(self, resistance: int) -> float:
        """How promising a candidate looks before playing it out (smaller first)."""
        raise NotImplementedError

    def _idle(self, ram: np.ndarray, resistance: int) -> int:
        """Action while the ball is not on its way to us."""
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def position(self, resistance: int) -> int:
        """Settled paddle position (RAM) at ``resistance``, measured once on the private emulator."""
        if resistance not in self._positions:
            self.sim.restore(with_resistance(self._reference, resistance))
            for _ in range(self.SETTLE + 1):
                self.sim.step(self.NOOP)
            self._positions[resistance] = int(self.sim.ram()[self.PADDLE_RAM])
        return self._positions[resistance]

    def _replay(self, state) -> None:
        """Replay the ball's path to the paddle's line; keep the state ``PRE_STEPS`` before it.

        Plans are played out from that state, so a candidate's paddle has settled before the
        ball comes within reach (a paddle still sweeping across would score false hits).
        """
        self.sim.restore(state)
        states, self.path = [state], []
        ball = self._ball(self.sim.ram())
        for _ in range(120):
            self.sim.step(self.NOOP)
            after = self._ball(self.sim.ram())
            if self._crossed(ball, after):
                self.line_ball = after
                break
            self.path.append(after)
            states.append(self.sim.ale.cloneState())
            ball = after
        self.pre_state = states[max(0, len(states) - self.PRE_STEPS)]
        self.pre_ball = self._ball_in(self.pre_state)

    def _start(self, resistance: int, nudge: int = 0) -> None:
        """Load the planning state with the paddle at ``resistance`` (its position ``nudge`` px off)."""
        self.sim.restore(with_resistance(self.pre_state, resistance))
        if self.TELEPORT:
            self.sim.ale.setRAM(self.PADDLE_RAM, int(np.clip(self.position(resistance) + nudge, 0, 255)))

    def _ball_in(self, state) -> tuple[int, int]:
        self.sim.restore(state)
        return self._ball(self.sim.ram())

    @staticmethod
    def candidates(resistance: int, steps: int) -> dict[int, int]:
        """Resistances reachable within ``steps`` presses -> presses needed.

        Direct presses keep the lattice phase (multiples of 92 000 from ``resistance``); a
        wall clamps the resistance, so going through a wall reaches the wall's own lattice.
        """
        out: dict[int, int] = {}
        for k in range(-steps, steps + 1):
            r = int(np.clip(resistance + PRESS * k, R_MIN, R_MAX))
            out[r] = min(out.get(r, steps + 1), abs(k))
        for wall, sign in ((R_MIN, 1), (R_MAX, -1)):
            to_wall = -(-abs(resistance - wall) // PRESS)
            for j in range(0, steps - to_wall + 1):
                r = wall + sign * PRESS * j
                if R_MIN <= r <= R_MAX:
                    out[r] = min(out.get(r, steps + 1), to_wall + j)
        return out

    def _toward(self, resistance: int, target: int) -> int:
        if target == resistance:
            return self.NOOP
        if abs(target - resistance) % PRESS and target not in (R_MIN, R_MAX):
            # Off our lattice: go through a wall that shares the target's lattice.
            walls = [w for w in (R_MIN, R_MAX) if abs(target - w) % PRESS == 0 and w != resistance]
            if walls:
                wall = min(walls, key=lambda w: abs(resistance - w) + abs(target - w))
                return self.DEC if wall < resistance else self.INC
        return self.INC if target > resistance else self.DEC

    def _plan(self, resistance: int, steps: int) -> int | None:
        """The best-valued candidate among the ``TRIES`` most promising; ties broken at random
        (a deterministic choice can lock the ball into a loop that never reaches a brick)."""
        options = sorted((self._key(r), n, r) for r, n in self.candidates(resistance, max(steps, 0)).items())
        scored = [(self._outcome(r), r) for _, _, r in options[: self.TRIES]]
        scored = [(v, r) for v, r in scored if v >= 0]
        if not scored:
            return None
        # Best value first (random among equals); with a teleported paddle, keep the first whose
        # hit also survives the paddle 1 px off (settled positions vary by a pixel with history).
        self.last_value = max(v for v, _ in scored)
        order = self.rng.permutation(len(scored))
        ranked = [scored[i][1] for i in sorted(order, key=lambda i: -scored[i][0])]
        if self.TELEPORT:
            for r in ranked:
                if all(self._outcome(r, nudge) >= 0 for nudge in (-1, 1)):
                    return r
        return ranked[0]

    def act(self, env, obs):
        ale = env.ale
        ram = ale.getRAM()
        ball = self._ball(ram)
        resistance = paddle_resistance(ale)
        if self._incoming(ball, self.prev):
            if self.path and self.path[0] == ball:
                self.path.pop(0)
            elif not self.path and self.target is not None and ball[1] > self.prev[1]:
                pass  # past the planning point, the contact under way: hold the planned position
            else:
                self._replay(ale.cloneState())
                self.target = None
            budget = len(self.path) + 1 - self.SETTLE + self.LATE
            if not self.TELEPORT:  # the candidate's paddle starts moving at the planning state
                budget = min(budget, len(self.path) + 1 - self.PRE_STEPS + self.LATE)
            if self.target is not None and self.target not in self.candidates(resistance, max(budget, 0)):
                self.target = None
            if self.target is None:
                self.target = self._plan(resistance, budget)
            if self.target is None:  # nothing verified in time: head for the most promising spot anyway
                reach = self.candidates(resistance, max(len(self.path), 1))
                action = self._toward(resistance, min(reach, key=lambda r: (self._key(r), reach[r])))
            else:
                action = self._toward(resistance, self.target)
        else:
            self.path, self.target = [], None
            action = self._idle(ram, resistance)
        self.prev = ball
        return self.discrete(action)

    def _nearest(self, resistance: int, position: float, steps: int = 8) -> int:
        """The resistance reachable from ``resistance`` whose paddle position is nearest ``position``."""
        reach = self.candidates(resistance, steps)
        return min(reach, key=lambda r: (abs(self.position(r) - position), reach[r]))


class PongExpert(_PaddleExpert):
    """Pong: return every ball, aiming the hit 4 px above the paddle's reference row (a steep return).

    RAM: ball x 49 (grows toward us), ball y 54 (0 when no ball), our paddle y 51. A
    lookahead study over thousands of hits found offsets ``ball_y - paddle_y`` of -6..-2
    at the step before contact score almost always; the planner tries those first and
    keeps the first candidate that scores (else one that returns the ball).
    """

    GAME = "pong"
    PADDLE_RAM = 51
    AIM = -4

    def _ball(self, ram):
        return int(ram[54]), int(ram[49]) if ram[54] else 0

    PADDLE_LINE = 200
    PRE_STEPS = 7
    LATE = 4

    def _key(self, resistance):
        return abs(self.pre_ball[0] - self.position(resistance) - self.AIM)

    def _outcome(self, resistance):
        self._start(resistance)
        x, hit = int(self.sim.ram()[49]), False
        for _ in range(90):
            reward = self.sim.step(self.NOOP)
            nx = int(self.sim.ram()[49])
            if reward:
                return 2.0 if reward > 0 else -1.0
            if not hit and nx < x:
                hit = True
            elif hit and nx > x:
                return 1.0  # returned; the opponent sent it back
            if not hit and nx >= 200:
                return -1.0
            x = nx
        return 1.0 if hit else -1.0

    def _plan(self, resistance, steps):
        # Stop at the first candidate that scores: it is the nearest to the aim that does.
        options = sorted((self._key(r), n, r) for r, n in self.candidates(resistance, max(steps, 0)).items())
        fallback = None
        for _, _, r in options[: self.TRIES]:
            value = self._outcome(r)
            if value >= 2.0:
                return r
            if value >= 0 and fallback is None:
                fallback = r
        return fallback

    def _idle(self, ram, resistance):
        # Wait mid-court: every height is then a few presses away.
        return self._toward(resistance, self._nearest(resistance, 120, steps=1))


class BreakoutExpert(_PaddleExpert):
    """Breakout: serve with FIRE, and of the paddle positions that return the ball, take the one
    whose return breaks the most bricks in the next ``LOOKAHEAD`` steps.

    RAM: paddle x 72, ball x 99, ball y 101 (0 when no ball; grows downward). Actions:
    0 NOOP, 1 FIRE, 2 RIGHT, 3 LEFT.
    """

    GAME = "breakout"
    PADDLE_RAM = 72
    PADDLE_LINE = 168
    PRE_STEPS = 2
    TELEPORT = True
    LOOKAHEAD = 45
    TRIES = 6
    FIRE = 1
    CENTRE = 8
    """Paddle x (RAM, left edge) is about this far left of the ball's x at a centred hit."""

    def _ball(self, ram):
        return int(ram[99]), int(ram[101])

    def _incoming(self, ball, prev):
        # The ball's whole flight is deterministic (bricks included): plan from the moment it is in play.
        return ball[1] != 0

    def _crossed(self, before, after):
        return after[1] == 0 or (after[1] >= self.PADDLE_LINE and after[1] > before[1])

    def _key(self, resistance):
        return abs(self.position(resistance) + self.CENTRE - self.line_ball[0])

    LONG_LOOKAHEAD = 150
    """Used after ``STALE`` plans in a row foresee no brick (the last bricks are far up)."""
    STALE = 10

    def reset(self, env, obs) -> None:
        super().reset(env, obs)
        self.stale = 0

    def _plan(self, resistance, steps):
        target = super()._plan(resistance, steps)
        if target is not None:
            self.stale = self.stale + 1 if self.last_value <= 1.0 else 0
        return target

    @property
    def lookahead(self) -> int:
        return self.LONG_LOOKAHEAD if self.stale >= self.STALE else self.LOOKAHEAD

    def _outcome(self, resistance, nudge=0):
        self._start(resistance, nudge)
        lives = self.sim.ale.lives()
        y, hit, value = int(self.sim.ram()[101]), False, 0.0
        for _ in range(60 + self.lookahead):
            value += self.sim.step(self.NOOP)
            ny = int(self.sim.ram()[101])
            if self.sim.ale.lives() < lives or (not hit and (ny == 0 or ny > 200)):
                return -1.0 if not hit else value
            if not hit and ny < y:
                hit, remaining = True, self.lookahead
            if hit:
                remaining -= 1
                if remaining == 0:
                    return 1.0 + value
            y = ny
        return 1.0 + value if hit else -1.0

    def _idle(self, ram, resistance):
        ball = self._ball(ram)
        if ball[1] == 0:
            return self.FIRE  # serve
        return self._toward(resistance, self._nearest(resistance, ball[0] - self.CENTRE, steps=1))


# -- teachers: what the learner can see decides the action ------------------------------------------------------

def _reflect(value: float, low: float, high: float) -> float:
    """``value`` folded into ``[low, high]`` as a ball bounces between two walls."""
    span = high - low
    m = (value - low) % (2 * span)
    return low + (m if m <= span else 2 * span - m)


class _Tracker(Expert):
    """An imitable teacher: each action is a function of what an object detector sees in the last two frames.

    The lookahead experts act on hidden emulator state (the paddle controller's resistance, the outcome of
    candidate contacts played out ahead) and move the paddle only in the last few steps before a contact, so a
    learner that sees the screen cannot tell when they will press; with the ball's position given exactly, a
    cloned policy still plays at the random level (docs/results.md, "Atari with the ball located"). A tracker reads
    only the objects a ``-located`` task shows (:data:`~omnipolicy.envs.atari.LOCATED`: the ball now and one step
    before, the paddle), predicts where the ball crosses the paddle's line (bouncing off the side walls) and presses
    toward it, with a dead band against the paddle's lattice of ~20 px per press. It plays worse than the lookahead
    expert and is cloned far better, so it is the Atari tasks' teacher (demonstrations and DAgger labels) while the
    expert stays the normalisation's 100.
    """

    GAME = ""
    UP, DOWN, NOOP = 3, 2, 0
    """Actions that move the paddle's RAM coordinate up and down."""

    def reset(self, env, obs) -> None:
        from omnipolicy.envs.atari import LOCATED  # the env module, loaded only when an Atari task runs

        self.address = [LOCATED[self.GAME][k] for k in ("ball_x", "ball_y")] + [LOCATED[self.GAME]["paddle"]]
        self.ball_before: np.ndarray | None = None
        self.paddle_before: float | None = None

    def act(self, env, obs):
        ball_x, ball_y, paddle = env.ale.getRAM()[self.address].astype(np.float64)
        before = self.ball_before
        self.ball_before = np.array([ball_x, ball_y])
        paddle_before, self.paddle_before = self.paddle_before, paddle
        return self.discrete(self._press(ball_x, ball_y, before, paddle, paddle_before))

    DEAD = 0.0
    """Half-width of the band around the target where the tracker does not press."""
    LEAD = 0.0
    """Share of its last step the paddle is judged ahead: it keeps moving for a few steps after a press, and a
    tracker that ignores this overshoots and swings around its target."""
    AIM = 0.0
    """The paddle's coordinate at a hit, relative to the ball's."""

    def _toward(self, paddle: float, paddle_before: float | None, target: float) -> int:
        ahead = paddle + self.LEAD * (0.0 if paddle_before is None else paddle - paddle_before)
        target += self.AIM
        return self.UP if ahead < target - self.DEAD else self.DOWN if ahead > target + self.DEAD else self.NOOP

    def _press(self, ball_x, ball_y, before, paddle, paddle_before) -> int:
        raise NotImplementedError


class PongTracker(_Tracker):
    """Pong's teacher: toward where the ball will cross our paddle's line, mid-court while it moves away.

    RAM: ball x grows toward us; ball y is 0 out of play and bounces between ``WALLS``. Over the 10 collection
    seeds it scores -6.3 a 2000-step episode (the lookahead expert +7.65, random -20.3). Its paddle swings ~20 px
    around the target; damping the swing (``LEAD`` 0.5, ``DEAD`` 6, ``AIM`` -4) plays better (-2.6) but presses
    NOOP three times as often, on the paddle's speed, and a student from pixels no longer learns to return the
    ball (docs/results.md), so the tracker stays undamped.
    """

    GAME = "Pong"
    LINE = 187
    """Ball x at which our paddle returns it."""
    WALLS = (44, 207)
    IDLE = 120
    DEAD = 3

    def _press(self, ball_x, ball_y, before, paddle, paddle_before):
        if ball_y < 1:  # out of play
            target = self.IDLE
        elif before is None or before[1] < 1:  # just served: no motion yet
            target = ball_y
        elif ball_x > before[0]:  # on its way to us
            vx, vy = ball_x - before[0], ball_y - before[1]
            target = _reflect(ball_y + vy * max(0.0, (self.LINE - ball_x) / vx), *self.WALLS)
        else:
            target = self.IDLE
        return self._toward(paddle, paddle_before, target)


class BreakoutTracker(_Tracker):
    """Breakout's teacher: serve, and keep the paddle under where the falling ball will cross its line.

    RAM: ball y grows downward and is 0 out of play; ball x bounces between ``WALLS``; the paddle's x is its left
    edge, ``-AIM`` left of a centred hit. The paddle still moves for a few steps after a press, so the tracker
    judges it ``LEAD`` of its last step ahead. Over the 10 collection seeds it scores 145 a 2000-step episode (range
    46-365; the lookahead expert 379, random 1.1).
    """

    GAME = "Breakout"
    UP, DOWN = 2, 3  # RIGHT moves the paddle's x up, LEFT down
    FIRE = 1
    LINE = 175
    WALLS = (57, 201)
    AIM = -9  # the paddle's x is its left edge: a centred hit
    DEAD = 8
    LEAD = 0.3

    def _press(self, ball_x, ball_y, before, paddle, paddle_before):
        if ball_y < 1:
            return self.FIRE  # serve
        if before is not None and before[1] >= 1 and ball_y > before[1]:  # falling toward the paddle
            vx, vy = ball_x - before[0], ball_y - before[1]
            ball_x = _reflect(ball_x + vx * max(0.0, (self.LINE - ball_y) / vy), *self.WALLS)
        return self._toward(paddle, paddle_before, ball_x)
