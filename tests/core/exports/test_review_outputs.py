"""Exports of a reviewed region set: GeoJSON with status, mask of accepted regions, report,
file names carrying the slide label, no silent overwrite, plain CSVs and their sidecars."""

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
import shapely
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
    CANDIDATE_CLASS_NAME,
    CANDIDATE_COLOR,
    IDC_CLASS_NAME,
    IDC_COLOR,
    REJECTED_CLASS_NAME,
    REJECTED_COLOR,
    review_feature_collection,
)
from wsiviewer.core.exports.report import report_images
from wsiviewer.core.exports.review_outputs import (
    EXPORT_KINDS,
    export_file_names,
    export_review,
    load_review_export,
)
from wsiviewer.core.review.session import ReviewSession, open_review
from wsiviewer.core.slides import ArraySource
from wsiviewer.core.store.database import Store
from wsiviewer.errors import ExportError, OutputExistsError

#: The default label of the test analysis's slide (identity "q" * 64 has no hex digit).
LABEL = "slide-unknown"
ALL_FILES = set(export_file_names(EXPORT_KINDS, LABEL))


def named(name: str) -> str:
    return f"{LABEL}_{name}"


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
    assert by_number[1]["name"] == "Region 1 (accepted)"
    assert by_number[2]["classification"] == {
        "name": REJECTED_CLASS_NAME,
        "color": list(REJECTED_COLOR),
    }
    # A region nobody reviewed is a candidate, in a class and colour of its own: never "IDC".
    assert by_number[3]["status"] == "pending"
    assert by_number[3]["classification"] == {
        "name": CANDIDATE_CLASS_NAME,
        "color": list(CANDIDATE_COLOR),
    }
    assert by_number[3]["name"] == "Region 3 (candidate)"
    assert len({IDC_CLASS_NAME, REJECTED_CLASS_NAME, CANDIDATE_CLASS_NAME}) == 3
    assert len({IDC_COLOR, REJECTED_COLOR, CANDIDATE_COLOR}) == 3
    assert by_number[4]["source"] == "manual"
    assert by_number[4]["origin"] == "drawn"
    assert by_number[4]["name"] == "Region M4 (accepted)"
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


def test_a_small_drawn_region_is_in_the_mask(
    store: Store, analysis_id: int, tmp_path: Path
) -> None:
    """Issue 13, item 4: a region drawn by the pathologist, smaller than a patch and covering
    no patch centre, is in the TIFF and the PNG (rasterised from the polygon at ≤ 4 µm/px)."""
    session = open_review(store, analysis_id, 0.99, 0.0, "dr-a")  # no model regions
    grid = store.analysis(analysis_id).grid
    size = grid.l0_patch_size  # 100.5 px = 200 µm
    # 0.018 mm² (134 µm a side), between the centres of cells (1, 2) and (2, 3).
    side = 134 / SLIDE_MPP
    left, top = 2.55 * size, 1.55 * size
    drawn = box(left, top, left + side, top + side)
    assert not drawn.contains(shapely_points(grid)).any()
    ref = session.add_manual_region(drawn)
    assert session.state().item(ref).area_mm2 == pytest.approx(0.018, rel=0.01)
    export = load_review_export(store, session.region_set_id)
    assert [item.ref for item in export.mask_items()] == [ref]  # drawn: accepted at once
    written = export_review(tmp_path, export, ["mask"])
    assert set(written) == {named("mask.tif"), named("mask.png")}
    with openslide.OpenSlide(tmp_path / named("mask.tif")) as mask_slide:
        assert mask_slide.dimensions == L0_SIZE
        level0 = np.asarray(mask_slide.read_region((0, 0), 0, L0_SIZE).convert("L"))
    inside = level0 == 255
    assert abs(int(inside.sum()) - drawn.area) <= drawn.length * 2  # ≤ 2 µm/px: 1 px edges
    png = Image.open(tmp_path / named("mask.png"))
    assert float(png.text["Micrometres per image px"]) <= 4.0
    png_inside = np.asarray(png) == 255
    um_per_px = float(png.text["Micrometres per image px"])
    assert png_inside.sum() * um_per_px**2 / 1e6 == pytest.approx(0.018, rel=0.15)


