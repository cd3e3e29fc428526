"""`wsiviewer train` then `wsiviewer evaluate`, as a user runs them, on a tiny synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.test_cli import run_cli
from tests.training.test_train import write_dataset


def test_train_then_evaluate_from_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "idc"
    write_dataset(data, patients=12)
    models = tmp_path / "models"
    code, _, err = run_cli(
        "train",
        "--data",
        data,
        "--out",
        models,
        "--name",
        "toy",
        "--architecture",
        "resnet8",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--threads",
        "1",
    )
    assert code == 0, err
    assert "epoch 1:" in err
    assert "skipped" in err  # the unreadable file is reported, not fatal
    card = json.loads((models / "toy.json").read_text())
    assert card["architecture"] == "resnet8"
    assert set(card["metrics"]["test"]["intervals_95"]) >= {"roc_auc", "balanced_accuracy", "ece"}
    assert (models / "toy-split.json").is_file()

    out = tmp_path / "report"
    code, stdout, err = run_cli(
        "evaluate", "--data", data, "--model", models / "toy.json", "--out", out
    )
    assert code == 0, err
    assert "toy on the test patients" in stdout
    assert "roc_auc" in stdout
    assert "no slide-level figures" in (out / "report.md").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["roc_auc"] == card["metrics"]["test"]["roc_auc"]


def test_evaluate_errors_are_one_line(tmp_path: Path, tiny_model_card: Path) -> None:
    code, _, err = run_cli("evaluate", "--data", tmp_path, "--model", tiny_model_card)
    assert code == 1
    assert "has no patient split on its card" in err
    assert "Traceback" not in err
    code, _, err = run_cli(
        "evaluate",
        "--data",
        tmp_path,
        "--model",
        tiny_model_card,
        "--split-file",
        tmp_path / "missing.json",
    )
    assert code == 1
    assert "Cannot read the patient split" in err
    assert "Traceback" not in err


def test_models_lists_the_shipped_models_with_their_test_metrics() -> None:
    code, stdout, _ = run_cli("models")
    assert code == 0
    lines = {line[2:].split()[0]: line for line in stdout.splitlines() if "µm/px" in line}
    assert {"cancernet", "resnet8"} <= set(lines)
    assert "test patients: AUC 0." in lines["cancernet"]
    assert sum(line.startswith("* ") for line in lines.values()) == 1
    assert "Research use only" in stdout


def test_an_unknown_architecture_fails_before_any_work(tmp_path: Path) -> None:
    code, _, err = run_cli(
        "train", "--data", tmp_path, "--out", tmp_path / "out", "--architecture", "nope"
    )
    assert code == 1
    assert "Unknown architecture 'nope'; known: cancernet, resnet8" in err
    assert "Decoding" not in err
    assert not (tmp_path / "out").exists()
