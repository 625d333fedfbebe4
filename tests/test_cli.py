"""The command line's error boundary: a user error is one line and status 2, a bug keeps its traceback.

The commands run as real subprocesses (``python -m omnipolicy.cli``), the way a user meets them; each error
is raised before any training, rollout or simulation starts.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import types
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from omnipolicy import cli
from omnipolicy.envs.registry import DOMAINS

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}
    return subprocess.run([sys.executable, "-m", "omnipolicy.cli", *args], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=REPO, timeout=timeout)


def damaged_checkpoint(root: Path) -> Path:
    root.mkdir()
    (root / "checkpoint.json").write_text("not json {")
    return root


# ---------------------------------------------------------------------------------------- real subprocesses


@pytest.mark.parametrize("case", ["train", "eval", "collect", "sim-robot", "damaged-checkpoint"])
def test_user_error_is_one_line_with_status_2(case: str, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    out = tmp_path / "out"
    if case == "train":
        args = ["train", "--data", str(missing), "--out", str(out)]
        want = f"omnipolicy train: error: No dataset (meta/info.json) at or below {missing}: the path does not exist"
    elif case == "eval":
        args = ["eval", "--checkpoint", str(missing), "--out", str(out)]
        want = f"omnipolicy eval: error: No checkpoint at {missing}: the path does not exist"
    elif case == "collect":
        args = ["collect", "--task", "nosuch/task", "--episodes", "1", "--out", str(out)]
        want = None  # the number of registered tasks grows; matched below
    elif case == "sim-robot":
        args = ["sim-robot", "--task", "dmc/reacher-easy-pixels", "--camera-rate-hz", "10"]
        want = ("omnipolicy sim-robot: error: dmc/reacher-easy-pixels observes the camera at every control step; "
                "--camera-rate-hz must be 50 or 0, got 10")
    else:
        ckpt = damaged_checkpoint(tmp_path / "ckpt")
        args = ["eval", "--checkpoint", str(ckpt), "--out", str(out)]
        want = (f"omnipolicy eval: error: {ckpt / 'checkpoint.json'} is not valid JSON "
                "(Expecting value: line 1 column 1 (char 0)); the checkpoint is damaged")
    proc = run_cli(*args)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    if want is None:
        assert lines[0].startswith("omnipolicy collect: error: Unknown task id 'nosuch/task'. ")
        assert lines[0].endswith(f" tasks are registered in domains {list(DOMAINS)}; `omnipolicy tasks` lists them.")
        assert "'vqa']" in lines[0]
    else:
        assert lines[0] == want
    assert proc.stdout == ""
    assert not out.exists()  # failed before writing anything


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how: str, tmp_path: Path) -> None:
    missing = tmp_path / "nonexistent"
    args = ["eval", "--checkpoint", str(missing)]
    proc = run_cli("--debug", *args) if how == "flag" else run_cli(*args, env={cli.DEBUG_ENV: "1"})
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1
    assert lines[0] == "Traceback (most recent call last):"
    assert 'in resolve_checkpoint' in proc.stderr
    assert lines[-1] == f"FileNotFoundError: No checkpoint at {missing}: the path does not exist"


def test_evaluation_renders_without_xdg_runtime_dir_noise(tmp_path: Path) -> None:
    # Headless, as on a server: no display and no XDG_RUNTIME_DIR. pygame's SDL used to probe Wayland here and
    # libwayland-client printed "error: XDG_RUNTIME_DIR is invalid or not set in the environment." once per
    # worker that rendered a classic-control task.
    unset = ("XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER", cli.DEBUG_ENV)
    env = {k: v for k, v in os.environ.items() if k not in unset}
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "omnipolicy.cli", "eval", "--actor", "expert", "--tasks", "classic/cartpole-v1",
           "classic/acrobot-v1", "--episodes", "1", "--num-envs", "1", "--max-steps", "5", "--workers", "2",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["classic__acrobot-v1.gif", "classic__cartpole-v1.gif"]
    lines = proc.stderr.replace("\r", "\n").splitlines()
    assert [line for line in lines if "error" in line.lower() or "XDG_RUNTIME_DIR" in line] == []


# ------------------------------------------------------------------------------- the policy, in process


def _raise(exc: BaseException):
    def command(argv: list[str], prog: str) -> None:
        raise exc

    return command


def _in_worker(argv: list[str], prog: str) -> None:
    # as evaluation does: a forkserver pool, whose worker's exception is re-raised here with its own type
    with ProcessPoolExecutor(1, mp_context=mp.get_context("forkserver")) as pool:
        pool.submit(int, "not a number").result()


@pytest.fixture()
def fake_command(monkeypatch: pytest.MonkeyPatch):
    """``fake_command(func)``: register ``func`` as ``omnipolicy fake`` for one test."""
    module = types.ModuleType("fake_commands")
    monkeypatch.setitem(sys.modules, "fake_commands", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", cli.Command("fake_commands:run", "a test command"))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)

    def register(func) -> None:
        module.run = func

    return register


def _store_error() -> BaseException:
    from omnipolicy.datasets.layout import DatasetError

    return DatasetError("/data/x/meta/info.json: not valid JSON")


@pytest.mark.parametrize(("exc", "message"), [
    (ValueError("batch_size 3 must be divisible by ranks x grad_accum = 1 x 2"),
     "batch_size 3 must be divisible by ranks x grad_accum = 1 x 2"),
    (FileNotFoundError(2, "No such file or directory", "/x/y"), "[Errno 2] No such file or directory: '/x/y'"),
    (KeyError("Unknown model preset 'big'. Available presets: cpu-tiny"),
     "Unknown model preset 'big'. Available presets: cpu-tiny"),  # without the quotes str(KeyError) adds
    (ModuleNotFoundError("No module named 'metaworld'", name="metaworld"), "No module named 'metaworld'"),
    (_store_error(), "/data/x/meta/info.json: not valid JSON"),
    (ValueError(), "ValueError"),
])
def test_expected_errors_print_their_message(exc, message, fake_command, capsys) -> None:
    fake_command(_raise(exc))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fake", "--anything"])
    assert exit_info.value.code == 2
    assert capsys.readouterr() == ("", f"omnipolicy fake: error: {message}\n")


@pytest.mark.parametrize("exc", [
    KeyError("state"),  # a failed lookup in our code
    TypeError("unsupported operand type(s) for +: 'int' and 'str'"),
    RuntimeError("CUDA out of memory"),
    ImportError("cannot import name 'nope' from 'omnipolicy.envs'", name="omnipolicy.envs"),
])
def test_bugs_keep_their_traceback(exc, fake_command, capsys) -> None:
    fake_command(_raise(exc))
    with pytest.raises(type(exc)) as raised:
        cli.main(["fake"])
    assert raised.value is exc
    assert capsys.readouterr() == ("", "")


def test_debug_reraises_expected_errors(fake_command, monkeypatch) -> None:
    fake_command(_raise(ValueError("bad value")))
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError, match="^bad value$"):
        cli.main(["fake"])
    monkeypatch.setenv(cli.DEBUG_ENV, "0")  # 0 means off
    with pytest.raises(SystemExit):
        cli.main(["fake"])


def test_error_in_a_worker_process_is_one_line(fake_command, capsys) -> None:
    fake_command(_in_worker)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fake"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "omnipolicy fake: error: invalid literal for int() with base 10: 'not a number'\n"


def test_ctrl_c_exits_quietly_with_130(fake_command, capsys) -> None:
    fake_command(_raise(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fake"])
    assert exit_info.value.code == 130
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize(("code", "status", "err"), [
    ("omnipolicy fake from-bag: rosbag '/x' does not exist", 2, "omnipolicy fake from-bag: error: rosbag '/x' does not exist\n"),
    ("omnipolicy fake: /x does not exist", 2, "omnipolicy fake: error: /x does not exist\n"),
    ("a message without the prefix", 2, "omnipolicy fake: error: a message without the prefix\n"),
    (1, 1, ""),  # a status (`dataset verify` found damage; tyro's usage errors exit 2 the same way) passes through
])
def test_a_commands_own_exit_message_takes_the_same_form(code, status, err, fake_command, capsys) -> None:
    fake_command(_raise(SystemExit(code)))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fake"])
    assert exit_info.value.code == status
    assert capsys.readouterr().err == err


def test_dataset_command_errors_take_the_same_form(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["dataset", "info", str(tmp_path / "nonexistent")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"omnipolicy dataset: error: {tmp_path / 'nonexistent'} does not exist\n"


def test_unknown_command(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["trian"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (f"omnipolicy: error: unknown command 'trian'. Did you mean: train? "
                                       f"Available commands: {', '.join(cli.COMMANDS)}.\n")


def test_help_documents_errors_and_debug(capsys) -> None:
    cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: omnipolicy [--debug] <command> [options]\n")
    assert f"--debug        show the Python traceback of any error (or set {cli.DEBUG_ENV}=1)" in out
    assert "`omnipolicy <command>: error: <message>`, and exits with status 2;" in out
