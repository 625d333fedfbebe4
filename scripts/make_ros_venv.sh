#!/usr/bin/env bash
# Create the rclpy virtual environment used by the `ros`-marked tests, by
# scripts/bench_bridge.py and by `omnipolicy sim-robot|deploy --transport rclpy`:
# PyPI's unofficial `ros-rclpy` wheels (ROS 2 Kilted, Fast DDS RMW) in their own
# venv, because their `ros-wheels-bootstrapper` adds a .pth that re-executes
# Python with LD_LIBRARY_PATH set.
#
# usage: scripts/make_ros_venv.sh [--with-sim] [--with-torch] [VENV_DIR]   (default: <repo>/.venv-ros)
#   (no option)   rclpy + message packages + numpy/tyro/tqdm: the echo node and the transports.
#   --with-sim    also the simulators and the package's light dependencies (mujoco 3.3.0,
#                 dm_control 1.0.28, gymnasium 1.4.0, sentencepiece, ...): `omnipolicy sim-robot`
#                 as a real rclpy node, and `deploy --actor expert --transport rclpy`. No torch.
#   --with-torch  implies --with-sim, plus torch 2.13.0 (installed FIRST and pinned, so pip
#                 never pulls a CUDA build) and safetensors: `deploy --actor policy --transport rclpy`
#                 runs a checkpoint in this venv. We install torch here rather than borrowing
#                 .venv's site-packages through PYTHONPATH: PYTHONPATH entries come before this
#                 venv's own site-packages, so .venv's numpy/yaml/... would shadow the ones the
#                 ROS wheels were installed with, and the pair breaks whenever either venv changes.
# Stamps: .omnipolicy-ros-ok, .omnipolicy-ros-sim-ok, .omnipolicy-ros-torch-ok (the tests read them).
# Needs CPython 3.11 (the wheels are cp311).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WITH_SIM=0
WITH_TORCH=0
VENV=""
for arg in "$@"; do
    case "$arg" in
        --with-sim) WITH_SIM=1 ;;
        --with-torch) WITH_SIM=1; WITH_TORCH=1 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        -*) echo "make_ros_venv.sh: unknown option $arg (expected --with-sim, --with-torch or a directory)" >&2; exit 2 ;;
        *) VENV="$arg" ;;
    esac
done
VENV="${VENV:-$ROOT/.venv-ros}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
    echo "make_ros_venv.sh: the ros-rclpy wheels are cp311; $PYTHON is $("$PYTHON" -V 2>&1). Set PYTHON=python3.11." >&2
    exit 1
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
"${PIP[@]}" --upgrade pip
if [ "$WITH_TORCH" = 1 ]; then
    # FIRST and pinned: an unpinned torch (or a package depending on it) would pull a multi-GB CUDA build.
    "${PIP[@]}" torch==2.13.0
fi
"${PIP[@]}" \
    ros-rclpy ros-rmw-fastrtps-cpp ros-sensor-msgs ros-std-msgs ros-trajectory-msgs \
    numpy tyro tqdm
if [ "$WITH_SIM" = 1 ]; then
    # The simulators at the versions .venv uses, and what `omnipolicy.envs` / `omnipolicy.tokenizers` import.
    "${PIP[@]}" mujoco==3.3.0 dm_control==1.0.28 gymnasium==1.4.0 sentencepiece pyarrow pillow safetensors
fi
# The package itself, without its declared dependencies (they include torch, unpinned).
"${PIP[@]}" --no-deps -e "$ROOT"
# Smoke check: rclpy initialises with the Fast DDS RMW and the message types import.
RMW_IMPLEMENTATION=rmw_fastrtps_cpp "$VENV/bin/python" - <<'PY'
import rclpy
from sensor_msgs.msg import JointState, Image
from std_msgs.msg import Bool, Float64MultiArray
from trajectory_msgs.msg import JointTrajectory
rclpy.init()
rclpy.shutdown()
print("ros venv ok")
PY
touch "$VENV/.omnipolicy-ros-ok"
if [ "$WITH_SIM" = 1 ]; then
    MUJOCO_GL=egl "$VENV/bin/python" -c 'from omnipolicy.envs import make_env; make_env("dmc/reacher-easy").reset(seed=0); print("ros venv simulators ok")'
    touch "$VENV/.omnipolicy-ros-sim-ok"
fi
if [ "$WITH_TORCH" = 1 ]; then
    "$VENV/bin/python" -c 'import torch; from omnipolicy.agent import Policy; print("ros venv torch", torch.__version__)'
    touch "$VENV/.omnipolicy-ros-torch-ok"
fi
