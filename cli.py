"""The ``omnipolicy`` command line.

Each subcommand lives in the module that owns its work and is named here by a
lazy import path (``"module:function"``), so ``omnipolicy --help`` starts in
milliseconds and a subcommand imports only what it needs (no torch for
``omnipolicy tasks``). The function receives the remaining arguments and parses
them with ``tyro`` against its own typed dataclass config.

Errors are reported here, once for every command: an expected error (see
:func:`user_error`) prints one line, ``omnipolicy <command>: error: <message>``,
and exits with status 2; anything else is a bug and keeps its traceback, as does
every error under ``--debug`` or ``OMNIPOLICY_DEBUG=1``. Ctrl-C exits with 130.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys

# OpenMP worker threads that spin while waiting stall badly when the cores are shared (other processes,
# simulators, several ranks): small matmuls took 24 ms instead of 0.7 ms on this project's 2-core machine;
# sleeping waits cost little when the machine is idle. OpenMP reads the variable once, when torch loads, so it is
# set here, where the process starts (every command, torchrun ranks and worker processes inherit it), not by the
# library: importing omnipolicy leaves the environment alone. An explicit OMP_WAIT_POLICY from the user wins.
# The Makefile, the scripts that load torch and tests/conftest.py set it the same way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from dataclasses import dataclass
from typing import NoReturn

from omnipolicy import __version__


@dataclass(frozen=True)
class Command:
    """One subcommand: where its entry function lives and a one-line summary."""

    entry: str
    summary: str


COMMANDS: dict[str, Command] = {
    "tokenize-demo": Command(
        "omnipolicy.tokenizers.demo:main",
        "Tokenize a synthetic Atari-like and Meta-World-like episode and print the layout.",
    ),
    "tasks": Command("omnipolicy.envs.registry:tasks_command", "List registered tasks with their random and expert scores."),
    "collect": Command("omnipolicy.datasets.collect:collect_command", "Collect expert demonstrations into a dataset."),
    "dagger": Command("omnipolicy.commands:dagger_command",
                      "Run a checkpoint's policy and record the expert's action in each state it visits (DAgger)."),
    "dataset": Command("omnipolicy.commands:dataset_command", "Inspect, verify, import or export a dataset (info, verify, ...)."),
    "image-tokenizer": Command("omnipolicy.agent.image_tokenizer:image_tokenizer_command",
                               "Train an FSQ image tokenizer on datasets' frames (for --image-encoder vq), or measure one."),
    "train": Command("omnipolicy.agent.train:train_command", "Train a generalist policy on one or more datasets."),
    "eval": Command("omnipolicy.commands:eval_command", "Evaluate a checkpoint in the simulators and write a report."),
    "demo": Command("omnipolicy.demo:demo_command", "Collect, train, evaluate and report end to end (the main job)."),
    "demo-so101": Command("omnipolicy.demo_so101:demo_so101_command",
                          "The SO-101 camera + instruction job: collect (directly and over ROS 2), train, evaluate."),
    "compare-models": Command("omnipolicy.compare_models:compare_command",
                              "Train the model's image-encoder, fusion and feed-forward options on the same data; tabulate."),
    "deploy": Command("omnipolicy.robot_bridge.deploy:deploy_command", "Drive a ROS 2 robot with a trained policy."),
    "sim-robot": Command("omnipolicy.robot_bridge.sim_robot:sim_robot_command", "Expose a simulated MuJoCo arm as a ROS 2 robot."),
    "record": Command("omnipolicy.robot_bridge.recorder:record_command",
                      "Record a robot's ROS 2 topics into rosbag2 bags, one per episode (for dataset from-rosbag)."),
}


DEBUG_ENV = "OMNIPOLICY_DEBUG"
"""Set (to anything but ``0``) to see the traceback of every error; ``omnipolicy --debug`` sets it."""
USAGE_ERROR = 2
"""Exit status of an expected error (the status argparse and tyro give a bad command line)."""
INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it)."""


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: omnipolicy [--debug] <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    lines += [
        "",
        "options:",
        f"  --debug        show the Python traceback of any error (or set {DEBUG_ENV}=1)",
        "  -V, --version  print the version and exit",
        "",
        "Run `omnipolicy <command> --help` for a command's options.",
        "",
        "An error in what was asked (a missing path, an unknown task id, options that do not go together, a",
        "damaged file) prints one line, `omnipolicy <command>: error: <message>`, and exits with status 2;",
        "any other error is a bug and prints its traceback. Ctrl-C exits with status 130.",
    ]
    return "\n".join(lines)


