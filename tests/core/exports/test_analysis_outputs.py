"""Exports: QuPath GeoJSON, mask TIFF/PNG, patch CSV, heatmap, overlay, raw map, run record."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import numpy as np
import openslide
import pytest
import shapely
from PIL import Image
from shapely.geometry import MultiPolygon, box, shape

from wsiviewer import RESEARCH_USE_NOTICE
from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.pipeline import Analysis, SlideSummary
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.analysis.regions import Region, RegionSet, find_regions
from wsiviewer.core.analysis.tissue import TissueSettings
from wsiviewer.core.exports import analysis_outputs, colormaps, geojson, png
from wsiviewer.core.exports.analysis_outputs import (
    OUTPUT_NAMES,
    write_outputs,
    write_probabilities_npy,
    write_run_json,
)
from wsiviewer.core.exports.colormaps import COLORMAP_NAMES, apply_colormap, load_colormap
from wsiviewer.core.exports.geojson import (
    CANDIDATE_COLOR,
    regions_feature_collection,
    write_geojson,
)
from wsiviewer.core.exports.heatmaps import (
    heatmap_cell_px,
    heatmap_rgba,
    overlay_rgb,
    write_heatmap_png,
    write_overlay_png,
)
from wsiviewer.core.exports.legend import LEGEND_HEIGHT, LEGEND_MIN_WIDTH
from wsiviewer.core.exports.masks import (
    mask_l0_per_px,
    rasterize_regions,
    write_mask_png,
    write_mask_tiff,
)
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
from wsiviewer.core.exports.tables import write_patch_csv
from wsiviewer.core.model.cards import ModelSummary
from wsiviewer.core.slides import ArraySource, Mpp, OpenSlideSource, Slide
from wsiviewer.errors import ExportError

#: 50 px at 4 µm/px is 100.5 level-0 px at this µm/px: a fractional cell size, as on real slides.
SLIDE_MPP = 1.99
#: Not a multiple of the cell size: the last row and column of cells run past the slide.
L0_SIZE = (1030, 730)
THRESHOLD = 0.5
#: A name that must never reach an exported file.
SECRET_NAME = "Jane-Doe-S12-3456"


def _grid(l0_size: tuple[int, int] = L0_SIZE) -> PatchGrid:
    return PatchGrid.for_slide(l0_size, SLIDE_MPP, model_mpp=4.0, input_size=50)


def _probability_map() -> ProbabilityMap:
    """8 x 11 cells: a ring with a hole, a block clipped by the slide's corner, one cell."""
    grid = _grid()
    assert grid.shape == (8, 11)
    tissue = np.ones(grid.shape, dtype=bool)
    tissue[0] = False  # row 0 is glass: never scored
    probability_map = ProbabilityMap.empty(grid, tissue)
    probabilities = probability_map.probabilities
    probabilities[tissue] = 0.1
    probabilities[1:4, 1:4] = 0.9
    probabilities[2, 2] = 0.2  # the hole
    probabilities[5:8, 9:11] = 0.7  # runs past the right and bottom edges of the slide
    probabilities[6, 5] = 0.6
    return probability_map


