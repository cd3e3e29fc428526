"""`wsiviewer export`: end to end on a generated pyramid, after `wsiviewer analyze`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
from shapely.geometry import shape

from tests.conftest import he_like_slide
from wsiviewer import cli
from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.pipeline import Analysis, SlideSummary
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.analysis.tissue import TissueSettings
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
from wsiviewer.core.exports.review_outputs import EXPORT_KINDS, export_file_names
from wsiviewer.core.model.cards import ModelSummary
from wsiviewer.core.review.session import open_review
from wsiviewer.core.slides import Mpp, open_slide
from wsiviewer.core.slides.label import slide_label
from wsiviewer.core.store.database import Store

SLIDE_NAME = "Doe-Jane-S24-0042"


def files_of(slide: Path, *kinds: str) -> set[str]:
    """The files an export of ``kinds`` writes for ``slide`` (its hash label)."""
    with open_slide(slide) as opened:
        label = slide_label(opened.identity)
    return set(export_file_names(kinds or EXPORT_KINDS, label))


def named(folder: Path, name: str) -> Path:
    """The one file of ``folder`` whose name ends with ``_<name>``."""
    (found,) = [path for path in folder.iterdir() if path.name.endswith(f"_{name}")]
    return found


@pytest.fixture(scope="module")
def generated_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.5 µm/px pyramidal TIFF whose file name identifies a patient (grid 6 x 8)."""
    path = tmp_path_factory.mktemp("slides") / f"{SLIDE_NAME}.tif"
    return write_pyramid_tiff(path, he_like_slide((2400, 3200)), mpp=0.5, downsamples=(1, 4, 16))


def export(*args: str | Path) -> int:
    return cli.main(["export", *map(str, args)])


def analyze(slide: Path, card: Path, out: Path) -> None:
    arguments = ["analyze", str(slide), "--out", str(out), "--model", str(card)]
    code = cli.main([*arguments, "--threshold", "0.3", "--quiet"])
    assert code == 0


def synthetic_analysis(slide: Path) -> int:
    """Record a second analysis of the slide by another model, with three hot spots."""
    with open_slide(slide) as opened:
        identity, dimensions = opened.identity, opened.dimensions
    grid = PatchGrid.for_slide(dimensions, 0.5, 4.0, 50)
    probabilities = np.full(grid.shape, 0.1, dtype=np.float32)
    probabilities[1, 1:3] = 0.9
    probabilities[4, 5] = 0.8
    probabilities[2:4, 7] = 0.7
    analysis = Analysis(
        slide=SlideSummary(identity, "generic-tiff", dimensions, Mpp(0.5, "metadata")),
        model=ModelSummary("synthetic", "2.0", "cancernet", "e" * 64, "f" * 64, 4.0, 0.5),
        tissue_settings=TissueSettings(),
        probability_map=ProbabilityMap(grid, probabilities, np.ones(grid.shape, dtype=bool)),
        device="cpu",
        batch_size=8,
        started_at="2026-01-01T00:00:00+00:00",
    )
    with Store.open() as store:
        return store.save_analysis(analysis)


def all_bytes(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in folder.iterdir())


