"""`wsiviewer explain`: a region's evidence and saliency as files, after `wsiviewer analyze`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import he_like_slide
from wsiviewer import cli
from wsiviewer.core.exports.evidence_outputs import CSV_COLUMNS, evidence_file_names
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
from wsiviewer.core.slides import open_slide
from wsiviewer.core.slides.label import slide_label


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.5 µm/px generated pyramid (grid 6 × 8 cells of 400 px)."""
    path = tmp_path_factory.mktemp("slides") / "Doe-Jane-S24-0042.tif"
    return write_pyramid_tiff(path, he_like_slide((2400, 3200)), mpp=0.5, downsamples=(1, 4, 16))


@pytest.fixture
def analysed(slide: Path, tiny_model_card: Path, tmp_path: Path) -> Path:
    arguments = ["analyze", str(slide), "--out", str(tmp_path / "analysis")]
    assert cli.main([*arguments, "--model", str(tiny_model_card), "--threshold", "0.3"]) == 0
    return slide


def label_of(slide: Path) -> str:
    with open_slide(slide) as opened:
        return slide_label(opened.identity)


def explain(*args: str | Path) -> int:
    return cli.main(["explain", *map(str, args)])


def test_explain_writes_the_region_evidence(
    analysed: Path, tiny_model_card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "evidence"
    code = explain(
        analysed, "--model", tiny_model_card, "--region", "1", "--top", "3", "--lowest", "1",
        "--out", out,
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Region 1 of analysis 1" in captured.out
    label = label_of(analysed)
    with (out / f"{label}_region-1_evidence.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    count = len(rows)
    assert 1 <= count <= 4
    assert sorted(path.name for path in out.iterdir()) == sorted(
        evidence_file_names(label, "region-1", count, saliency=True)
    )
    assert "Doe" not in " ".join(path.name for path in out.iterdir())
    tops = [float(row["map_probability"]) for row in rows if row["kind"] == "top"]
    assert tops == sorted(tops, reverse=True)
    assert all(float(row["map_probability"]) >= 0.3 for row in rows)
    assert all(row["saliency_log_odds"] and row["patch_probability"] for row in rows)
    with Image.open(out / f"{label}_region-1_p01_input.png") as image:
        assert image.size == (200, 200)  # 50 px ×4, crisp
        assert "Research use only" in image.info["Disclaimer"]
    with Image.open(out / f"{label}_region-1_p01_native.png") as image:
        assert image.size == (400, 400)  # 200 µm at 0.5 µm/px
    with Image.open(out / f"{label}_region-1_evidence.png") as image:
        sheet = np.asarray(image.convert("RGB"))
    assert sheet.shape[0] > 160 * count
    assert sheet.std() > 10


def test_explain_refuses_to_replace_files_unless_forced(
    analysed: Path, tiny_model_card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "evidence"
    arguments = ("--model", tiny_model_card, "--region", "1", "--no-saliency", "--out", out)
    assert explain(analysed, *arguments) == 0
    written = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    assert not [name for name in written if name.endswith(("_gradcam.png", "_ig.png"))]
    capsys.readouterr()
    assert explain(analysed, *arguments) == cli.EXIT_FAILED
    assert "exist" in capsys.readouterr().err
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == written
    assert explain(analysed, *arguments, "--force") == 0


def test_explain_at_a_point(
    analysed: Path, tiny_model_card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "point"
    code = explain(analysed, "--model", tiny_model_card, "--at", "1000", "1000", "--out", out)
    assert code == 0, capsys.readouterr().err
    label = label_of(analysed)
    with (out / f"{label}_at-1000-1000_evidence.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["kind"], row["grid_row"], row["grid_col"]) for row in rows] == [
        ("point", "2", "2")
    ]
    capsys.readouterr()
    assert explain(analysed, "--model", tiny_model_card, "--at", "99999", "5") == 1
    assert "outside the analysed slide" in capsys.readouterr().err


def test_explain_names_what_is_missing(
    analysed: Path,
    slide: Path,
    tiny_model_card: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert explain(analysed, "--model", tiny_model_card, "--region", "99") == 1
    err = capsys.readouterr().err
    assert "No region '99'" in err
    assert "its regions: 1" in err
    other = write_pyramid_tiff(
        tmp_path / "unanalysed.tif", he_like_slide((800, 800)), mpp=0.5, downsamples=(1,)
    )
    assert explain(other, "--region", "1") == 1
    assert "No analysis of unanalysed.tif" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        explain(analysed)  # --region or --at is required