def _slide_pixels() -> np.ndarray:
    width, height = L0_SIZE
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, (x // 4 + y // 4) % 256], axis=-1).astype(np.uint8)


def _analysis(probability_map: ProbabilityMap, identity: str = "q" * 64) -> Analysis:
    grid = probability_map.grid
    return Analysis(
        slide=SlideSummary(
            identity, "generic-tiff", grid.l0_dimensions, Mpp(SLIDE_MPP, "metadata")
        ),
        model=ModelSummary(
            name="cancernet",
            version="1.0",
            architecture="cancernet",
            weights_sha256="w" * 64,
            card_sha256="c" * 64,
            input_mpp=4.0,
            threshold=THRESHOLD,
        ),
        tissue_settings=TissueSettings(),
        probability_map=probability_map,
        device="cpu",
        batch_size=64,
        started_at="2026-01-01T00:00:00+00:00",
        timings_s={"tissue": 0.5, "inference": 2.0},
        warnings=[],
    )


@pytest.fixture
def probability_map() -> ProbabilityMap:
    return _probability_map()


@pytest.fixture
def region_set(probability_map: ProbabilityMap) -> RegionSet:
    regions = find_regions(probability_map, THRESHOLD)
    assert len(regions) == 3
    return regions


@pytest.fixture
def slide_file(tmp_path: Path) -> Path:
    """A slide on disk whose file name identifies a patient."""
    folder = tmp_path / "slides"
    folder.mkdir()
    return write_pyramid_tiff(
        folder / f"{SECRET_NAME}.tif", _slide_pixels(), mpp=SLIDE_MPP, tile=256
    )


def _cell_union(grid: PatchGrid, mask: np.ndarray):
    width, height = grid.l0_dimensions
    size = grid.l0_patch_size
    cells = [
        box(c * size, r * size, (c + 1) * size, (r + 1) * size)
        for r, c in zip(*np.nonzero(mask), strict=True)
    ]
    return shapely.union_all(cells).intersection(box(0, 0, width, height))


# --------------------------------------------------------------------------- GeoJSON


def test_geojson_follows_qupath_conventions(tmp_path: Path, region_set: RegionSet) -> None:
    path = write_geojson(tmp_path / "regions.geojson", region_set, analysis_key="k")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    assert data["type"] == "FeatureCollection"
    assert "Research use only" in data["notice"]
    assert "MultiPolygon" not in text
    assert len(data["features"]) == 3
    for number, feature in enumerate(data["features"], start=1):
        assert feature["type"] == "Feature"
        assert uuid.UUID(feature["id"]).version == 5
        assert feature["geometry"]["type"] == "Polygon"
        properties = feature["properties"]
        assert properties["objectType"] == "annotation"
        # Flagged, not reviewed: a candidate, never "IDC".
        assert properties["name"] == f"Region {number} (candidate)"
        assert properties["classification"] == {
            "name": "IDC (candidate)",
            "color": list(CANDIDATE_COLOR),
        }
        assert properties["isLocked"] is False
        measurements = properties["measurements"]
        assert isinstance(measurements, dict)
        assert set(measurements) == {"area_mm2", "max_prob", "mean_prob"}
        region = region_set.regions[number - 1]
        assert measurements["area_mm2"] == pytest.approx(region.area_mm2)
        assert measurements["max_prob"] == pytest.approx(region.max_prob)
        assert measurements["mean_prob"] == pytest.approx(region.mean_prob)
        for ring in feature["geometry"]["coordinates"]:
            assert ring[0] == ring[-1]
            assert len(ring) >= 4


def test_geojson_polygons_match_the_grid_cells(tmp_path: Path, region_set: RegionSet) -> None:
    grid = _grid()
    data = json.loads(write_geojson(tmp_path / "r.geojson", region_set).read_text("utf-8"))
    polygons = [shape(feature["geometry"]) for feature in data["features"]]
    assert all(polygon.is_valid for polygon in polygons)
    width, height = L0_SIZE
    for polygon in polygons:
        min_x, min_y, max_x, max_y = polygon.bounds
        assert (min_x, min_y) >= (0, 0)
        assert max_x <= width
        assert max_y <= height
    # The ring around the low cell keeps it as a hole.
    assert sorted(len(polygon.interiors) for polygon in polygons) == [0, 0, 1]
    expected = _cell_union(grid, region_set.mask(grid.shape))
    total = sum(polygon.area for polygon in polygons)
    # Coordinates are rounded to 1/1000 px: the area moves by at most that along the outlines.
    assert abs(total - expected.area) <= 1e-3 * expected.length
    assert shapely.union_all(polygons).symmetric_difference(expected).area < 1.0


def test_geojson_ids_are_reproducible(tmp_path: Path, region_set: RegionSet) -> None:
    first = write_geojson(tmp_path / "a.geojson", region_set, analysis_key="key").read_bytes()
    again = write_geojson(tmp_path / "b.geojson", region_set, analysis_key="key").read_bytes()
    assert first == again
    other = regions_feature_collection(region_set, analysis_key="another key")
    ids = {feature["id"] for feature in json.loads(first)["features"]}
    assert ids.isdisjoint(feature["id"] for feature in other["features"])
    assert len(ids) == 3


def test_geojson_never_writes_a_multipolygon(tmp_path: Path) -> None:
    parts = MultiPolygon([box(0, 0, 10, 10), box(20, 20, 30, 30)])
    single = MultiPolygon([box(40, 40, 50, 50)])
    cells = np.zeros((1, 2), dtype=int)
    region_set = RegionSet(
        0.5,
        0.0,
        (
            Region(1, parts, 1.0, 0.9, 0.8, cells),  # type: ignore[arg-type]
            Region(2, single, 1.0, 0.9, 0.8, cells),  # type: ignore[arg-type]
        ),
    )
    data = regions_feature_collection(region_set)
    assert [f["geometry"]["type"] for f in data["features"]] == ["Polygon"] * 3
    assert [f["properties"]["name"] for f in data["features"]] == [
        "Region 1 part 1 (candidate)",
        "Region 1 part 2 (candidate)",
        "Region 2 (candidate)",
    ]
    assert len({f["id"] for f in data["features"]}) == 3


def test_geojson_without_regions_is_an_empty_collection(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "r.geojson", RegionSet(0.5, 0.0, ()))
    data = json.loads(path.read_text("utf-8"))
    assert data["type"] == "FeatureCollection"
    assert data["features"] == []
    assert "Research use only" in data["notice"]


# --------------------------------------------------------------------------- mask


def _region_mask(region_set: RegionSet):  # type: ignore[no-untyped-def]
    grid = _grid()
    return rasterize_regions(
        (region.polygon for region in region_set.regions), grid.l0_dimensions, grid.slide_mpp
    )


def test_mask_tiff_overlays_the_slide(tmp_path: Path, region_set: RegionSet) -> None:
    grid = _grid()
    cells = region_set.mask(grid.shape)
    path = write_mask_tiff(tmp_path / "mask.tif", _region_mask(region_set), tile=256)
    size = grid.l0_patch_size
    with openslide.OpenSlide(path) as slide:
        assert slide.dimensions == L0_SIZE
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(SLIDE_MPP)
        assert float(slide.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(SLIDE_MPP)
        assert slide.level_count > 1
        assert "Research use only" in slide.properties[openslide.PROPERTY_NAME_COMMENT]
        level0 = np.asarray(slide.read_region((0, 0), 0, L0_SIZE).convert("L"))
        for row, col in [(1, 1), (2, 2), (6, 5), (7, 10), (0, 0), (4, 4)]:
            centre = (int((col + 0.5) * size), int((row + 0.5) * size))
            if centre[0] < L0_SIZE[0] and centre[1] < L0_SIZE[1]:
                assert level0[centre[1], centre[0]] == (255 if cells[row, col] else 0)
        assert set(np.unique(level0)) <= {0, 255}
        # The masked px cover the regions' area to within a mask px along their outlines.
        polygons = [region.polygon for region in region_set.regions]
        area = sum(p.area for p in polygons)
        perimeter = sum(p.length for p in polygons)
        assert abs(int((level0 == 255).sum()) - area) <= perimeter * mask_l0_per_px(SLIDE_MPP)
        coarsest = np.asarray(
            slide.read_region((0, 0), slide.level_count - 1, slide.level_dimensions[-1]).convert(
                "L"
            )
        )
        assert set(np.unique(coarsest)) == {0, 255}  # reduced levels stay binary


def test_masks_are_rasterised_at_4_um_per_px_or_finer() -> None:
    assert mask_l0_per_px(0.25) == 16
    assert mask_l0_per_px(0.499) == 8  # 3.99 µm
    assert mask_l0_per_px(SLIDE_MPP) == 2
    assert mask_l0_per_px(4.0) == 1
    assert mask_l0_per_px(8.0) == 1  # coarser slides: their own px
    with pytest.raises(ValueError, match="positive"):
        mask_l0_per_px(0.0)
    # A polygon too small to hold a px centre still marks its px.
    tiny = rasterize_regions([box(10.1, 10.1, 10.3, 10.3)], (100, 100), 0.25)
    assert tiny.set_count == 1
    # Holes stay holes.
    ring = box(0, 0, 400, 400).difference(box(100, 100, 300, 300))
    holed = rasterize_regions([ring], (400, 400), 0.25)
    assert holed.pixels.shape == (25, 25)
    assert not holed.pixels[12, 12]
    assert holed.pixels[2, 2]
    assert holed.set_count == 25 * 25 - (200 // 16 + 1) ** 2 or holed.set_count == pytest.approx(
        ring.area / 256, rel=0.1
    )


def test_mask_png_is_the_mask_at_4_um_per_px_or_finer(
    tmp_path: Path, region_set: RegionSet
) -> None:
    mask = _region_mask(region_set)
    path = write_mask_png(tmp_path / "mask.png", mask)
    with Image.open(path) as image:
        assert image.mode == "L"
        assert image.size == (mask.pixels.shape[1], mask.pixels.shape[0])
        assert image.size == (515, 365)  # 2 level-0 px per px at 1.99 µm/px: 3.98 µm
        assert (np.asarray(image) == np.where(mask.pixels, 255, 0)).all()
        assert image.text["Disclaimer"] == RESEARCH_USE_NOTICE
        assert float(image.text["Micrometres per image px"]) == pytest.approx(3.98)
    # Many px per 200 µm patch now, not one.
    polygons = [region.polygon for region in region_set.regions]
    assert mask.set_count * 4 == pytest.approx(sum(p.area for p in polygons), rel=0.05)


@pytest.mark.parametrize(
    ("shape", "mode"), [((9, 13), "L"), ((9, 13, 3), "RGB"), ((9, 13, 4), "RGBA")]
)
def test_png_pixels_and_text_round_trip(shape: tuple[int, ...], mode: str) -> None:
    pixels = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    text = {"Disclaimer": RESEARCH_USE_NOTICE, "Scale": "4 µm → 8 µm"}  # "→" is not Latin-1
    with Image.open(io.BytesIO(png.png_bytes(pixels, text))) as image:
        assert image.mode == mode
        np.testing.assert_array_equal(np.asarray(image), pixels)
        assert image.text == text


# --------------------------------------------------------------------------- CSV, npy


def test_patch_csv_lists_every_scored_cell(tmp_path: Path, probability_map: ProbabilityMap) -> None:
    path = write_patch_csv(tmp_path / "patches.csv", probability_map)
    lines = path.read_text(encoding="utf-8").splitlines()
    # The header row first: pandas, R and spreadsheets read it with their defaults.
    assert lines[0] == "minx,miny,width,height,prob_idc"
    rows = list(csv.reader(lines[1:]))
    assert len(rows) == probability_map.scored_count == 77
    size = _grid().l0_patch_size
    by_cell = {
        (round(float(r[1]) / size), round(float(r[0]) / size)): [float(v) for v in r] for r in rows
    }
    minx, miny, width, height, prob = by_cell[(2, 3)]
    assert (minx, miny) == pytest.approx((3 * size, 2 * size), abs=1e-3)
    assert width == height == pytest.approx(size, abs=1e-3)
    assert prob == pytest.approx(0.9, abs=1e-6)
    assert (0, 0) not in by_cell  # not tissue, not scored
    assert all(len(value.split(".")[-1]) <= 3 for row in rows for value in row[:4])


def test_probabilities_npy_round_trips_nan(tmp_path: Path, probability_map: ProbabilityMap) -> None:
    path = write_probabilities_npy(tmp_path / "p.npy", probability_map)
    loaded = np.load(path, allow_pickle=False)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, probability_map.probabilities)


# --------------------------------------------------------------------------- heatmap, overlay


def _lut_index(probability: float) -> int:
    """The colour map row of a probability as the float32 map stores it."""
    return int(np.rint(float(np.float32(probability)) * 255))


def test_heatmap_png_fades_below_the_threshold_and_carries_a_legend(
    tmp_path: Path, probability_map: ProbabilityMap
) -> None:
    """Issue 13, item 7: low probabilities are (nearly) transparent, flagged cells opaque, and
    the picture has a colour bar and a scale bar below the map."""
    path = write_heatmap_png(tmp_path / "heatmap.png", probability_map, threshold=THRESHOLD)
    with Image.open(path) as image:
        assert image.mode == "RGBA"
        pixels = np.asarray(image)
        assert "Research use only" in image.text["Disclaimer"]
        assert "legend" in image.text["Map"]
        um_per_px = float(image.text["Micrometres per image px"])
    cell_px = 32  # 11 cells across is far below the 2048 px target: the cap applies
    assert heatmap_cell_px(probability_map.grid) == cell_px
    map_height, map_width = 8 * cell_px, 11 * cell_px
    assert pixels.shape == (map_height + LEGEND_HEIGHT, max(map_width, LEGEND_MIN_WIDTH), 4)
    assert um_per_px == pytest.approx(probability_map.grid.l0_patch_size / cell_px * SLIDE_MPP)
    assert (pixels[:cell_px, :map_width, 3] == 0).all()  # row 0: not scored
    viridis = load_colormap("viridis")
    tissue = pixels[5 * cell_px + 3, 3]  # P = 0.1: a fifth of the threshold
    assert tuple(tissue[:3]) == tuple(viridis[_lut_index(0.1)])
    assert tissue[3] == round(255 * (0.1 / THRESHOLD) ** 2)  # 4 %: the tissue shows through
    hole = pixels[2 * cell_px + 3, 2 * cell_px + 3]  # P = 0.2
    assert tissue[3] < hole[3] < 255
    region = pixels[3 * cell_px + 15, 3 * cell_px]
    assert tuple(region) == (*viridis[_lut_index(0.9)], 255)
    # The legend band: opaque, with the colour bar's ends in the map's colours (low end over
    # the checkerboard) and black ink for the ticks, words and scale bar.
    band = pixels[map_height:]
    assert (band[..., 3] == 255).all()
    assert (band[..., :3] == 0).all(axis=-1).sum() > 100
    right_end = band[15, 10 + int((LEGEND_MIN_WIDTH * 0.7) - 30) - 3, :3]
    assert np.abs(right_end.astype(int) - viridis[-1]).max() < 40


def test_apply_colormap_ramps_opacity_up_to_the_threshold() -> None:
    rgba = apply_colormap(np.array([0.0002, 0.069, 0.138, 0.5, np.nan]), ramp_to=0.138)
    assert rgba[0, 3] == 0  # P = 0.0002 tints nothing
    assert rgba[1, 3] == round(255 * 0.25)  # half the threshold: a quarter
    assert rgba[2, 3] == 255
    assert rgba[3, 3] == 255
    assert rgba[4, 3] == 0
    assert (apply_colormap(np.array([0.01]), ramp_to=0.0)[..., 3] == 255).all()


def test_heatmap_cell_px_aims_at_the_target_size() -> None:
    assert heatmap_cell_px(PatchGrid(400.8, (145, 250), 4.0, 0.499, 50, (100_000, 58_000))) == 8
    assert heatmap_cell_px(PatchGrid(400.8, (2000, 2500), 4.0, 0.499, 50, (1_000_000,) * 2)) == 1
    # Never more px per cell than the slide has: the overlay would enlarge the slide.
    assert heatmap_cell_px(PatchGrid(12.5, (3, 4), 4.0, 16.0, 50, (50, 37))) == 12


def test_overlay_blends_the_heatmap_over_the_slide(
    tmp_path: Path, probability_map: ProbabilityMap
) -> None:
    slide = ArraySource(_slide_pixels(), mpp=SLIDE_MPP, downsamples=(1, 4))
    grid = probability_map.grid
    heatmap = heatmap_rgba(probability_map, threshold=THRESHOLD)
    overlay = overlay_rgb(slide, probability_map, threshold=THRESHOLD, alpha=0.5)
    assert overlay.shape == (*heatmap.shape[:2], 3)
    l0_width = grid.cols * grid.l0_patch_size
    # A picture may come from a slightly coarser level than the output needs.
    level = slide.display_level(l0_width / heatmap.shape[1])
    background = slide.read_l0_box(
        (0.0, 0.0, l0_width, grid.rows * grid.l0_patch_size),
        (heatmap.shape[1], heatmap.shape[0]),
        level=level,
    ).astype(float)
    unscored = heatmap[..., 3] == 0
    assert (overlay[unscored] == background[unscored]).all()
    weight = heatmap[..., 3:] / 255 * 0.5  # the ramp, times the overlay's opacity
    expected = np.rint(background * (1 - weight) + heatmap[..., :3] * weight)
    assert np.abs(overlay[~unscored] - expected[~unscored]).max() <= 1
    path = write_overlay_png(tmp_path / "overlay.png", slide, probability_map, threshold=0.5)
    with Image.open(path) as image:
        assert image.mode == "RGB"
        assert image.size == (
            max(heatmap.shape[1], LEGEND_MIN_WIDTH),
            heatmap.shape[0] + LEGEND_HEIGHT,
        )


# --------------------------------------------------------------------------- run record


def test_run_json_records_the_run(
    tmp_path: Path, probability_map: ProbabilityMap, region_set: RegionSet
) -> None:
    analysis = _analysis(probability_map)
    path = write_run_json(tmp_path / "run.json", analysis, region_set)
    run = json.loads(path.read_text(encoding="utf-8"))
    assert run["notice"] == RESEARCH_USE_NOTICE
    assert run["slide"] == {
        "identity": "q" * 64,
        "vendor": "generic-tiff",
        "l0_dimensions": list(L0_SIZE),
        "mpp": SLIDE_MPP,
        "mpp_source": "metadata",
    }
    assert run["model"]["weights_sha256"] == "w" * 64
    assert run["parameters"]["threshold"] == THRESHOLD
    assert run["parameters"]["min_area_mm2"] == 0.0
    assert run["parameters"]["device"] == "cpu"
    assert run["parameters"]["batch_size"] == 64
    assert run["parameters"]["tissue"] == TissueSettings().to_dict()
    assert run["grid"]["shape"] == [8, 11]
    assert run["counts"] == {
        "cells": 88,
        "tissue_cells": 77,
        "scored_cells": 77,
        "cells_at_or_above_threshold": 15,
        "regions": 3,
        "region_cells": 15,
    }
    assert run["analysis_key"] == analysis.key
    assert run["timings_s"] == {"tissue": 0.5, "inference": 2.0}
    assert run["software"]["name"] == "wsiviewer"
    assert [region["number"] for region in run["regions"]] == [1, 2, 3]


class _ModelWithPaths:
    """A model summary that, wrongly, carries where its files live."""

    weights_sha256 = "w" * 64
    card_sha256 = "c" * 64

    def to_dict(self) -> dict[str, object]:
        return {
            "name": "cancernet",
            "card_path": "/home/someone/models/cancernet.json",
            "weights_file": "cancernet.safetensors",
            "path": Path("/home/someone"),
            "training_data": {"dir": "/data/idc", "patients": 279},
        }


def test_run_json_drops_paths_and_file_names(
    tmp_path: Path, probability_map: ProbabilityMap, region_set: RegionSet
) -> None:
    analysis = _analysis(probability_map)
    analysis.model = _ModelWithPaths()  # type: ignore[assignment]
    text = write_run_json(tmp_path / "run.json", analysis, region_set).read_text("utf-8")
    assert "someone" not in text
    assert "safetensors" not in text
    assert "/data/idc" not in text
    run = json.loads(text)
    assert run["model"] == {"name": "cancernet", "training_data": {"patients": 279}}


# --------------------------------------------------------------------------- all outputs


def test_write_outputs_writes_every_file_and_no_slide_name(
    tmp_path: Path, slide_file: Path, probability_map: ProbabilityMap, region_set: RegionSet
) -> None:
    out = tmp_path / "out"
    with OpenSlideSource(slide_file) as slide:
        analysis = _analysis(probability_map, identity=slide.identity)
        written = write_outputs(out, analysis, region_set, slide)
    assert set(written) == set(OUTPUT_NAMES)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES.values())
    for path in written.values():
        data = path.read_bytes()
        assert SECRET_NAME.encode() not in data
        assert str(slide_file.parent).encode() not in data
        assert b"slides" not in data
    for kind in ("regions", "run"):
        assert "Research use only" in written[kind].read_text(encoding="utf-8")
    # The CSV is plain; run.json names it, with the notice and its columns.
    assert written["patches"].read_text(encoding="utf-8").startswith("minx,")
    tables = json.loads(written["run"].read_text(encoding="utf-8"))["tables"]
    assert tables["patches.csv"]["notice"] == RESEARCH_USE_NOTICE
    assert list(tables["patches.csv"]["columns"]) == ["minx", "miny", "width", "height", "prob_idc"]
    with openslide.OpenSlide(written["mask_tiff"]) as mask:
        assert mask.dimensions == L0_SIZE


