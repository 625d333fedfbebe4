"""Benchmark: ROS 2 transport latency on 127.0.0.1 (the transport half of issue 6's benchmark).

Round trips (one message in flight at a time; time from ``publish`` on the
near side until the echoed message is delivered back, decoded):

(a) ``dds -> dds echo``: our Cyclone DDS transport at both ends (echo in a child process).
(b) ``dds -> rclpy node``: the far end is a plain rclpy node (PyPI ros-rclpy wheels,
    Fast DDS) using ROS' own message classes. Needs ``.venv-ros`` (scripts/make_ros_venv.sh).
(c) ``rclpy -> rclpy node``: our rclpy transport at the near end (this script re-run
    under ``.venv-ros/bin/python``). Needs ``.venv-ros``.

Messages: a 7-joint ``JointState`` (position, velocity, effort) and a 640x480
``rgb8`` ``Image``. Baseline, in this process: serializing the same messages
with cyclonedds-python's own IDL machinery (``sequence[uint8]`` etc.) versus
our CDR codec; ratios are printed. All traffic stays on 127.0.0.1 (loopback
configurations, a random ROS domain id per run).

Control loop (issue 6's second half): ``omnipolicy sim-robot`` (dmc/reacher-easy,
50 Hz, a child process: dds, and the rclpy node under ``.venv-ros`` when it has the
simulators) driven by a deploy node in this process at 50 Hz for ``--control-seconds``:
the loop's latency (observation in -> command out) p50/p99, wake-up jitter p50/p99,
deadline misses and skipped ticks, the robot's tick lateness, and the episodes'
success rate. Actor: the task's scripted expert (default) or ``--checkpoint``'s policy.
Baseline, in this process: the same ControlLoop at 50 Hz with a no-op callback (no ROS,
no actor); ratios of the jitter are printed.

Targets (no earlier issue set one): our CDR codec encodes and decodes a JointState at least as fast as
cyclonedds-python's IDL serializer, and the 50 Hz loop driving the dds robot misses at most 1% of its deadlines.

The last line of output is one JSON object with every figure; its ``targets`` rows give each target's figure,
bound and whether it was met.

Usage: ``.venv/bin/python scripts/bench_bridge.py [--n 2000] [--image-n 50] [--quick]``
"""

from __future__ import annotations

import json
import os
import platform
import queue
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from omnipolicy.robot_bridge.wire import cdr
from omnipolicy.robot_bridge.wire.echo import EchoProcess, prime
from omnipolicy.robot_bridge.wire.loopback import apply_loopback_env, loopback_env, random_domain_id
from omnipolicy.robot_bridge.wire.messages import Image, JointState, Time, array_to_image, joint_state
from omnipolicy.robot_bridge.wire.transport import QOS_DEFAULT, make_transport

ROS_PYTHON = Path(__file__).resolve().parents[1] / ".venv-ros" / "bin" / "python"
JOINTS = [f"panda_joint{i}" for i in range(1, 8)]


@dataclass(frozen=True)
class Args:
    n: int = 2000
    """JointState round trips per transport pair (after 100 warm-up round trips)."""
    image_n: int = 50
    """640x480 rgb8 Image round trips per transport pair."""
    near: str = "all"
    """Internal: 'all' runs every pair; 'rclpy' runs only (c) and prints its JSON (used under .venv-ros)."""
    domain_id: int = -1
    """ROS domain id; -1 picks a random one."""
    control_seconds: float = 10.0
    """Seconds of driving sim-robot at 50 Hz per robot transport (0 skips the control-loop half)."""
    checkpoint: str = ""
    """Policy checkpoint for the control-loop half (default: the task's scripted expert)."""
    quick: bool = False
    """The quick profile of `make bench` (300 JointState and 10 Image round trips, 4 s of control loop); flags
    given with it still apply."""


QUICK = Args(n=300, image_n=10, control_seconds=4.0, quick=True)


