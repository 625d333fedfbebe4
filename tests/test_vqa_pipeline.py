"""A vision-language task through the commands a user types: collect, train, eval; the trained model beats chance
and the report gives the accuracy per question type."""

from __future__ import annotations

import json

import pytest
import torch

from omnipolicy.agent.train import train_command
from omnipolicy.commands import eval_command
from omnipolicy.datasets.collect import collect_command
from omnipolicy.envs import get_task

pytest.importorskip("easy_vqa")


@pytest.fixture
def two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.mark.usefixtures("two_threads")
def test_a_small_vqa_run_beats_chance_and_reports_accuracy_per_question_type(tmp_path, capsys):
    task = "vqa/easy-v1"
    collect_command(["--task", task, "--episodes", "1000", "--out", str(tmp_path / "data"), "--workers", "0"],
                    prog="omnipolicy collect")
    train_command(["--data", str(tmp_path / "data"), "--preset", "cpu-tiny", "--context", "64", "--steps", "150",
                   "--batch-size", "32", "--warmup-steps", "15", "--lr", "2e-3", "--out", str(tmp_path / "run"),
                   "--no-progress", "--threads", "2"], prog="omnipolicy train")
    eval_command(["--checkpoint", str(tmp_path / "run"), "--tasks", task, "--episodes", "200", "--out",
                  str(tmp_path / "eval"), "--no-video"], prog="omnipolicy eval")
    capsys.readouterr()
    report = json.loads((tmp_path / "eval" / "report.json").read_text())["tasks"][task]
    chance = get_task(task).random_score  # a uniform answer among the 13
    assert report["random_score"] == chance and chance < 0.1
    assert report["success_rate"] > 2 * chance + 0.1, report["success_rate"]
    assert report["success_rate"] == pytest.approx(report["return_mean"])  # accuracy: one question, scored 0 or 1
    types = report["breakdown"]["question_type"]
    assert set(types) == {"colour", "shape", "yes/no"} and sum(t["episodes"] for t in types.values()) == 200
    # a yes/no question is answered yes or no (the model learnt the answer's type from the question)
    assert types["yes/no"]["success_rate"] > 0.35
    markdown = (tmp_path / "eval" / "report.md").read_text()
    assert "question type" in markdown and "yes/no" in markdown
