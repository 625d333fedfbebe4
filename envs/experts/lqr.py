"""Linear-quadratic regulators for MuJoCo models, linearised by finite differences.

``mujoco.mjd_transitionFD`` refuses RK4 models (InvertedPendulum-v5, dm_control
cartpole), so the linearisation steps a private ``MjData`` with central
differences instead; the live simulation is never touched.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg


def linearize(model, qpos: np.ndarray, qvel: np.ndarray, ctrl: np.ndarray, nstep: int, eps: float = 1e-5):
    """Discrete-time ``x' = A x + B u`` around ``(x, u)``, with ``x = [qpos, qvel]`` (needs nq == nv).

    Args:
        model: ``mujoco.MjModel``.
        qpos, qvel, ctrl: the operating point.
        nstep: physics steps per control step.
        eps: finite-difference step.

    Returns:
        ``A`` (2 nv, 2 nv) and ``B`` (2 nv, nu).
    """
    import mujoco  # the simulator loads only when it is used: importing the task registry loads none

    if model.nq != model.nv:
        raise ValueError(f"linearize needs nq == nv (hinge/slide joints only), got nq={model.nq} nv={model.nv}")
    data = mujoco.MjData(model)
    nv, nu = model.nv, model.nu

    def step(x: np.ndarray, u: np.ndarray) -> np.ndarray:
        mujoco.mj_resetData(model, data)
        data.qpos[:], data.qvel[:], data.ctrl[:] = x[:nv], x[nv:], u
        mujoco.mj_step(model, data, nstep=nstep)
        return np.concatenate([data.qpos, data.qvel])

    x0 = np.concatenate([qpos, qvel]).astype(np.float64)
    u0 = np.asarray(ctrl, dtype=np.float64).reshape(nu)
    A = np.zeros((2 * nv, 2 * nv))
    B = np.zeros((2 * nv, nu))
    for i in range(2 * nv):
        d = np.zeros(2 * nv)
        d[i] = eps
        A[:, i] = (step(x0 + d, u0) - step(x0 - d, u0)) / (2 * eps)
    for j in range(nu):
        d = np.zeros(nu)
        d[j] = eps
        B[:, j] = (step(x0, u0 + d) - step(x0, u0 - d)) / (2 * eps)
    return A, B


def dlqr(A: np.ndarray, B: np.ndarray, Q: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Gain ``K`` of the discrete LQR, ``u = -K x``: (nu, nx)."""
    P = scipy.linalg.solve_discrete_are(A, B, Q, R)
    return np.linalg.solve(R + B.T @ P @ B, B.T @ P @ A)