def percentiles(lat_s: list[float]) -> dict[str, float]:
    a = np.asarray(lat_s) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p99_ms": round(float(np.percentile(a, 99)), 4),
            "mean_ms": round(float(a.mean()), 4), "max_ms": round(float(a.max()), 4), "n": len(a)}


def round_trips(t, src: str, dst: str, cls: type, make, n: int, warmup: int) -> dict[str, float]:
    """``n`` sequential round trips of fresh messages through an echo on src -> dst."""
    replies: queue.Queue = queue.Queue()
    t.subscription(dst, cls, replies, QOS_DEFAULT)
    pub = t.publisher(src, cls, QOS_DEFAULT)
    prime(lambda: pub.publish(make(-1)), replies)
    lat = []
    for i in range(warmup + n):
        msg = make(i)
        t0 = time.perf_counter()
        pub.publish(msg)
        while True:
            got = replies.get(timeout=10)
            if got == msg:
                break
        if i >= warmup:
            lat.append(time.perf_counter() - t0)
    return percentiles(lat)


def measure(near: str, far: str, far_python: str, args: Args, domain: int) -> dict:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pairs = ["JointState:/bench/js/ping:/bench/js/pong", "Image:/bench/img/ping:/bench/img/pong"]

    def js(i: int) -> JointState:
        return joint_state(JOINTS, rng.normal(size=7), rng.normal(size=7), rng.normal(size=7), stamp=Time(i + 10, 0))

    def img(i: int) -> Image:
        return array_to_image(image, stamp=Time(i + 10, 0), frame_id="camera")

    kwargs = {"domain_id": domain, "network": "loopback", **({"node_name": "bench_near"} if near == "rclpy" else {})}
    with EchoProcess(far_python, far, domain, pairs), make_transport(near, **kwargs) as t:
        out = {"joint_state": round_trips(t, "/bench/js/ping", "/bench/js/pong", JointState, js, args.n, 100)}
        out["image_640x480"] = round_trips(t, "/bench/img/ping", "/bench/img/pong", Image, img, args.image_n, 5)
    return out


def serialization_baseline() -> dict:
    """Our CDR codec vs cyclonedds-python's IDL serializer on the same messages (same bytes, checked)."""
    from cyclonedds.idl import make_idl_struct
    from cyclonedds.idl import types as t

    time_ = make_idl_struct("Time_", "builtin_interfaces::msg::dds_::Time_", {"sec": t.int32, "nanosec": t.uint32})
    header = make_idl_struct("Header_", "std_msgs::msg::dds_::Header_", {"stamp": time_, "frame_id": str})
    f64s = t.sequence[t.float64]
    js_idl = make_idl_struct("JointState_", "sensor_msgs::msg::dds_::JointState_",
                             {"header": header, "name": t.sequence[str], "position": f64s, "velocity": f64s, "effort": f64s})
    img_idl = make_idl_struct("Image_", "sensor_msgs::msg::dds_::Image_",
                              {"header": header, "height": t.uint32, "width": t.uint32, "encoding": str,
                               "is_bigendian": t.uint8, "step": t.uint32, "data": t.sequence[t.uint8]})
    rng = np.random.default_rng(1)
    js = joint_state(JOINTS, rng.normal(size=7), rng.normal(size=7), rng.normal(size=7), stamp=Time(1, 2))
    im = array_to_image(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), stamp=Time(1, 2), frame_id="camera")
    theirs_js = js_idl(header(time_(1, 2), ""), list(js.name), js.position.tolist(), js.velocity.tolist(), js.effort.tolist())
    theirs_im = img_idl(header(time_(1, 2), "camera"), 480, 640, "rgb8", 0, 1920, im.data.tolist())

    def best(fn, reps: int) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            times.append((time.perf_counter() - t0) / reps)
        return min(times)

    out = {}
    for name, ours, theirs, cls, reps_ours, reps_theirs in (
        ("joint_state", js, theirs_js, JointState, 2000, 500),
        ("image_640x480", im, theirs_im, Image, 50, 1),
    ):
        ours_bytes = cdr.encode(ours)
        theirs_bytes = theirs.serialize()
        if ours_bytes != theirs_bytes[: len(ours_bytes)]:
            raise RuntimeError(f"{name}: our CDR differs from cyclonedds-python's")
        enc_ours = best(lambda: cdr.encode(ours), reps_ours)
        enc_theirs = best(theirs.serialize, reps_theirs)
        dec_ours = best(lambda: cdr.decode(cls, ours_bytes), reps_ours)
        dec_theirs = best(lambda: type(theirs).deserialize(theirs_bytes), reps_theirs)
        out[name] = {
            "bytes": len(ours_bytes),
            "encode_us": round(enc_ours * 1e6, 2), "encode_cyclonedds_idl_us": round(enc_theirs * 1e6, 2),
            "decode_us": round(dec_ours * 1e6, 2), "decode_cyclonedds_idl_us": round(dec_theirs * 1e6, 2),
            "encode_speedup": round(enc_theirs / enc_ours, 1), "decode_speedup": round(dec_theirs / dec_ours, 1),
        }
    return out


