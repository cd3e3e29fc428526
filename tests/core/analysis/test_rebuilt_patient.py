"""End to end on real IDC patches: a complete patient rebuilt as a 40x slide.

The patient is tiled back at 4 µm/px and enlarged 16× into a 0.25 µm/px pyramid, so the
analysis grid lands exactly on the dataset's patches: each scored cell's probability must
equal the model run on that patch's file. One pyramid has a 4 µm/px level (read directly),
the other does not (1 µm/px level area-averaged 4×4), which proves the tiler feeds the model
the scale it was trained on either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsiviewer.core.analysis.patches import PatchReader
from wsiviewer.core.analysis.pipeline import analyze
from wsiviewer.core.exports.pyramid_tiff import UpsampledSource, write_pyramid_tiff
from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.predictor import Predictor
from wsiviewer.core.progress import run_to_end
from wsiviewer.core.slides import Mpp, open_slide
from wsiviewer.training.idc import PATCH_SIZE, pad_patch, read_patch, rebuild_patient

PATIENT = "14306"
#: A window of the patient (grid cells) with IDC and non-IDC patches, kept small for CI.
WINDOW_RC = (slice(14, 26), slice(16, 28))


@pytest.fixture(scope="module")
def rebuilt_window(idc_dir: Path) -> tuple[np.ndarray, list]:  # type: ignore[type-arg]
    patient_dir = idc_dir / PATIENT
    if not patient_dir.is_dir():
        pytest.skip(f"complete patient {PATIENT} not in {idc_dir}")
    rebuilt = rebuild_patient(patient_dir)
    rows, cols = WINDOW_RC
    pixels = rebuilt.pixels[
        rows.start * PATCH_SIZE : rows.stop * PATCH_SIZE,
        cols.start * PATCH_SIZE : cols.stop * PATCH_SIZE,
    ]
    inside = [
        p
        for p in rebuilt.patches
        if rows.start <= p.grid_rc[0] < rows.stop and cols.start <= p.grid_rc[1] < cols.stop
    ]
    return np.ascontiguousarray(pixels), inside


@pytest.mark.parametrize(
    ("style", "downsamples", "expected_level"),
    # Patches come from the 1 µm/px level (downsample 4) averaged 4 × 4, whether or not the
    # pyramid has a 4 µm/px level: a level twice as fine or finer is preferred.
    [("generic", (1, 4, 16), 1), ("aperio", (1, 4, 32), 1)],
)
def test_cells_score_exactly_like_their_patch_files(
    rebuilt_window: tuple[np.ndarray, list],  # type: ignore[type-arg]
    tiny_model_card: Path,
    tmp_path: Path,
    style: str,
    downsamples: tuple[int, ...],
    expected_level: int,
) -> None:
    pixels, patches = rebuilt_window
    labels = {p.label for p in patches}
    assert labels == {0, 1}, "the window should hold IDC and non-IDC patches"
    suffix = ".svs" if style == "aperio" else ".tif"
    path = write_pyramid_tiff(
        tmp_path / f"patient{suffix}",
        UpsampledSource(pixels, 16),
        mpp=0.25,
        downsamples=downsamples,
        compression="deflate",  # lossless, so pixels are the dataset's
        style=style,  # type: ignore[arg-type]
    )
    predictor = Predictor(ModelCard.from_file(tiny_model_card), device="cpu", batch_size=128)
    with open_slide(path) as slide:
        assert slide.mpp == Mpp(0.25, "metadata")
        assert slide.dimensions == (pixels.shape[1] * 16, pixels.shape[0] * 16)
        analysis = run_to_end(analyze(slide, predictor, mpp=slide.resolve_mpp()))
        grid = analysis.probability_map.grid
        assert grid.l0_patch_size == 800.0
        assert PatchReader(slide, grid).level == expected_level
    pmap = analysis.probability_map
    rows, cols = WINDOW_RC
    kept = [p for p in patches if pmap.tissue[p.grid_rc[0] - rows.start, p.grid_rc[1] - cols.start]]
    assert len(kept) >= 0.95 * len(patches)
    files = np.stack([pad_patch(read_patch(p.path)) for p in kept])
    expected = predictor.predict(files)
    scored = np.array(
        [pmap.probabilities[p.grid_rc[0] - rows.start, p.grid_rc[1] - cols.start] for p in kept]
    )
    np.testing.assert_allclose(scored, expected, atol=1e-6, rtol=0)
