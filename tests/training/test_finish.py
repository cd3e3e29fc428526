"""From a cross-validation run to a shipped model, on a few real patients: the final card
carries colour, context, the stain check and the out-of-distribution model, and the report
has the end-to-end and compression sections, all measured through the real analysis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from wsiviewer.cli import main
from wsiviewer.core.model.cards import ModelCard

#: Two small complete patients and four small incomplete ones.
COMPLETE = ("8916", "9035")
INCOMPLETE = ("9175", "16534", "9262", "12892")


@pytest.fixture(scope="module")
def run(idc_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    patients = [p for p in (*COMPLETE, *INCOMPLETE) if (idc_dir / p).is_dir()]
    if len(patients) < 6:
        pytest.skip("the small real patients of this test are not available")
    root = tmp_path_factory.mktemp("finish")
    data = root / "idc"
    data.mkdir()
    for patient in patients:
        shutil.copytree(idc_dir / patient, data / patient)
    rows = [f"{p},0,0,{int(p in COMPLETE)}" for p in patients]
    (root / "idc_patients.csv").write_text("patient,class0,class1,complete\n" + "\n".join(rows))
    common = ["--data", str(data), "--device", "cpu", "--threads", "1"]
    assert main([
        "crossval", *common, "--out", str(root / "cv"), "--folds", "2", "--epochs", "1",
        "--architecture", "resnet8", "--architecture-args", '{"widths": [4, 8, 8]}',
        "--colour", "--jpeg", "0.5",
    ]) == 0  # fmt: skip
    assert main([
        "train", *common, "--from-crossval", str(root / "cv"), "--out", str(root / "models"),
        "--name", "finished", "--ood",
    ]) == 0  # fmt: skip
    return root / "models", root / "cv"


def test_the_final_card_carries_what_the_analysis_must_apply(run: tuple[Path, Path]) -> None:
    models, _ = run
    card = ModelCard.from_file(models / "finished.json")
    assert card.colour is not None
    assert card.ood is not None
    assert card.ood.threshold > 0
    assert card.stain_check is not None
    assert card.stain_check.threshold > 0
    assert card.context is not None
    assert card.extra["metrics"]["out_of_fold"]["patients"] == 6
    assert 0.0 < card.threshold < 1.0
    # Trained and calibrated as each fold model: some patients held back for both.
    assert card.extra["training_data"]["validation_patients"] >= 1
    assert "validation patients" in card.extra["calibration"]


def test_the_report_has_every_section_measured(run: tuple[Path, Path]) -> None:
    models, cv = run
    report_dir = models / "reports" / "finished"
    report = (report_dir / "report.md").read_text()
    for heading in (
        "## Patch level, out of fold",
        "## End to end, complete patients out of fold",
        "## Compression, complete patients out of fold",
        "## Out-of-distribution warning",
        "## Stain check",
    ):
        assert heading in report
    rows = json.loads((cv / "finish-finished" / "end_to_end.json").read_text())
    assert sorted(r["patient"] for r in rows) == sorted(COMPLETE)
    for row in rows:
        assert row["cells"] > 100
        assert len(row["cell_labels"]) == row["cells"]
    compression = json.loads((cv / "finish-finished" / "compression.json").read_text())
    assert [r["patient"] for r in compression] == sorted(COMPLETE)
    assert compression[0]["1um_level"]["cells"] > 100
    assert (report_dir / "end_to_end.csv").read_text().startswith("patient,fold,cells,")
    assert not list(report_dir.rglob("*.safetensors"))


def test_evaluate_says_why_a_model_of_every_patient_has_no_test_part(
    run: tuple[Path, Path], idc_dir: Path
) -> None:
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.errors import DatasetError
    from wsiviewer.training.evaluate import evaluate

    models, _ = run
    card = ModelCard.from_file(models / "finished.json")
    with pytest.raises(DatasetError, match="trained on every patient"):
        run_to_end(evaluate(card, idc_dir, part="test", device="cpu", slides=False))


def test_the_dense_map_scores_end_to_end_at_100_um(run: tuple[Path, Path], idc_dir: Path) -> None:
    from wsiviewer.core.progress import run_to_end
    from wsiviewer.training.crossval import FoldScores, PatientFolds
    from wsiviewer.training.cv_evaluate import end_to_end

    _, cv = run
    folds = PatientFolds.load(cv / "folds.json")
    scores = [FoldScores.load(cv / f"fold-{k}.npz", k) for k in range(len(folds))]
    cards = {k: cv / "finish-finished" / "fold-cards" / f"fold-{k}.json" for k in range(2)}
    default = json.loads((cv / "finish-finished" / "end_to_end.json").read_text())
    patient = COMPLETE[0]
    (dense,) = run_to_end(end_to_end(cards, folds, scores, idc_dir, [patient], subdivision=2))
    (plain,) = [r for r in default if r["patient"] == patient]
    # About four 100 µm cells for each 200 µm one, each labelled as its patch.
    assert 3.5 * plain["cells"] <= dense["cells"] <= 4.5 * plain["cells"]
    assert 3.5 * plain["idc_cells"] <= dense["idc_cells"] <= 4.5 * plain["idc_cells"]
    assert 0.0 <= dense["roc_auc"] <= 1.0
