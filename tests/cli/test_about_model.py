"""``wsiviewer about-model``: the model's About page as text, and example patches on request."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO
from wsiviewer import cli
from wsiviewer.core.model.about import IDC_DATA_ENV
from wsiviewer.core.model.cards import ModelCard


def test_prints_the_default_models_page(capsys: pytest.CaptureFixture[str]) -> None:
    card = ModelCard.from_file(REPO / "models" / "resnet8-cv.json")
    figures = card.extra["metrics"]["out_of_fold"]
    assert cli.main(["about-model"]) == cli.EXIT_OK
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("About this model: resnet8-cv")
    assert f"of 100 IDC patches it flags about {round(figures['sensitivity'] * 100)};" in out
    assert "Research use only" in out
    assert "Where it does worst" in out


def test_names_a_held_out_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["about-model", "resnet8"]) == cli.EXIT_OK
    assert "held out of training" in " ".join(capsys.readouterr().out.split())


def test_bad_uses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main(["about-model", "no-such-model"]) == cli.EXIT_FAILED
    assert "Unknown model 'no-such-model'" in capsys.readouterr().err
    assert cli.main(["about-model", "--examples-from", str(tmp_path)]) == cli.EXIT_USAGE
    assert "needs --out" in capsys.readouterr().err
    monkeypatch.delenv(IDC_DATA_ENV, raising=False)
    assert cli.main(["about-model", "--out", str(tmp_path / "out")]) == cli.EXIT_USAGE
    assert IDC_DATA_ENV in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_writes_examples_from_the_dataset(
    idc_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subset = tmp_path / "idc"
    shutil.copytree(idc_dir / "13916", subset / "13916")
    out = tmp_path / "out"
    code = cli.main(
        ["about-model", "resnet8-cv", "--examples-from", str(subset), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert code == cli.EXIT_OK, err
    assert "patient 13694 is not in" in err
    with (out / "examples.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    assert {row["patient"] for row in rows} == {"13916"}
    assert {row["error"] for row in rows} == {"false positive"}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(row["file"] for row in rows)
