"""A region's evidence on a real patient rebuilt as a slide: its patches read afresh from the
slide are the ones the analysis scored, the slide-resolution pictures are the dataset's pixels,
the saliency cache returns what it stored and never a damaged file's contents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box

from wsiviewer.core.analysis.evidence import pick_cells
from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.analysis.patches import PatchReader
from wsiviewer.core.analysis.pipeline import sample_patches
from wsiviewer.core.analysis.probability import ProbabilityMap
from wsiviewer.core.exports.pyramid_tiff import UpsampledSource, write_pyramid_tiff
from wsiviewer.core.model.cards import ModelCard, resolve_model
from wsiviewer.core.model.colour import apply_table, lookup_table, slide_quantiles
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.model.saliency import SaliencyExplainer, SaliencyMaps
from wsiviewer.core.progress import run_to_end
from wsiviewer.core.review.evidence import (
    SaliencyCache,
    patch_saliency,
    point_evidence,
    region_cells,
    region_evidence,
)
from wsiviewer.core.review.log import review_state
from wsiviewer.core.slides import open_slide
from wsiviewer.core.store.database import Store
from wsiviewer.core.workflow import run_analysis
from wsiviewer.errors import ReviewError
from wsiviewer.training.idc import PATCH_SIZE, rebuild_patient

PATIENT = "14306"
#: A window of the complete patient with IDC and non-IDC patches (grid cells).
WINDOW_RC = (slice(14, 26), slice(32, 44))
#: The window enlarged 4×: a 1 µm/px slide whose 4 µm/px cells are the dataset's patches.
ENLARGEMENT = 4


@pytest.fixture(scope="module")
def patient_slide(
    idc_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, np.ndarray]:
    """The window as a 1 µm/px pyramid, and its pixels at the dataset's 4 µm/px."""
    patient_dir = idc_dir / PATIENT
    if not patient_dir.is_dir():
        pytest.skip(f"complete patient {PATIENT} not in {idc_dir}")
    rows, cols = WINDOW_RC
    pixels = rebuild_patient(patient_dir).pixels[
        rows.start * PATCH_SIZE : rows.stop * PATCH_SIZE,
        cols.start * PATCH_SIZE : cols.stop * PATCH_SIZE,
    ]
    pixels = np.ascontiguousarray(pixels)
    path = write_pyramid_tiff(
        tmp_path_factory.mktemp("evidence") / "patient.tif",
        UpsampledSource(pixels, ENLARGEMENT),
        mpp=4.0 / ENLARGEMENT,
        downsamples=(1, 4),
        compression="deflate",
    )
    return path, pixels


@pytest.fixture(scope="module")
def card() -> ModelCard:
    """The shipped default model: real tumour scored, colour standardisation and context."""
    return resolve_model(None)


@pytest.fixture
def recorded(patient_slide: tuple[Path, np.ndarray], card: ModelCard, isolated_data_dir: Path):  # type: ignore[no-untyped-def]
    """The slide analysed and recorded in this test's Store: (store, result)."""
    path, _ = patient_slide
    with open_slide(path) as slide, Store.open() as store:
        result = run_to_end(
            run_analysis(
                slide,
                Predictor(card, device="cpu"),
                slide.resolve_mpp(),
                store=store,
            )
        )
        assert len(result.region_set) >= 1, "the window's tumour should be flagged"
        yield store, result


def test_region_evidence_shows_the_patches_the_analysis_scored(
    recorded, patient_slide: tuple[Path, np.ndarray], card: ModelCard
) -> None:  # type: ignore[no-untyped-def]
    store, result = recorded
    path, pixels = patient_slide
    record = store.analysis(result.analysis_id)
    item = review_state(store, result.region_set_id).items[0]
    analysis_map = result.analysis.probability_map
    with open_slide(path) as slide:
        steps: list[tuple[int, int]] = []
        evidence = run_to_end(
            region_evidence(store, slide, record, item.polygon, item.label, card, top=4, lowest=2),
            steps.append,
        )
        reader = PatchReader(slide, analysis_map.grid)
        table = lookup_table(
            slide_quantiles(sample_patches(reader, analysis_map.tissue)), card.colour
        )
        expected_inputs = [
            apply_table(reader.read_cells(*patch.grid_rc, 1, 1)[None], table)[0]
            for patch in evidence.patches
        ]
    assert evidence.region_label == item.label
    assert steps[-1] == (len(evidence.patches), len(evidence.patches))
    cells = {tuple(rc) for rc in region_cells(analysis_map, item.polygon)}
    assert evidence.cell_count == len(cells) > 6
    kinds = [patch.kind for patch in evidence.patches]
    assert kinds == ["top"] * 4 + ["lowest"] * 2
    shown = [patch.probability for patch in evidence.patches]
    assert shown[:4] == sorted(shown[:4], reverse=True)
    assert shown[4:] == sorted(shown[4:])
    inside = [analysis_map.probabilities[rc] for rc in cells]
    assert shown[0] == pytest.approx(max(inside))
    assert shown[4] == pytest.approx(min(inside))
    assert len({patch.grid_rc for patch in evidence.patches}) == 6
    size = PATCH_SIZE
    for patch, expected in zip(evidence.patches, expected_inputs, strict=True):
        assert patch.grid_rc in cells
        assert patch.probability == pytest.approx(float(analysis_map.probabilities[patch.grid_rc]))
        # What the model saw: the analysis's read of that cell, colours standardised.
        np.testing.assert_array_equal(patch.model_input, expected)
        # Scored alone, as the analysis scored it before its spatial context.
        assert patch.patch_probability == pytest.approx(
            float(analysis_map.patch_probabilities[patch.grid_rc]), abs=2e-4
        )
        # At the slide's resolution: the dataset's own pixels, enlarged.
        assert patch.native.shape == (size * ENLARGEMENT, size * ENLARGEMENT, 3)
        assert patch.native_um_per_px == pytest.approx(4.0 / ENLARGEMENT)
        row, col = patch.grid_rc
        np.testing.assert_array_equal(
            patch.native[::ENLARGEMENT, ::ENLARGEMENT],
            pixels[row * size : (row + 1) * size, col * size : (col + 1) * size],
        )
        x, y, w, h = patch.l0_box
        assert (x, y, w, h) == pytest.approx(analysis_map.grid.l0_box(patch.grid_rc))
        assert patch.um_centre == pytest.approx(((col + 0.5) * 200.0, (row + 0.5) * 200.0))