def _is_dataset_error(exc: BaseException) -> bool:
    # Only a command that loaded the datasets package can raise its DatasetError (importing it here would load
    # pyarrow for every command). An error from a worker process loads the module when it is unpickled.
    layout = sys.modules.get("omnipolicy.datasets.layout")
    return layout is not None and isinstance(exc, layout.DatasetError)


def user_error(exc: BaseException) -> str | None:
    """The message of an expected error, or None for a bug (which keeps its traceback).

    Expected are the errors in what the user asked for, raised with a message that says what was
    expected and what came: ``ValueError`` (a bad value, options that do not go together, a file
    whose content is damaged), ``OSError`` (a missing or unreadable path, a full disk, a timeout),
    ``DatasetError`` (a damaged dataset), ``ImportError`` of a package that is not ours (an optional
    dependency not installed) and a ``KeyError`` whose message is a sentence (an unknown task id,
    preset or arm). A ``KeyError`` of a bare key is a failed lookup in our code: a bug. Errors
    raised in worker processes arrive with their own type (``concurrent.futures`` re-raises them).

    >>> user_error(KeyError("Unknown model preset 'big'. Available presets: tiny"))
    "Unknown model preset 'big'. Available presets: tiny"
    >>> user_error(KeyError("state")) is None, user_error(TypeError("x")) is None
    (True, True)
    """
    if isinstance(exc, KeyError):
        message = exc.args[0] if len(exc.args) == 1 else None
        return message if isinstance(message, str) and " " in message else None
    if isinstance(exc, ImportError):
        if (exc.name or "").split(".")[0] == "omnipolicy":
            return None
    elif not isinstance(exc, (ValueError, OSError)) and not _is_dataset_error(exc):
        return None
    return str(exc) or type(exc).__name__


_EXIT_PREFIX = re.compile(r"(omnipolicy [\w-]+(?: [\w-]+)?): (.+)", re.DOTALL)


def _exit_message(message: str, prog: str) -> tuple[str, str]:
    """Split a command's own ``sys.exit("omnipolicy dataset info: <message>")`` into its prog and message."""
    m = _EXIT_PREFIX.fullmatch(message)
    return (m[1], m[2]) if m and m[1].startswith(prog) else (prog, message)


def _fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``omnipolicy [--debug] <command> ...`` to the command's entry function and report its errors.

    Raises:
        SystemExit: status 2 with one line on stderr for an expected error (:func:`user_error`), 130 after
            Ctrl-C; a bug (or any error under ``--debug``) propagates with its traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--debug"]:
        os.environ[DEBUG_ENV] = "1"  # inherited by worker processes, torchrun ranks and ROS nodes
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    name, rest = argv[0], argv[1:]
    if name in ("-V", "--version"):
        print(__version__)
        return
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        _fail("omnipolicy", f"unknown command {name!r}.{hint} Available commands: {', '.join(COMMANDS)}.")
    prog = f"omnipolicy {name}"
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    module_name, func_name = COMMANDS[name].entry.split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        func(rest, prog=prog)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.exit(INTERRUPTED)
    except SystemExit as exc:
        if not isinstance(exc.code, str):  # tyro's own parse errors and --help exit with a status
            raise
        _fail(*_exit_message(exc.code, prog))
    except Exception as exc:
        message = None if debug else user_error(exc)
        if message is None:
            raise
        _fail(prog, message)


if __name__ == "__main__":
    main()