def control_loop_baseline(seconds: float) -> dict:
    """The ControlLoop at 50 Hz with a no-op callback: the scheduler's own jitter on this machine."""
    from omnipolicy.robot_bridge.wire.control_loop import ControlLoop, ControlLoopConfig

    with ControlLoop(lambda step: step, ControlLoopConfig(rate_hz=50.0, duration_s=seconds, print_summary=False)) as loop:
        return loop.run().to_dict()


def control_loop(robot_python: str, robot_transport: str, args: Args) -> dict:
    """Drive sim-robot at 50 Hz from a deploy node in this process (dds) for ``args.control_seconds``."""
    from omnipolicy.robot_bridge.deploy import DeployConfig, Deployer
    from omnipolicy.robot_bridge.sim_robot import NodeProcess

    domain = random_domain_id()
    actor = "policy" if args.checkpoint else "expert"
    cfg = DeployConfig(task="dmc/reacher-easy", actor=actor, checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                       transport="dds", network="loopback", domain_id=domain)
    robot_args = ["--transport", robot_transport, "--episode-seconds", "2", "--max-seconds", str(args.control_seconds + 60)]
    with Deployer(cfg) as node, NodeProcess("sim-robot", robot_args, domain, robot_python) as robot:
        report = node.run(duration=args.control_seconds)
        robot.close()
        sim = robot.of("summary")[0]
    loop = report["loop"]
    return {
        "robot": f"sim-robot ({robot_transport})", "deploy": "dds", "actor": actor, "rate_hz": loop["rate_hz"],
        "achieved_rate_hz": round(loop["achieved_rate_hz"], 3), "steps": loop["steps"],
        "latency_ms": {k: round(v, 4) for k, v in loop["latency"].items()},
        "jitter_ms": {k: round(v, 4) for k, v in loop["jitter"].items()},
        "deadline_misses": loop["misses"], "skipped_ticks": loop["skipped_ticks"],
        "act_ms": report["act_time"], "holds": report["holds"],
        "robot_tick_lateness_ms": sim["tick_lateness"], "robot_overruns": sim["overruns"],
        "episodes": sim["episodes"], "success_rate": sim["success_rate"],
    }