def test_write_outputs_without_a_slide_skips_the_overlay(
    tmp_path: Path, probability_map: ProbabilityMap, region_set: RegionSet
) -> None:
    written = write_outputs(tmp_path, _analysis(probability_map), region_set)
    assert set(written) == set(OUTPUT_NAMES) - {"overlay"}


def test_a_failing_export_leaves_old_outputs_and_no_new_ones(
    tmp_path: Path,
    probability_map: ProbabilityMap,
    region_set: RegionSet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "regions.geojson").write_text("older regions")

    def broken_heatmap(*args: object, **kwargs: object) -> Path:
        raise RuntimeError("disk pulled")

    monkeypatch.setattr(analysis_outputs, "write_heatmap_png", broken_heatmap)
    with pytest.raises(RuntimeError, match="disk pulled"):
        write_outputs(tmp_path, _analysis(probability_map), region_set)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["regions.geojson"]
    assert (tmp_path / "regions.geojson").read_text() == "older regions"


def test_a_single_writer_failing_midway_keeps_the_old_file(
    tmp_path: Path, region_set: RegionSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "regions.geojson"
    target.write_text("older regions")

    real_dumps = json.dumps
    calls = []

    def dumps_then_interrupt(obj: object, **kwargs: object) -> str:
        calls.append(obj)
        if len(calls) > 1:  # the header is already written: Ctrl-C mid-file
            raise KeyboardInterrupt
        return real_dumps(obj, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(geojson.json, "dumps", dumps_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_geojson(target, region_set)
    assert target.read_text() == "older regions"
    assert [p.name for p in tmp_path.iterdir()] == ["regions.geojson"]


def test_unwritable_output_folder_is_an_export_error(
    tmp_path: Path, probability_map: ProbabilityMap, region_set: RegionSet
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError):
        write_outputs(blocker / "out", _analysis(probability_map), region_set)


# --------------------------------------------------------------------------- empty cases


def _check_empty_outputs(written: dict[str, Path], l0_size: tuple[int, int]) -> None:
    geojson = json.loads(written["regions"].read_text(encoding="utf-8"))
    assert geojson["features"] == []
    lines = written["patches"].read_text(encoding="utf-8").splitlines()
    assert lines == ["minx,miny,width,height,prob_idc"]
    with openslide.OpenSlide(written["mask_tiff"]) as mask:
        assert mask.dimensions == l0_size
        pixels = np.asarray(mask.read_region((0, 0), 0, l0_size).convert("L"))
        assert (pixels == 0).all()
    with Image.open(written["heatmap"]) as heatmap:
        map_part = np.asarray(heatmap) if "Empty" in heatmap.text else np.asarray(heatmap)[:-64]
        assert (map_part[..., 3] == 0).all()
    with Image.open(written["mask_png"]) as mask_png:
        assert (np.asarray(mask_png) == 0).all()
    run = json.loads(written["run"].read_text(encoding="utf-8"))
    assert run["counts"]["regions"] == 0
    assert run["counts"]["scored_cells"] == 0


def test_slide_smaller_than_one_patch_writes_valid_empty_files(tmp_path: Path) -> None:
    l0_size = (80, 60)
    grid = _grid(l0_size)
    assert grid.shape == (0, 0)
    probability_map = ProbabilityMap.empty(grid)
    region_set = find_regions(probability_map, THRESHOLD)
    slide: Slide = ArraySource(np.full((60, 80, 3), 200, np.uint8), mpp=SLIDE_MPP)
    written = write_outputs(tmp_path, _analysis(probability_map), region_set, slide)
    _check_empty_outputs(written, l0_size)
    assert np.load(written["probabilities"]).shape == (0, 0)
    with Image.open(written["heatmap"]) as heatmap:
        assert heatmap.text["Empty"]
    with Image.open(written["overlay"]) as overlay:
        assert overlay.mode == "RGB"


def test_no_scored_cells_writes_valid_empty_files(tmp_path: Path) -> None:
    grid = _grid()
    probability_map = ProbabilityMap.empty(grid)
    region_set = find_regions(probability_map, THRESHOLD)
    slide = ArraySource(_slide_pixels(), mpp=SLIDE_MPP)
    written = write_outputs(tmp_path, _analysis(probability_map), region_set, slide)
    _check_empty_outputs(written, L0_SIZE)
    with Image.open(written["mask_png"]) as mask_png:
        assert mask_png.size == (515, 365)  # the slide at 3.98 µm/px


# --------------------------------------------------------------------------- colour maps


def test_colormaps_load_as_256_rgb_rows() -> None:
    for name in COLORMAP_NAMES:
        lut = load_colormap(name)
        assert lut.shape == (256, 3)
        assert lut.dtype == np.uint8
        assert not lut.flags.writeable
    assert tuple(load_colormap("viridis")[0]) == (68, 1, 84)
    assert tuple(load_colormap()[-1]) == tuple(load_colormap("viridis")[-1])


def test_colormaps_load_from_a_source_tree_that_was_never_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def not_installed(package: str) -> None:
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.setattr(colormaps.resources, "files", not_installed)
    load_colormap.cache_clear()
    try:
        assert tuple(load_colormap("viridis")[0]) == (68, 1, 84)
    finally:
        load_colormap.cache_clear()


def test_unknown_colormap_is_rejected() -> None:
    with pytest.raises(ValueError, match="Unknown colour map 'jet'"):
        load_colormap("jet")


def test_apply_colormap_makes_nan_transparent_and_clips() -> None:
    values = np.array([[0.0, 1.0], [np.nan, 2.0]])
    rgba = apply_colormap(values, "magma")
    lut = load_colormap("magma")
    assert rgba.shape == (2, 2, 4)
    assert rgba.dtype == np.uint8
    assert tuple(rgba[0, 0]) == (*lut[0], 255)
    assert tuple(rgba[0, 1]) == (*lut[255], 255)
    assert tuple(rgba[1, 0]) == (0, 0, 0, 0)
    assert tuple(rgba[1, 1]) == (*lut[255], 255)
    assert (apply_colormap(values, alpha=128)[0, :, 3] == 128).all()