def test_export_after_analyze(
    generated_slide: Path,
    tiny_model_card: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    analyze(generated_slide, tiny_model_card, tmp_path / "analysis")
    capsys.readouterr()
    out = tmp_path / "export"
    assert export(generated_slide, "--out", out, "--threshold", "0.3") == 0, capsys.readouterr()
    assert {path.name for path in out.iterdir()} == files_of(generated_slide)
    summary = json.loads(named(out, "review.json").read_text())
    assert summary["model"]["name"] == "cancernet-untrained"
    assert summary["region_set"]["threshold"] == 0.3
    assert summary["progress"].endswith(" reviewed")
    with Store.open() as store:
        record = store.latest_analysis(summary["slide"]["identity"])
        assert record is not None
        assert summary["analysis"]["id"] == record.id
        # The set analyze saved at 0.3 was reused, not recomputed.
        assert len(store.region_sets(record.id)) == 1
    # Privacy: no file name or folder anywhere, and research use only in every text file.
    data = all_bytes(out)
    assert SLIDE_NAME.encode() not in data
    assert str(generated_slide.parent).encode() not in data
    for name in ("regions.geojson", "report.html", "review.json", "patches.json"):
        assert "research use only" in named(out, name).read_text().lower(), name
    # The mask is the regions before any review, at the slide's µm/px.
    with openslide.OpenSlide(named(out, "mask.tif")) as mask:
        assert float(mask.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert mask.dimensions == (3200, 2400)
    stderr = capsys.readouterr().err
    assert "Exported analysis" in stderr
    assert "0 of " in stderr

    # Without --threshold and with no review: the selection rule takes the set that analyze
    # recorded (0.3), the one the viewer shows, not the card's threshold (0.5).
    assert export(generated_slide, "--out", tmp_path / "card", "--what", "report") == 0
    assert {path.name for path in (tmp_path / "card").iterdir()} == files_of(
        generated_slide, "report"
    )
    card_summary = json.loads(named(tmp_path / "card", "review.json").read_text())
    assert card_summary["region_set"]["threshold"] == 0.3
    assert "Testing only: random weights" not in named(tmp_path / "card", "report.html").read_text()


def test_reviewed_export_accepted_only_and_analysis_choice(
    generated_slide: Path,
    tiny_model_card: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    analyze(generated_slide, tiny_model_card, tmp_path / "analysis")
    with Store.open() as store, open_slide(generated_slide) as slide:
        first = store.latest_analysis(slide.identity)
    assert first is not None
    second = synthetic_analysis(generated_slide)
    with Store.open() as store:
        session = open_review(store, second, 0.5, 0.0, "dr-a")
        items = session.state().items
        assert [item.max_prob for item in items] == pytest.approx([0.9, 0.8, 0.7])
        session.accept(items[0].ref)
        session.reject(items[1].ref)
        session.set_note(items[0].ref, "IDC, grade 2")
    capsys.readouterr()

    # Default: the latest analysis (any model: none installed) and its reviewed set.
    out = tmp_path / "all"
    assert export(generated_slide, "--out", out, "--what", "geojson", "--what", "mask") == 0
    assert {path.name for path in out.iterdir()} == files_of(generated_slide, "geojson", "mask")
    features = json.loads(named(out, "regions.geojson").read_text())["features"]
    assert [f["properties"]["status"] for f in features] == ["accepted", "rejected", "pending"]
    assert features[0]["properties"]["note"] == "IDC, grade 2"
    assert features[1]["properties"]["classification"]["name"] == "IDC (rejected)"
    accepted_polygon = shape(features[0]["geometry"])
    with openslide.OpenSlide(named(out, "mask.tif")) as mask:
        assert float(mask.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        level0 = np.asarray(mask.read_region((0, 0), 0, mask.dimensions).convert("L"))
    # Only the accepted region: two 400 px cells.
    assert int((level0 == 255).sum()) == pytest.approx(accepted_polygon.area, abs=800)
    assert accepted_polygon.area == pytest.approx(2 * 400 * 400)

    only = tmp_path / "accepted"
    assert export(generated_slide, "--out", only, "--what", "geojson", "--accepted-only") == 0
    features = json.loads(named(only, "regions.geojson").read_text())["features"]
    assert [f["properties"]["status"] for f in features] == ["accepted"]

    # --analysis picks an older analysis; --include-filename names the slide in the report.
    chosen = tmp_path / "chosen"
    code = export(
        generated_slide,
        "--out",
        chosen,
        "--what",
        "report",
        "--analysis",
        first.id,
        "--include-filename",
    )
    assert code == 0
    # --include-filename names the files after the slide file too.
    assert {path.name for path in chosen.iterdir()} == {
        f"{SLIDE_NAME}_{name}" for name in ("report.html", "review.csv", "review.json")
    }
    summary = json.loads(named(chosen, "review.json").read_text())
    assert summary["analysis"]["id"] == first.id
    assert summary["model"]["name"] == "cancernet-untrained"
    assert summary["slide"]["file_name"] == f"{SLIDE_NAME}.tif"
    assert f"{SLIDE_NAME}.tif" in named(chosen, "report.html").read_text()
    assert str(generated_slide.parent) not in named(chosen, "report.html").read_text()


def test_default_model_is_preferred_when_installed(
    generated_slide: Path,
    tiny_model_card: Path,
    tmp_path: Path,
    isolated_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the user's model is installed: it is the default (the shipped ones are hidden).
    monkeypatch.setattr("wsiviewer.core.model.cards.shipped_models_dir", lambda: None)
    analyze(generated_slide, tiny_model_card, tmp_path / "analysis")
    synthetic_analysis(generated_slide)  # newer, by a model that is not installed
    models = isolated_data_dir / "models"
    models.mkdir(exist_ok=True)
    for suffix in (".json", ".safetensors"):
        shutil.copy(tiny_model_card.with_suffix(suffix), models)
    out = tmp_path / "export"
    assert export(generated_slide, "--out", out, "--what", "report") == 0
    summary = json.loads(named(out, "review.json").read_text())
    assert summary["model"]["name"] == "cancernet-untrained"
    # The installed card gives the report its intended use.
    assert summary["model"]["intended_use"].startswith("Testing only: random weights")
    page = named(out, "report.html").read_text()
    assert "Testing only: random weights" in page
    assert "none on the model card" in page  # the untrained card has no metrics


def test_export_without_an_analysis_is_one_line(
    generated_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export(generated_slide, "--out", tmp_path / "out") == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "No analysis of" in err
    assert "wsiviewer analyze" in err
    assert not (tmp_path / "out").exists()


def test_export_of_a_missing_or_foreign_analysis(
    generated_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export(generated_slide, "--out", tmp_path, "--analysis", "999") == cli.EXIT_FAILED
    assert "No analysis 999" in capsys.readouterr().err
    other = write_pyramid_tiff(
        tmp_path / "other.tif", he_like_slide((2400, 3200), seed=3), mpp=0.5, downsamples=(1, 4)
    )
    foreign = synthetic_analysis(other)
    code = export(generated_slide, "--out", tmp_path / "o", "--analysis", str(foreign))
    assert code == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert "of another slide" in err
    assert err.count("\n") == 1


def test_export_bad_arguments_are_usage_errors(
    generated_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as raised:
        export(generated_slide, "--out", tmp_path, "--what", "pdf")
    assert raised.value.code == cli.EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err


def test_export_missing_slide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert export(tmp_path / "missing.svs", "--out", tmp_path / "o") == cli.EXIT_FAILED
    assert "Slide not found" in capsys.readouterr().err


def test_a_second_export_refuses_to_overwrite_unless_forced(
    generated_slide: Path, tiny_model_card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13, item 3: exporting twice into a folder is refused with one line naming the
    files and --force; --force replaces this slide's files only."""
    analyze(generated_slide, tiny_model_card, tmp_path / "analysis")
    out = tmp_path / "export"
    assert export(generated_slide, "--out", out) == 0
    geojson = named(out, "regions.geojson")
    geojson.write_text("kept")
    neighbour = out / "slide-0123456789ab_regions.geojson"
    neighbour.write_text("another slide's")
    capsys.readouterr()
    assert export(generated_slide, "--out", out) == cli.EXIT_FAILED
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--force" in err
    assert "8 file(s) of this export exist" in err
    assert geojson.read_text() == "kept"
    assert export(generated_slide, "--out", out, "--force") == 0
    assert geojson.read_text().startswith('{"type": "FeatureCollection"')
    assert neighbour.read_text() == "another slide's"


def test_reanalysing_a_reviewed_slide_keeps_showing_the_review(
    generated_slide: Path, tiny_model_card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13, item 2 (CLI): a new analysis never hides a review; analyze says so, and
    export keeps the reviewed set and says why."""
    analyze(generated_slide, tiny_model_card, tmp_path / "first")
    with Store.open() as store, open_slide(generated_slide) as slide:
        first = store.latest_analysis(slide.identity)
        assert first is not None
        session = open_review(store, first.id, 0.3, 0.0, "dr-a")
        session.accept(session.state().items[0].ref)
    capsys.readouterr()
    analyze(generated_slide, tiny_model_card, tmp_path / "second")
    err = capsys.readouterr().err
    assert "has a reviewed region set" in err
    assert f"--analysis {first.id + 1}" in err
    assert export(generated_slide, "--out", tmp_path / "out", "--what", "report") == 0
    err = capsys.readouterr().err
    assert f"Exported analysis {first.id} " in err
    assert "the region set reviewed most recently" in err
    summary = json.loads(named(tmp_path / "out", "review.json").read_text())
    assert summary["progress"].startswith("1 of ")
