"""Exports of a reviewed region set: GeoJSON with status, mask of accepted regions, report."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openslide
import pytest
from PIL import Image
from shapely.geometry import box, shape

from tests.core.exports.test_analysis_outputs import (
    L0_SIZE,
    SECRET_NAME,
    SLIDE_MPP,
    THRESHOLD,
    _analysis,
    _probability_map,
    _slide_pixels,
)
from wsiviewer import RESEARCH_USE_NOTICE
from wsiviewer.core.exports import review_outputs as report_module
from wsiviewer.core.exports.geojson import (
    IDC_CLASS_NAME,
    IDC_COLOR,
    REJECTED_CLASS_NAME,
    review_feature_collection,
)
from wsiviewer.core.exports.masks import review_grid_mask
from wsiviewer.core.exports.report import report_images
from wsiviewer.core.exports.review_outputs import (
    REVIEW_EXPORT_NAMES,
    export_review,
    load_review_export,
    select_region_set,
)
from wsiviewer.core.review.session import ReviewSession, open_review
from wsiviewer.core.slides import ArraySource
from wsiviewer.core.store.database import Store
from wsiviewer.errors import ExportError

ALL_FILES = {name for names in REVIEW_EXPORT_NAMES.values() for name in names}


@pytest.fixture
def store(isolated_data_dir: Path) -> Iterator[Store]:
    with Store.open() as opened:
        yield opened


@pytest.fixture
def analysis_id(store: Store) -> int:
    return store.save_analysis(_analysis(_probability_map()))


@pytest.fixture
def session(store: Store, analysis_id: int) -> ReviewSession:
    return open_review(store, analysis_id, THRESHOLD, 0.0, "dr-a")


@pytest.fixture
def slide() -> ArraySource:
    return ArraySource(_slide_pixels(), mpp=SLIDE_MPP)


def reviewed(session: ReviewSession) -> ReviewSession:
    """Region 1 accepted with a note, 2 rejected, 3 pending, one manual region accepted."""
    first, second, _ = (item.ref for item in session.state().items)
    session.accept(first)
    session.set_note(first, "ring <b>& hole</b>")
    session.reject(second)
    manual = session.add_manual_region(box(500, 100, 700, 300), note="drawn")
    session.accept(manual)
    return session


def test_geojson_carries_status_note_and_classification(session: ReviewSession) -> None:
    state = reviewed(session).state()
    collection = review_feature_collection(state, analysis_key="k")
    assert collection["type"] == "FeatureCollection"
    assert collection["notice"] == RESEARCH_USE_NOTICE
    features = collection["features"]
    assert len(features) == 4
    by_number = {f["properties"]["number"]: f["properties"] for f in features}
    assert by_number[1]["status"] == "accepted"
    assert by_number[1]["note"] == "ring <b>& hole</b>"
    assert by_number[1]["classification"] == {"name": IDC_CLASS_NAME, "color": list(IDC_COLOR)}
    assert by_number[1]["name"] == "IDC region 1 (accepted)"
    assert by_number[2]["classification"]["name"] == REJECTED_CLASS_NAME
    assert by_number[2]["classification"]["color"] != list(IDC_COLOR)
    assert by_number[3]["status"] == "pending"
    assert by_number[3]["classification"]["name"] == IDC_CLASS_NAME
    assert by_number[4]["source"] == "manual"
    assert by_number[4]["name"] == "Manual region 4 (accepted)"
    assert set(by_number[4]["measurements"]) == {"area_mm2"}
    assert set(by_number[1]["measurements"]) == {"area_mm2", "max_prob", "mean_prob"}
    for properties in by_number.values():
        assert properties["objectType"] == "annotation"
        assert properties["reviewer"] in {"dr-a", None}
    accepted = review_feature_collection(state, accepted_only=True)["features"]
    assert sorted(f["properties"]["number"] for f in accepted) == [1, 4]
    # Ids are reproducible and distinct.
    again = review_feature_collection(state, analysis_key="k")["features"]
    assert [f["id"] for f in again] == [f["id"] for f in features]
    assert len({f["id"] for f in features}) == 4


def test_manual_polygons_are_rasterised_by_cell_centre(store: Store, analysis_id: int) -> None:
    session = open_review(store, analysis_id, 0.99, 0.0, "dr-a")  # no model regions
    grid = store.analysis(analysis_id).grid
    size = grid.l0_patch_size
    # Covers the centres of cells (1, 2) and (1, 3), not their neighbours'.
    ref = session.add_manual_region(box(2.4 * size, 1.4 * size, 3.6 * size, 1.6 * size))
    session.accept(ref)
    export = load_review_export(store, session.region_set_id)
    mask = review_grid_mask(export.mask_items(), grid, export.region_cells)
    assert list(zip(*np.nonzero(mask), strict=True)) == [(1, 2), (1, 3)]


def test_mask_is_every_region_before_review_and_accepted_ones_after(
    store: Store, session: ReviewSession
) -> None:
    export = load_review_export(store, session.region_set_id)
    assert not export.reviewed
    assert len(export.mask_items()) == 3
    grid = export.probability_map.grid
    full = review_grid_mask(export.mask_items(), grid, export.region_cells)
    assert np.array_equal(full, store.load_region_set(session.region_set_id).mask(grid.shape))
    reviewed(session)
    export = load_review_export(store, session.region_set_id)
    assert [item.number for item in export.mask_items()] == [1, 4]


def test_mask_tiff_of_accepted_regions_opens_at_the_slide_resolution(
    store: Store, session: ReviewSession, tmp_path: Path
) -> None:
    first, second, third = (item.ref for item in session.state().items)
    session.accept(first)
    session.accept(third)
    session.reject(second)
    export = load_review_export(store, session.region_set_id)
    written = export_review(tmp_path, export, ["mask"])
    assert set(written) == {"idc_mask.tif", "idc_mask.png"}
    grid = export.probability_map.grid
    expected = np.zeros(grid.shape, dtype=bool)
    for item in export.state.items:
        if item.status == "accepted":
            cells = export.region_cells[item.ref.id]
            expected[cells[:, 0], cells[:, 1]] = True
    with openslide.OpenSlide(tmp_path / "idc_mask.tif") as mask_slide:
        assert mask_slide.dimensions == L0_SIZE
        assert float(mask_slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(
            SLIDE_MPP
        )
        assert "Research use only" in mask_slide.properties[openslide.PROPERTY_NAME_COMMENT]
        level0 = np.asarray(mask_slide.read_region((0, 0), 0, L0_SIZE).convert("L"))
    accepted = [item.polygon for item in export.state.items if item.status == "accepted"]
    area_px = sum(polygon.area for polygon in accepted)
    perimeter = sum(polygon.length for polygon in accepted)
    assert abs(int((level0 == 255).sum()) - area_px) <= perimeter
    png = np.asarray(Image.open(tmp_path / "idc_mask.png"))
    assert np.array_equal(png == 255, expected)


def test_export_writes_the_report_and_tables(
    store: Store, session: ReviewSession, slide: ArraySource, tmp_path: Path
) -> None:
    reviewed(session)
    export = load_review_export(store, session.region_set_id)
    written = export_review(tmp_path, export, slide=slide)
    assert set(written) == ALL_FILES
    assert {path.name for path in tmp_path.iterdir()} == ALL_FILES  # no staging left behind
    page = (tmp_path / "report.html").read_text()
    assert "RESEARCH USE ONLY – NOT FOR DIAGNOSIS" in page
    assert "3 of 4 reviewed" in page
    assert "ring &lt;b&gt;&amp; hole&lt;/b&gt;" in page  # notes are escaped
    assert "<b>&" not in page
    assert "cancernet v1.0" in page
    assert "not available" in page  # no installed card: no metrics
    images = [part.split('"')[0] for part in page.split('src="data:image/png;base64,')[1:]]
    assert len(images) == 3  # thumbnail, overlay, outlines
    for encoded in images:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).format == "PNG"
    assert "http://" not in page
    assert "https://" not in page  # self-contained
    summary = json.loads((tmp_path / "review.json").read_text())
    assert summary["notice"] == RESEARCH_USE_NOTICE
    assert summary["progress"] == "3 of 4 reviewed"
    assert summary["counts"] == {
        "regions": 4,
        "reviewed": 3,
        "accepted": 2,
        "rejected": 1,
        "pending": 1,
    }
    assert [d["action"] for d in summary["decisions"]] == [
        "accept",
        "note",
        "reject",
        "add",
        "accept",
    ]
    assert "file_name" not in summary["slide"]
    lines = (tmp_path / "review.csv").read_text().splitlines()
    assert lines[0].startswith("# Research use only")
    rows = list(csv.DictReader(lines[1:]))
    assert [row["status"] for row in rows] == ["accepted", "rejected", "pending", "accepted"]
    assert rows[3]["max_prob"] == ""
    assert rows[0]["note"] == "ring <b>& hole</b>"
    geojson = json.loads((tmp_path / "regions.geojson").read_text())
    assert len(geojson["features"]) == 4
    assert (tmp_path / "patches.csv").read_text().startswith("# Research use only")
    for name in ALL_FILES - {"idc_mask.tif", "idc_mask.png"}:
        assert SECRET_NAME not in (tmp_path / name).read_text()


def test_report_names_the_slide_only_when_asked(
    store: Store, session: ReviewSession, tmp_path: Path
) -> None:
    export = load_review_export(store, session.region_set_id)
    export_review(tmp_path, export, ["report"], slide_name=f"{SECRET_NAME}.tif")
    assert f"{SECRET_NAME}.tif" in (tmp_path / "report.html").read_text()
    assert json.loads((tmp_path / "review.json").read_text())["slide"]["file_name"] == (
        f"{SECRET_NAME}.tif"
    )
    assert "No decisions yet" in (tmp_path / "report.html").read_text()
    assert "0 of 3 reviewed" in (tmp_path / "report.html").read_text()


def test_report_images_without_a_slide_draw_on_white(store: Store, session: ReviewSession) -> None:
    reviewed(session)
    export = load_review_export(store, session.region_set_id)
    images = report_images(export, None, longest=200)
    assert set(images) == {"overlay", "outlines"}
    outlines = images["outlines"]
    assert outlines.shape[1] == 200
    # The accepted outline colour is drawn.
    assert np.all(outlines == IDC_COLOR, axis=-1).any()


def test_a_failing_export_leaves_no_new_file(
    store: Store, session: ReviewSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "regions.geojson").write_text("old")

    def fail(path: Path, state: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "write_review_csv", fail)
    export = load_review_export(store, session.region_set_id)
    with pytest.raises(ExportError, match="disk full"):
        export_review(tmp_path, export)
    assert [path.name for path in tmp_path.iterdir()] == ["regions.geojson"]
    assert (tmp_path / "regions.geojson").read_text() == "old"


def test_unknown_export_kind(store: Store, session: ReviewSession, tmp_path: Path) -> None:
    export = load_review_export(store, session.region_set_id)
    with pytest.raises(ExportError, match="Unknown export kind"):
        export_review(tmp_path, export, ["pdf"])


def test_select_region_set(store: Store, analysis_id: int) -> None:
    # Nothing saved yet: the set at the card's threshold is computed and saved.
    at_card = select_region_set(store, analysis_id)
    assert store.region_set(at_card).threshold == THRESHOLD
    assert select_region_set(store, analysis_id) == at_card
    other = select_region_set(store, analysis_id, 0.65)
    assert store.region_set(other).threshold == 0.65
    # Once a set has a review, it is the default.
    session = ReviewSession(store, other, "dr-a")
    session.accept(session.state().items[0].ref)
    assert select_region_set(store, analysis_id) == other
    assert select_region_set(store, analysis_id, THRESHOLD) == at_card


def test_geojson_shapes_are_valid_and_match_the_mask(
    store: Store, session: ReviewSession, tmp_path: Path
) -> None:
    export = load_review_export(store, session.region_set_id)
    export_review(tmp_path, export, ["geojson", "mask"])
    features = json.loads((tmp_path / "regions.geojson").read_text())["features"]
    polygons = [shape(feature["geometry"]) for feature in features]
    for feature, polygon in zip(features, polygons, strict=True):
        assert polygon.is_valid
        for ring in feature["geometry"]["coordinates"]:
            assert ring[0] == ring[-1]
        mm2 = polygon.area * (SLIDE_MPP / 1000) ** 2
        assert feature["properties"]["measurements"]["area_mm2"] == pytest.approx(mm2, rel=1e-4)
    with openslide.OpenSlide(tmp_path / "idc_mask.tif") as mask_slide:
        level0 = np.asarray(mask_slide.read_region((0, 0), 0, L0_SIZE).convert("L"))
    perimeter = sum(polygon.length for polygon in polygons)
    assert abs(int((level0 == 255).sum()) - sum(p.area for p in polygons)) <= perimeter
