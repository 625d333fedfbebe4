"""Any arm with an MJCF model, simulated as a ROS 2 robot: ``omnipolicy sim-robot --robot FILE``.

:class:`MjcfArm` is the :class:`~omnipolicy.robot_bridge.arms.SimArm` of a robot file that names an ``mjcf`` model
(and no ``sim`` class). It reads the named joints' positions and velocities, applies each control step's command to
the actuator that drives each named joint (``position``: a position actuator's ctrl is the target; ``velocity``: a
velocity actuator's; ``effort``: a motor's), steps the physics ``control period / timestep`` times, and renders the
file's cameras (an MJCF camera by name, shadows off, at the file's sizes; ``MUJOCO_GL=egl`` headless).

A generic arm has no target: :attr:`has_success` is False, so sim-robot runs episodes of fixed length
(``--episode-seconds``) and reports no success. Every episode starts from the model's first keyframe (or its
reference pose ``qpos0`` when it has none), whatever the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from omnipolicy.robot_bridge.arms import SimArm
from omnipolicy.robot_bridge.robot_file import ArmSpec

#: mujoco.mjtTrn.mjTRN_JOINT, mjtBias.mjBIAS_NONE / mjBIAS_AFFINE, mjtJoint.mjJNT_SLIDE / mjJNT_HINGE
_TRN_JOINT, _BIAS_NONE, _BIAS_AFFINE, _SLIDE, _HINGE = 0, 0, 1, 2, 3


def _actuator_kind(model: Any, a: int) -> str:
    """What an actuator's ctrl means: effort (a motor), position (kp, -kp bias) or velocity (kv, -kv bias)."""
    if model.actuator_biastype[a] == _BIAS_NONE:
        return "effort"
    if model.actuator_biastype[a] == _BIAS_AFFINE and model.actuator_biasprm[a, 1] != 0:
        return "position"
    if model.actuator_biastype[a] == _BIAS_AFFINE and model.actuator_biasprm[a, 2] != 0:
        return "velocity"
    return "other"


class MjcfArm(SimArm):
    """An arm simulated from its robot file's MJCF model.

    Args:
        spec: the arm's spec (``spec.mjcf`` set).
        render: unused (cameras render on demand).

    Raises:
        ValueError: no model, a joint the model lacks or that is no hinge/slide, a joint without an actuator of the
            command interface, or a control period that is no whole number of physics steps.
    """

    has_success = False

    def __init__(self, spec: ArmSpec, render: bool = False) -> None:
        # not SimArm.__init__: there is no registered task and no env, only the model
        import mujoco  # noqa: PLC0415  (heavy; only simulating needs it)

        self._mujoco = mujoco
        if not spec.mjcf:
            raise ValueError(f"arm {spec.label!r}: MjcfArm needs the robot file's `mjcf` model")
        self.spec = spec
        self.task = None
        self.env = None
        self.obs: dict[str, Any] = {}
        self.model = mujoco.MjModel.from_xml_path(spec.mjcf)
        self.model.light_castshadow[:] = 0  # shadows off, as envs/ render
        self.data = mujoco.MjData(self.model)
        m, where = self.model, f"{spec.source or spec.name}: model {spec.mjcf}"
        substeps = spec.control_period / m.opt.timestep
        if abs(substeps - round(substeps)) > 1e-6 or round(substeps) < 1:
            raise ValueError(f"{where}: the control period {spec.control_period:g} s (rate_hz) is not a whole number of "
                             f"physics steps of {m.opt.timestep:g} s (option timestep)")
        self.substeps = int(round(substeps))
        names = [m.joint(i).name for i in range(m.njnt)]
        qpos, dof, act = [], [], []
        for j in spec.joints:
            if j not in names:
                raise ValueError(f"{where}: unknown joint {j!r}; the model's joints are {names}")
            i = names.index(j)
            if m.jnt_type[i] not in (_SLIDE, _HINGE):
                raise ValueError(f"{where}: joint {j!r} is no hinge or slide joint")
            qpos.append(int(m.jnt_qposadr[i]))
            dof.append(int(m.jnt_dofadr[i]))
            drives = [a for a in range(m.nu) if m.actuator_trntype[a] == _TRN_JOINT and m.actuator_trnid[a, 0] == i]
            kinds = [_actuator_kind(m, a) for a in drives]
            if spec.limits.interface not in kinds:
                raise ValueError(f"{where}: joint {j!r} has no {spec.limits.interface} actuator (the robot file's command "
                                 f"interface); its actuators are {kinds or 'none'}")
            act.append(drives[kinds.index(spec.limits.interface)])
        self._qpos, self._dof, self._act = np.array(qpos), np.array(dof), np.array(act)
        self._renderers: dict[tuple[int, int], Any] = {}

    @property
    def max_steps(self) -> int | None:
        return None

    def reset(self, seed: int) -> None:
        """The model's first keyframe (or ``qpos0``), at rest; the seed changes nothing (no randomised target)."""
        mj = self._mujoco
        if self.model.nkey > 0:
            mj.mj_resetDataKeyframe(self.model, self.data, 0)
        else:
            mj.mj_resetData(self.model, self.data)
        if self.spec.limits.interface == "position":
            self.data.ctrl[self._act] = self.data.qpos[self._qpos]  # hold the initial pose until commanded
        mj.mj_forward(self.model, self.data)

    def step(self, command: Sequence[float] | np.ndarray) -> None:
        """Set the named joints' actuators to ``command`` (controller order; clamped to their ctrlrange by MuJoCo) and
        advance one control period."""
        self.data.ctrl[self._act] = np.asarray(command, dtype=np.float64)  # (J,)
        self._mujoco.mj_step(self.model, self.data, nstep=self.substeps)

    def joint_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.data
        return (d.qpos[self._qpos].astype(np.float64), d.qvel[self._dof].astype(np.float64),
                d.actuator_force[self._act].astype(np.float64))  # effort: the force the actuators apply

    def task_state(self) -> np.ndarray:
        return np.zeros(len(self.spec.task_state_names))

    def camera(self, height: int, width: int, name: str = "") -> np.ndarray:
        """uint8 (H, W, 3) from the MJCF camera ``name`` (empty: the model's first camera)."""
        r = self._renderers.get((height, width))
        if r is None:
            r = self._renderers[(height, width)] = self._mujoco.Renderer(self.model, height, width)
        r.update_scene(self.data, camera=name or 0)
        return np.asarray(r.render(), dtype=np.uint8)

    def close(self) -> None:
        for r in self._renderers.values():
            r.close()
        self._renderers.clear()
