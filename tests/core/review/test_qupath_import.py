"""QuPath GeoJSON: our export follows its conventions, and we read what QuPath writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import box, mapping

from tests.core.exports.test_analysis_outputs import THRESHOLD, _analysis, _probability_map
from wsiviewer.core.exports.geojson import CANDIDATE_COLOR, write_review_geojson
from wsiviewer.core.review.qupath_import import (
    ImportedAnnotation,
    import_annotations,
    read_qupath_geojson,
)
from wsiviewer.core.review.session import ReviewSession, open_review
from wsiviewer.core.store.database import Store
from wsiviewer.errors import QuPathImportError, ReviewError, WsiViewerError


@pytest.fixture
def store(isolated_data_dir: Path) -> Iterator[Store]:
    with Store.open() as opened:
        yield opened


@pytest.fixture
def session(store: Store) -> ReviewSession:
    analysis_id = store.save_analysis(_analysis(_probability_map()))
    return open_review(store, analysis_id, THRESHOLD, 0.0, "dr-a")


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def feature(geometry: dict[str, Any], **properties: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


SQUARE = mapping(box(10, 20, 110, 220))


def test_export_follows_qupath_conventions(session: ReviewSession, tmp_path: Path) -> None:
    items = session.state().items
    session.reject(items[1].ref)
    session.set_note(items[0].ref, "checked")
    path = write_review_geojson(tmp_path / "regions.geojson", session.state(), analysis_key="k")
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection"
    assert "Research use only" in data["notice"]
    assert "level-0 px" in data["wsiviewer"]["units"]
    for exported in data["features"]:
        assert exported["type"] == "Feature"
        assert exported["geometry"]["type"] == "Polygon"
        properties = exported["properties"]
        assert properties["objectType"] == "annotation"
        assert isinstance(properties["classification"]["name"], str)
        color = properties["classification"]["color"]
        assert len(color) == 3
        assert all(isinstance(channel, int) and 0 <= channel <= 255 for channel in color)
        assert isinstance(properties["measurements"], dict)
        assert all(isinstance(v, float) for v in properties["measurements"].values())
        assert properties["status"] in {"accepted", "rejected", "pending"}
        assert isinstance(properties["note"], str)
        # Level-0 px: inside the slide's level-0 box, not grid cells or µm.
        xs = [x for ring in exported["geometry"]["coordinates"] for x, _ in ring]
        assert max(xs) > 100
    by_status = {f["properties"]["status"]: f for f in data["features"]}
    assert by_status["rejected"]["properties"]["classification"]["name"] == "IDC (rejected)"
    assert by_status["pending"]["properties"]["classification"] == {
        "name": "IDC (candidate)",
        "color": list(CANDIDATE_COLOR),
    }


def test_export_round_trips_through_the_reader(session: ReviewSession, tmp_path: Path) -> None:
    session.add_manual_region(box(500, 100, 700, 300), note="drawn", status="pending")
    state = session.state()
    path = write_review_geojson(tmp_path / "regions.geojson", state)
    imported = read_qupath_geojson(path)
    assert len(imported) == len(state.items) == 4
    assert imported.skipped_count == 0
    for annotation, item in zip(imported, state.items, strict=True):
        assert annotation.polygon.is_valid
        # Coordinates are rounded to 1/1000 px.
        difference = annotation.polygon.symmetric_difference(item.polygon).area
        assert difference <= 1e-3 * item.polygon.length
        assert annotation.classification == "IDC (candidate)"
        assert annotation.color == CANDIDATE_COLOR
        assert annotation.name == f"Region {item.label} (candidate)"
        assert annotation.measurements["area_mm2"] == pytest.approx(item.area_mm2)


def test_reads_every_shape_qupath_writes(tmp_path: Path) -> None:
    multi = {
        "type": "MultiPolygon",
        "coordinates": [
            mapping(box(0, 0, 10, 10))["coordinates"],
            mapping(box(20, 0, 30, 10))["coordinates"],
        ],
    }
    features = [
        feature(SQUARE, objectType="annotation", name="A", classification={"name": "Tumor"}),
        feature(multi, objectType="annotation", classification={"name": "Stroma"}),
        feature({"type": "Point", "coordinates": [5, 5]}, objectType="annotation"),
        feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, objectType="annotation"),
        feature(SQUARE, objectType="detection"),
        feature(SQUARE),  # no objectType: an annotation
    ]
    as_list = read_qupath_geojson(write_json(tmp_path / "list.geojson", features))
    collection = read_qupath_geojson(
        write_json(tmp_path / "fc.geojson", {"type": "FeatureCollection", "features": features})
    )
    for result in (as_list, collection):
        assert [(a.name, a.classification, a.part) for a in result] == [
            ("A", "Tumor", 0),
            (None, "Stroma", 1),
            (None, "Stroma", 2),
            (None, None, 0),
        ]
        assert dict(result.skipped) == {"Point": 1, "LineString": 1, "detection": 1}
        assert result.skipped_count == 3
        assert result[1].polygon.equals(box(0, 0, 10, 10))
    single = read_qupath_geojson(write_json(tmp_path / "one.geojson", features[0]))
    assert len(single) == 1
    assert isinstance(single[0], ImportedAnnotation)
    assert single[0].polygon.equals(box(10, 20, 110, 220))


def test_reads_old_qupath_colours_and_measurement_lists(tmp_path: Path) -> None:
    old = feature(
        SQUARE,
        objectType="annotation",
        classification={"name": "Tumor", "colorRGB": -3670016},  # 0xFFC80000
        measurements=[{"name": "Area µm^2", "value": 12.5}, {"name": "bad", "value": "NaN"}],
    )
    new = feature(
        SQUARE,
        classification={"name": "Tumor", "color": [200, 0, 0]},
        measurements={"Area µm^2": 12.5, "flag": True},
    )
    old_annotation, new_annotation = read_qupath_geojson(
        write_json(tmp_path / "a.geojson", [old, new])
    )
    assert old_annotation.color == new_annotation.color == (200, 0, 0)
    assert old_annotation.measurements == new_annotation.measurements == {"Area µm^2": 12.5}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"type": "Topology"}', "not GeoJSON features"),
        ('[{"type": "Polygon"}]', "item 0 is not a Feature"),
        ('{"type": "FeatureCollection"}', "no 'features' list"),
        (
            json.dumps(feature({"type": "Polygon", "coordinates": [[[0, 0], [1]]]}, name="x")),
            "malformed Polygon",
        ),
        (
            json.dumps(
                feature(
                    {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10]]]},
                    name="bowtie",
                )
            ),
            "'bowtie'.*invalid polygon: Self-intersection",
        ),
    ],
)
def test_bad_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(QuPathImportError, match=message) as raised:
        read_qupath_geojson(path)
    assert isinstance(raised.value, WsiViewerError)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QuPathImportError, match="not found"):
        read_qupath_geojson(tmp_path / "nope.geojson")


def test_import_annotations_adds_manual_regions(session: ReviewSession, tmp_path: Path) -> None:
    path = write_json(
        tmp_path / "qupath.geojson",
        [
            feature(SQUARE, objectType="annotation", name="A", classification={"name": "Tumor"}),
            feature(mapping(box(300, 300, 400, 400)), objectType="annotation"),
            feature({"type": "Point", "coordinates": [1, 1]}, objectType="annotation"),
        ],
    )
    result = import_annotations(session, path)
    assert (result.added, result.already_present, dict(result.skipped)) == (2, 0, {"Point": 1})
    assert result.text == "2 annotations imported; 1 skipped (1 Point)"
    manual = [item for item in session.state().items if item.ref.kind == "manual"]
    assert [item.note for item in manual] == [
        "imported from QuPath: A/Tumor",
        "imported from QuPath: (unnamed)/(unclassified)",
    ]
    assert manual[0].polygon.equals(box(10, 20, 110, 220))
    assert manual[0].status == "pending"
    assert session.undo()
    assert len([item for item in session.state().items if item.ref.kind == "manual"]) == 1


def test_import_is_all_or_nothing_when_a_polygon_cannot_be_added(
    session: ReviewSession, tmp_path: Path
) -> None:
    path = write_json(
        tmp_path / "qupath.geojson",
        [feature(SQUARE), feature(mapping(box(1e7, 1e7, 1e7 + 5, 1e7 + 5)))],
    )
    with pytest.raises(ReviewError, match="outside the slide"):
        import_annotations(session, path)
    assert session.history() == []


def test_imported_annotations_keep_their_class_and_re_import_adds_nothing(
    session: ReviewSession, tmp_path: Path
) -> None:
    """Issue 13, item 5: an imported "Stroma" annotation exports as Stroma (with its colour),
    whatever its status; importing the same file again, or our own export, adds nothing."""
    path = write_json(
        tmp_path / "qupath.geojson",
        [
            feature(
                SQUARE,
                objectType="annotation",
                name="fibrous band",
                classification={"name": "Stroma", "color": [150, 200, 150]},
            ),
            feature(mapping(box(300, 300, 400, 400)), objectType="annotation", name="focus"),
        ],
    )
    first = import_annotations(session, path)
    assert (first.added, first.already_present) == (2, 0)
    stroma = next(item for item in session.state().items if item.source_name == "fibrous band")
    assert (stroma.origin, stroma.classification, stroma.color) == (
        "imported",
        "Stroma",
        (150, 200, 150),
    )
    session.accept(stroma.ref)
    again = import_annotations(session, path)
    assert (again.added, again.already_present) == (0, 2)
    assert again.text == "0 annotations imported; 2 already in the review"
    state = session.state()
    assert len(state.items) == 5  # three model regions, two imported once
    exported = json.loads(write_review_geojson(tmp_path / "out.geojson", state).read_text())[
        "features"
    ]
    by_name = {f["properties"]["name"]: f["properties"] for f in exported}
    assert by_name["fibrous band (accepted)"]["classification"] == {
        "name": "Stroma",
        "color": [150, 200, 150],
    }
    assert by_name["focus (candidate)"]["classification"]["name"] == "IDC (candidate)"
    # Our own export of this review, imported back: every outline is already there.
    round_trip = import_annotations(session, tmp_path / "out.geojson")
    assert (round_trip.added, round_trip.already_present) == (0, 5)
    # After the imported region is deleted, importing brings it back (once).
    session.delete(stroma.ref)
    assert import_annotations(session, path).added == 1
    assert import_annotations(session, path).added == 0