def shapely_points(grid: object) -> object:
    """The centres of every cell of a grid as shapely points."""
    rows, cols = np.mgrid[0 : grid.rows, 0 : grid.cols]  # type: ignore[attr-defined]
    centres = grid.l0_centres(rows.ravel(), cols.ravel())  # type: ignore[attr-defined]
    return shapely.points(centres)


def test_mask_is_every_region_before_review_and_accepted_ones_after(
    store: Store, session: ReviewSession
) -> None:
    export = load_review_export(store, session.region_set_id)
    assert not export.reviewed
    assert len(export.mask_items()) == 3
    assert "not reviewed" in export.mask_description()
    reviewed(session)
    export = load_review_export(store, session.region_set_id)
    assert [item.number for item in export.mask_items()] == [1, 4]
    assert "accepted" in export.mask_description()


def test_mask_tiff_of_accepted_regions_opens_at_the_slide_resolution(
    store: Store, session: ReviewSession, tmp_path: Path
) -> None:
    first, second, third = (item.ref for item in session.state().items)
    session.accept(first)
    session.accept(third)
    session.reject(second)
    export = load_review_export(store, session.region_set_id)
    written = export_review(tmp_path, export, ["mask"])
    assert set(written) == {named("mask.tif"), named("mask.png")}
    grid = export.probability_map.grid
    expected = np.zeros(grid.shape, dtype=bool)
    for item in export.state.items:
        if item.status == "accepted":
            cells = export.region_cells[item.ref.id]
            expected[cells[:, 0], cells[:, 1]] = True
    with openslide.OpenSlide(tmp_path / named("mask.tif")) as mask_slide:
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
    png = Image.open(tmp_path / named("mask.png"))
    scale = int(png.text["Level-0 px per image px"])
    assert scale * SLIDE_MPP <= 4.0
    # The PNG is the TIFF's level 0 at one px per mask px.
    assert np.array_equal(
        np.asarray(png) == 255, (level0 == 255)[scale // 2 :: scale, scale // 2 :: scale]
    )
    centres = level0[
        (np.arange(expected.shape[0]) * 100.5 + 50).astype(int).clip(0, L0_SIZE[1] - 1)[:, None],
        (np.arange(expected.shape[1]) * 100.5 + 50).astype(int).clip(0, L0_SIZE[0] - 1)[None, :],
    ]
    assert np.array_equal(centres == 255, expected)


def test_export_writes_the_report_and_tables(
    store: Store, session: ReviewSession, slide: ArraySource, tmp_path: Path
) -> None:
    reviewed(session)
    export = load_review_export(store, session.region_set_id)
    written = export_review(tmp_path, export, slide=slide)
    assert set(written) == ALL_FILES
    assert {path.name for path in tmp_path.iterdir()} == ALL_FILES  # no staging left behind
    page = (tmp_path / named("report.html")).read_text()
    assert "RESEARCH USE ONLY – NOT FOR DIAGNOSIS" in page
    assert "3 of 4 reviewed" in page
    assert "ring &lt;b&gt;&amp; hole&lt;/b&gt;" in page  # notes are escaped
    assert "<b>&" not in page
    assert "cancernet v1.0" in page
    assert "not available" in page  # no installed card: no metrics
    assert "not the analysed slide" in page  # the array's identity is not the analysis's
    images = [part.split('"')[0] for part in page.split('src="data:image/png;base64,')[1:]]
    assert len(images) == 4  # thumbnail, overlay and its colour bar, outlines
    for encoded in images:
        assert Image.open(io.BytesIO(base64.b64decode(encoded))).format == "PNG"
    assert "http://" not in page
    assert "https://" not in page  # self-contained
    summary = json.loads((tmp_path / named("review.json")).read_text())
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
    lines = (tmp_path / named("review.csv")).read_text().splitlines()
    rows = list(csv.DictReader(lines))
    assert [row["status"] for row in rows] == ["accepted", "rejected", "pending", "accepted"]
    assert rows[3]["max_prob"] == ""
    assert rows[0]["note"] == "ring <b>& hole</b>"
    geojson = json.loads((tmp_path / named("regions.geojson")).read_text())
    assert len(geojson["features"]) == 4
    assert (tmp_path / named("patches.csv")).read_text().startswith("minx,miny,")
    for name in ALL_FILES - {named("mask.tif"), named("mask.png")}:
        assert SECRET_NAME not in (tmp_path / name).read_text()


def test_report_names_the_slide_only_when_asked(
    store: Store, session: ReviewSession, tmp_path: Path
) -> None:
    export = load_review_export(store, session.region_set_id)
    export_review(tmp_path, export, ["report"], slide_name=f"{SECRET_NAME}.tif")
    assert f"{SECRET_NAME}.tif" in (tmp_path / named("report.html")).read_text()
    assert json.loads((tmp_path / named("review.json")).read_text())["slide"]["file_name"] == (
        f"{SECRET_NAME}.tif"
    )
    assert "No decisions yet" in (tmp_path / named("report.html")).read_text()
    assert "0 of 3 reviewed" in (tmp_path / named("report.html")).read_text()


def test_report_images_without_a_slide_draw_on_white(store: Store, session: ReviewSession) -> None:
    reviewed(session)
    export = load_review_export(store, session.region_set_id)
    images = report_images(export, None, longest=200)
    assert set(images) == {"overlay", "legend", "outlines"}
    outlines = images["outlines"]
    assert outlines.shape[1] == 200
    # The accepted outline colour is drawn.
    assert np.all(outlines == IDC_COLOR, axis=-1).any()


def test_a_failing_export_leaves_no_new_file(
    store: Store, session: ReviewSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / named("regions.geojson")).write_text("old")

    def fail(path: Path, state: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report_module, "write_review_csv", fail)
    export = load_review_export(store, session.region_set_id)
    with pytest.raises(ExportError, match="disk full"):
        export_review(tmp_path, export, force=True)
    assert [path.name for path in tmp_path.iterdir()] == [named("regions.geojson")]
    assert (tmp_path / named("regions.geojson")).read_text() == "old"


def test_unknown_export_kind(store: Store, session: ReviewSession, tmp_path: Path) -> None:
    export = load_review_export(store, session.region_set_id)
    with pytest.raises(ExportError, match="Unknown export kind"):
        export_review(tmp_path, export, ["pdf"])


def test_geojson_shapes_are_valid_and_match_the_mask(
    store: Store, session: ReviewSession, tmp_path: Path
) -> None:
    export = load_review_export(store, session.region_set_id)
    export_review(tmp_path, export, ["geojson", "mask"])
    features = json.loads((tmp_path / named("regions.geojson")).read_text())["features"]
    polygons = [shape(feature["geometry"]) for feature in features]
    for feature, polygon in zip(features, polygons, strict=True):
        assert polygon.is_valid
        for ring in feature["geometry"]["coordinates"]:
            assert ring[0] == ring[-1]
        mm2 = polygon.area * (SLIDE_MPP / 1000) ** 2
        assert feature["properties"]["measurements"]["area_mm2"] == pytest.approx(mm2, rel=1e-4)
    with openslide.OpenSlide(tmp_path / named("mask.tif")) as mask_slide:
        level0 = np.asarray(mask_slide.read_region((0, 0), 0, L0_SIZE).convert("L"))
    perimeter = sum(polygon.length for polygon in polygons)
    assert abs(int((level0 == 255).sum()) - sum(p.area for p in polygons)) <= perimeter


def test_a_second_export_never_overwrites_without_force(
    store: Store, session: ReviewSession, tmp_path: Path
) -> None:
    """Issue 13, item 3: names carry the slide label; an export into a folder that holds
    this slide's files refuses (writing nothing) unless forced; another slide's files stay."""
    export = load_review_export(store, session.region_set_id)
    first = export_review(tmp_path, export, ["geojson", "csv"])
    assert set(first) == {named("regions.geojson"), named("patches.csv"), named("patches.json")}
    before = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    (tmp_path / named("patches.csv")).write_text("edited by hand")
    with pytest.raises(OutputExistsError, match="--force") as raised:
        export_review(tmp_path, export, ["geojson", "report"])
    assert named("regions.geojson") in raised.value.args[0]
    assert {Path(p).name for p in raised.value.paths} == {named("regions.geojson")}
    assert {path.name for path in tmp_path.iterdir()} == set(before)  # nothing written
    assert (tmp_path / named("patches.csv")).read_text() == "edited by hand"
    # Another slide (label) exports beside it; --force replaces only this slide's files.
    other = export_review(tmp_path, export, ["geojson"], label="slide-0123456789ab")
    assert set(other) == {"slide-0123456789ab_regions.geojson"}
    again = export_review(tmp_path, export, ["csv"], force=True)
    assert set(again) == {named("patches.csv"), named("patches.json")}
    assert (tmp_path / named("patches.csv")).read_text().startswith("minx,")


def test_csvs_open_with_default_options_and_their_sidecars_carry_the_notice(
    store: Store, session: ReviewSession, tmp_path: Path
) -> None:
    """Issue 13, item 11: CSVs start with their header row (pandas and R read them with
    default options); the research-use notice and the columns are in the JSON beside each."""
    reviewed(session)
    export = load_review_export(store, session.region_set_id)
    export_review(tmp_path, export, ["csv", "report"])
    # What pandas.read_csv, R's read.csv and spreadsheets do by default: the first line is
    # the header.
    with (tmp_path / named("patches.csv")).open(newline="") as handle:
        patches = list(csv.DictReader(handle))
    assert list(patches[0]) == ["minx", "miny", "width", "height", "prob_idc"]
    assert len(patches) == export.probability_map.scored_count
    assert all(0 <= float(row["prob_idc"]) <= 1 for row in patches)
    with (tmp_path / named("review.csv")).open(newline="") as handle:
        regions = list(csv.DictReader(handle))
    assert [row["status"] for row in regions] == ["accepted", "rejected", "pending", "accepted"]
    assert [row["label"] for row in regions] == ["1", "2", "3", "M4"]
    try:
        import pandas
    except ImportError:
        pass
    else:
        assert list(pandas.read_csv(tmp_path / named("patches.csv")).columns) == list(patches[0])
    sidecar = json.loads((tmp_path / named("patches.json")).read_text())
    assert sidecar["notice"] == RESEARCH_USE_NOTICE
    assert sidecar["table"] == named("patches.csv")
    assert list(sidecar["columns"]) == list(patches[0])
    assert sidecar["slide"] == {"identity": "q" * 64}
    summary = json.loads((tmp_path / named("review.json")).read_text())
    assert summary["notice"] == RESEARCH_USE_NOTICE
    assert list(summary["tables"][named("review.csv")]["columns"]) == list(regions[0])


def test_the_report_model_section_is_a_few_readable_rows() -> None:
    """Issue 13, item 9: not ~80 rows of raw metric keys: the model, its threshold, and the
    main figures with their intervals, test patients first."""
    from wsiviewer.core.exports.report import _model_rows
    from wsiviewer.core.model.cards import ModelCard

    card = ModelCard.from_file(Path(__file__).resolve().parents[3] / "models" / "resnet8.json")
    model = {
        "name": card.name,
        "version": card.version,
        "architecture": card.architecture,
        "input_mpp": card.input_mpp,
        "threshold": card.threshold,
        "card_threshold": card.threshold,
        "min_area_mm2": 0.09,
        "intended_use": card.intended_use,
        "metrics": card.extra["metrics"],
    }
    rows = _model_rows(model)
    assert len(rows) <= 8
    text = "\n".join(f"{key}: {value}" for key, value in rows)
    assert "On the test patients (45)" in text
    assert "Balanced accuracy 0.788 (0.719–0.873)" in text
    assert "P ≥ 0.138 (the card's operating point: 0.138)" in text
    for raw in ("intervals_95", "Metric:", "0.137872", "tp ", "fn "):
        assert raw not in text