def test_point_evidence_and_its_errors(
    recorded, patient_slide: tuple[Path, np.ndarray], card: ModelCard, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    store, result = recorded
    path, _ = patient_slide
    record = store.analysis(result.analysis_id)
    grid = result.analysis.grid
    tissue_rc = tuple(int(v) for v in np.argwhere(result.analysis.probability_map.tissue)[0])
    x, y, size, _ = grid.l0_box(tissue_rc)
    with open_slide(path) as slide:
        evidence = point_evidence(store, slide, record, (x + size / 3, y + size / 3), card)
        assert [patch.grid_rc for patch in evidence.patches] == [tissue_rc]
        assert evidence.patches[0].kind == "point"
        assert evidence.region_label is None
        width, _ = slide.dimensions
        with pytest.raises(ReviewError, match="outside the analysed slide"):
            point_evidence(store, slide, record, (width + 10.0, 5.0), card)
        blank = np.argwhere(~result.analysis.probability_map.tissue)
        if len(blank):
            bx, by, _, _ = grid.l0_box(tuple(int(v) for v in blank[0]))
            with pytest.raises(ReviewError, match="without tissue"):
                point_evidence(store, slide, record, (bx + 1.0, by + 1.0), card)
    other = write_pyramid_tiff(
        tmp_path / "other.tif", np.full((800, 800, 3), 230, np.uint8), mpp=1.0, downsamples=(1,)
    )
    with open_slide(other) as slide, pytest.raises(ReviewError, match="not the slide of"):
        point_evidence(store, slide, record, (10.0, 10.0), card)


def test_region_cells_are_the_tissue_cells_centred_inside() -> None:
    grid = PatchGrid.for_slide((1000, 800), 1.0, 4.0, 50)  # 200 px cells, 4 × 5
    tissue = np.ones(grid.shape, dtype=bool)
    tissue[1, 1] = False
    probability_map = ProbabilityMap(grid, np.full(grid.shape, 0.5, np.float32), tissue)
    # Centres at 100, 300, 500...: this box holds the centres of rows 0-1, cols 1-3.
    cells = region_cells(probability_map, box(150, 50, 750, 350))
    assert [tuple(rc) for rc in cells] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
    assert region_cells(probability_map, box(0, 0, 50, 50)).shape == (0, 2)


def test_pick_cells_orders_and_leaves_out_unscored_cells() -> None:
    grid = PatchGrid.for_slide((1000, 200), 1.0, 4.0, 50)  # one row of 5 cells
    probabilities = np.array([[0.9, np.nan, 0.3, 0.9, 0.1]], np.float32)
    tissue = np.array([[True, True, True, True, False]])
    probability_map = ProbabilityMap(grid, probabilities, tissue)
    cells = np.argwhere(np.ones(grid.shape, bool))
    assert pick_cells(probability_map, cells, top=2, lowest=5) == [
        ((0, 0), "top"),
        ((0, 3), "top"),
        ((0, 2), "lowest"),
    ]
    assert pick_cells(probability_map, cells, top=1, lowest=0) == [((0, 0), "top")]
    assert pick_cells(probability_map, np.zeros((0, 2), int)) == []


def test_on_a_dense_map_the_patches_shown_do_not_overlap() -> None:
    grid = PatchGrid.for_slide((1200, 400), 1.0, 4.0, 50, subdivision=2)  # 2 × 12 cells
    probabilities = np.linspace(0.9, 0.3, grid.cell_count, dtype=np.float32).reshape(grid.shape)
    probability_map = ProbabilityMap(grid, probabilities, np.ones(grid.shape, bool))
    cells = np.argwhere(np.ones(grid.shape, bool))
    picked = pick_cells(probability_map, cells, top=3, lowest=2)
    assert [kind for _, kind in picked] == ["top"] * 3 + ["lowest"] * 2
    assert [rc for rc, _ in picked[:3]] == [(0, 0), (0, 2), (0, 4)]  # (0, 1) overlaps (0, 0)
    chosen = np.array([rc for rc, _ in picked])
    for i in range(len(chosen)):
        for j in range(i):
            assert np.abs(chosen[i] - chosen[j]).max() >= 2


class CountingExplainer(SaliencyExplainer):
    """The real explainer, counting the patches it explains."""

    explained = 0

    def explain(self, patches: np.ndarray, batch_size: int = 16) -> SaliencyMaps:
        CountingExplainer.explained += len(patches)
        return super().explain(patches, batch_size)


def test_saliency_is_cached_per_analysis_and_a_damaged_file_recomputed(
    recorded, patient_slide: tuple[Path, np.ndarray], card: ModelCard
) -> None:  # type: ignore[no-untyped-def]
    store, result = recorded
    path, _ = patient_slide
    record = store.analysis(result.analysis_id)
    item = review_state(store, result.region_set_id).items[0]
    with open_slide(path) as slide:
        evidence = run_to_end(
            region_evidence(store, slide, record, item.polygon, item.label, card, top=2, lowest=1)
        )
    explainer = CountingExplainer(card)
    cache = SaliencyCache(store.root, record)
    first = run_to_end(patch_saliency(evidence.patches, explainer, cache))
    assert CountingExplainer.explained == 3
    files = sorted(cache.folder.glob("*.npz"))
    assert len(files) == 3
    assert cache.folder.parent.name == "saliency"
    assert cache.folder.name == record.key
    again = run_to_end(patch_saliency(evidence.patches, explainer, cache))
    assert CountingExplainer.explained == 3, "the second time comes from the cache"
    for before, after in zip(first, again, strict=True):
        np.testing.assert_array_equal(before.gradcam, after.gradcam)
        np.testing.assert_array_equal(before.integrated_gradients, after.integrated_gradients)
    files[0].write_bytes(b"not a numpy file")
    third = run_to_end(patch_saliency(evidence.patches, explainer, cache))
    assert CountingExplainer.explained == 4, "the damaged file is recomputed, not shown"
    for before, after in zip(first, third, strict=True):
        np.testing.assert_allclose(before.gradcam, after.gradcam, atol=1e-5)


def test_the_report_shows_the_evidence_of_reviewed_regions_only(
    recorded,
    patient_slide: tuple[Path, np.ndarray],
    card: ModelCard,
    tmp_path: Path,
    tiny_model_card: Path,
) -> None:  # type: ignore[no-untyped-def]
    import base64
    import io
    import re

    from PIL import Image

    from wsiviewer.core.exports.review_outputs import export_review, load_review_export
    from wsiviewer.core.review.session import ReviewSession

    store, result = recorded
    path, _ = patient_slide
    items = review_state(store, result.region_set_id).items
    session = ReviewSession(store, result.region_set_id, "Dr Audit")
    session.accept(items[0].ref)
    session.set_note(items[0].ref, "solid nests")
    with open_slide(path) as slide:
        export = load_review_export(store, result.region_set_id)
        export_review(tmp_path / "with", export, ["report"], slide=slide, card=card)
        other = ModelCard.from_file(tiny_model_card)
        export_review(tmp_path / "other", export, ["report"], slide=slide, card=other)
    export_review(tmp_path / "without", export, ["report"])
    (page,) = [p.read_text() for p in (tmp_path / "with").glob("*_report.html")]
    section = page[page.index("<h2>Why each decision") : page.index("<h2>Decision log")]
    assert f"Region {items[0].label}:" in section
    assert "accepted by Dr Audit — “solid nests”" in section
    assert "Grad-CAM" in section
    strips = re.findall(
        r'alt="evidence of region (\w+)" src="data:image/png;base64,([^"]+)"', section
    )
    assert [label for label, _ in strips] == [items[0].label], "pending regions are not shown"
    with Image.open(io.BytesIO(base64.b64decode(strips[0][1]))) as strip:
        assert strip.height > 4 * 96  # input, slide, Grad-CAM, integrated gradients
    cached = sorted((store.root / "saliency" / export.analysis.key).glob("*.npz"))
    assert len(cached) == 3, "the report's maps are cached with the viewer's"
    (other_page,) = [p.read_text() for p in (tmp_path / "other").glob("*_report.html")]
    assert "No saliency: the analysis's model is not installed" in other_page
    (bare,) = [p.read_text() for p in (tmp_path / "without").glob("*_report.html")]
    assert "The slide was not available" in bare
