#!/usr/bin/env bash
# Create the rclpy virtual environment used by the `ros`-marked tests and by
# scripts/bench_bridge.py: PyPI's unofficial `ros-rclpy` wheels (ROS 2 Kilted,
# Fast DDS RMW) in their own venv, because their `ros-wheels-bootstrapper`
# adds a .pth that re-executes Python with LD_LIBRARY_PATH set.
#
# usage: scripts/make_ros_venv.sh [VENV_DIR]   (default: <repo>/.venv-ros)
# Needs CPython 3.11 (the wheels are cp311). torch is not installed: nothing
# the echo/bridge code runs in this venv imports it.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv-ros}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
    echo "make_ros_venv.sh: the ros-rclpy wheels are cp311; $PYTHON is $("$PYTHON" -V 2>&1). Set PYTHON=python3.11." >&2
    exit 1
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet \
    ros-rclpy ros-rmw-fastrtps-cpp ros-sensor-msgs ros-std-msgs ros-trajectory-msgs \
    numpy tyro tqdm
# The package itself, without its heavy dependencies (torch).
"$VENV/bin/python" -m pip install --quiet --no-deps -e "$ROOT"
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