def main() -> None:
    args = tyro.cli(Args, default=QUICK if "--quick" in sys.argv[1:] else None)
    domain = random_domain_id() if args.domain_id < 0 else args.domain_id
    if args.near == "rclpy":  # child run under .venv-ros
        apply_loopback_env(domain)
        print(json.dumps(measure("rclpy", "rclpy-native", sys.executable, args, domain)))
        return
    results: dict = {"host": platform.node(), "cpus": os.cpu_count(), "domain_id": domain}
    results["serialization"] = serialization_baseline()
    for name, r in results["serialization"].items():
        print(f"serialize {name:14s} ours {r['encode_us']:9.1f} us  cyclonedds-idl {r['encode_cyclonedds_idl_us']:11.1f} us"
              f"  x{r['encode_speedup']}   deserialize ours {r['decode_us']:8.1f} us  cyclonedds-idl "
              f"{r['decode_cyclonedds_idl_us']:11.1f} us  x{r['decode_speedup']}")
    rt = results["round_trip"] = {}
    rt["dds->dds_echo"] = measure("dds", "dds", sys.executable, args, domain)
    if ROS_PYTHON.exists():
        rt["dds->rclpy_node"] = measure("dds", "rclpy-native", str(ROS_PYTHON), args, random_domain_id())
        child = subprocess.run(
            [str(ROS_PYTHON), __file__, "--near", "rclpy", "--n", str(args.n), "--image-n", str(args.image_n),
             "--domain-id", str(random_domain_id())],
            capture_output=True, text=True, timeout=600, env=loopback_env(None),
        )
        if child.returncode != 0:
            raise RuntimeError(f"rclpy run failed: {child.stderr[-2000:]}")
        rt["rclpy->rclpy_node"] = json.loads(child.stdout.strip().splitlines()[-1])
    else:
        results["skipped"] = f"no {ROS_PYTHON}: rclpy pairs not measured (scripts/make_ros_venv.sh)"
        print(results["skipped"])
    if args.control_seconds > 0:
        cl = results["control_loop"] = {"baseline_noop_loop": control_loop_baseline(args.control_seconds)}
        cl["dds_robot"] = control_loop(sys.executable, "dds", args)
        if (ROS_PYTHON.parent.parent / ".omnipolicy-ros-sim-ok").exists():
            cl["rclpy_robot"] = control_loop(str(ROS_PYTHON), "rclpy", args)
        b = cl["baseline_noop_loop"]["jitter"]
        for name, r in cl.items():
            if name == "baseline_noop_loop":
                continue
            j, lat = r["jitter_ms"], r["latency_ms"]
            print(f"control loop -> {r['robot']:20s} latency p50 {lat['p50_ms']:.2f} ms p99 {lat['p99_ms']:.2f} ms | jitter p50 "
                  f"{j['p50_ms']:.3f} ms p99 {j['p99_ms']:.3f} ms (x{j['p99_ms'] / max(b['p99_ms'], 1e-9):.2f} of a no-op loop's p99 "
                  f"{b['p99_ms']:.3f} ms) | misses {r['deadline_misses']}/{r['steps']} | success {r['success_rate']}")
    base = rt["dds->dds_echo"]["joint_state"]["p50_ms"]
    for pair, r in rt.items():
        js, im = r["joint_state"], r["image_640x480"]
        print(f"{pair:18s} JointState p50 {js['p50_ms']:.3f} ms p99 {js['p99_ms']:.3f} ms (x{js['p50_ms'] / base:.2f} of dds)"
              f" | Image 640x480 p50 {im['p50_ms']:.2f} ms p99 {im['p99_ms']:.2f} ms")
    ser = results["serialization"]["joint_state"]
    results["targets"] = [
        {"figure": f"JointState CDR {way} vs cyclonedds-python IDL", "value": ser[f"{way}_speedup"], "target": ">= 1",
         "met": ser[f"{way}_speedup"] >= 1} for way in ("encode", "decode")
    ]
    if "control_loop" in results:
        r = results["control_loop"]["dds_robot"]
        share = r["deadline_misses"] / max(r["steps"], 1)
        results["targets"].append({"figure": "50 Hz control loop (dds robot): deadline misses per step", "value": share,
                                   "target": "<= 0.01", "met": share <= 0.01})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
