"""Patient-level cross-validation and resumable training, on a tiny synthetic dataset."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.test_train import write_dataset
from wsiviewer.core.progress import run_to_end
from wsiviewer.training.crossval import (
    FoldScores,
    PatientFolds,
    add_validation_scores,
    cross_validate,
    fit_calibration,
    make_folds,
    out_of_fold_figures,
    out_of_fold_probabilities,
)
from wsiviewer.training.dataset import load_patch_set, split_patients
from wsiviewer.training.metrics import best_balanced_accuracy_threshold
from wsiviewer.training.train import TrainingSettings, train

TINY = TrainingSettings(
    architecture="resnet8",
    architecture_args={"widths": [4, 8, 8]},
    epochs=2,
    batch_size=32,
    stain_jitter=0.05,
    hsv_jitter=0.1,
    jpeg_probability=0.5,
)


@pytest.fixture(scope="module")
def patches(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("idc")
    write_dataset(root, patients=9, per_class=8)
    return load_patch_set(root)


def test_folds_partition_the_patients_and_round_trip(patches, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folds = make_folds(patches, {"9000", "9004"}, k=3, seed=1)
    dealt = [p for fold in folds.folds for p in fold]
    assert sorted(dealt) == sorted(patches.patient_ids)
    assert len(set(dealt)) == len(dealt)
    assert {len(fold) for fold in folds.folds} == {3}
    # The two complete patients land in different folds (stratified by completeness).
    assert {k for k, fold in enumerate(folds.folds) if {"9000", "9004"} & set(fold)} != {0}
    folds.save(tmp_path / "folds.json")
    assert PatientFolds.load(tmp_path / "folds.json") == folds
    assert make_folds(patches, set(), k=3, seed=1) == make_folds(patches, set(), k=3, seed=1)


@pytest.fixture
def one_thread():  # type: ignore[no-untyped-def]
    """Bit-identical training: several CPU threads may sum a convolution's gradient in another
    order from one run to the next (the whole and the resumed run differed in 1 of 5 runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_an_interrupted_run_resumes_to_the_same_weights(patches, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    split = split_patients(patches, seed=0)
    train_set, validation_set = patches.subset(split.train), patches.subset(split.validation)
    device = torch.device("cpu")
    whole = run_to_end(train(train_set, validation_set, TINY, device))
    checkpoint = tmp_path / "run.checkpoint"
    interrupted = train(train_set, validation_set, TINY, device, checkpoint=checkpoint)
    next(interrupted)  # epoch 1 done and saved
    interrupted.close()
    assert checkpoint.is_file()
    resumed = train(train_set, validation_set, TINY, device, checkpoint=checkpoint)
    reports = []
    result = run_to_end(resumed, reports.append)
    assert [r.epoch for r in reports] == [2]  # only the epoch that was missing
    assert [r.epoch for r in result.history] == [1, 2]
    for key, value in whole.model.state_dict().items():
        torch.testing.assert_close(result.model.state_dict()[key], value, rtol=0, atol=0)


def test_without_validation_every_epoch_runs_and_the_last_is_kept(patches) -> None:  # type: ignore[no-untyped-def]
    result = run_to_end(train(patches, None, TINY, torch.device("cpu")))
    assert [r.epoch for r in result.history] == [1, 2]
    assert result.best_epoch == 2
    assert np.isnan(result.history[-1].validation_auc)


def test_cross_validation_scores_every_patient_once_and_resumes(patches, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folds = make_folds(patches, set(), k=3, seed=0)
    settings = TrainingSettings(**{**TINY.__dict__, "epochs": 1})
    device = torch.device("cpu")
    first = run_to_end(cross_validate(patches, folds, settings, tmp_path, device, only=[1]))
    assert [s.fold for s in first] == [1]
    stamp = (tmp_path / "fold-1.npz").stat().st_mtime_ns
    scores = run_to_end(cross_validate(patches, folds, settings, tmp_path, device))
    assert (tmp_path / "fold-1.npz").stat().st_mtime_ns == stamp  # resumed, not retrained
    assert [s.fold for s in scores] == [0, 1, 2]
    scored = np.concatenate([s.patients for s in scores])
    assert sorted(scored.tolist()) == sorted(patches.patients.tolist())
    for fold in scores:
        assert set(fold.patients.tolist()) == set(folds.folds[fold.fold])
    assert (tmp_path / "fold-0.safetensors").is_file()
    assert not list(tmp_path.glob("*.checkpoint"))

    figures = out_of_fold_figures(scores, bootstrap=20)
    assert len(figures["folds"]) == 3
    assert len(figures["patients"]) == len(patches.patient_ids)
    # Each fold model is calibrated on its own validation patients ...
    probabilities = out_of_fold_probabilities(scores)
    for fold, p in zip(scores, probabilities, strict=True):
        assert fold.validation_log_odds is not None
        assert fold.validation_labels is not None
        assert len(fold.validation_log_odds) == len(fold.validation_labels) > 0
        own = fit_calibration(fold.validation_log_odds, fold.validation_labels)
        np.testing.assert_allclose(p, own.probabilities(fold.log_odds), rtol=1e-6)
    # ... and fold 0's threshold was chosen on folds 1 and 2 only (cross-fitting).
    expected = best_balanced_accuracy_threshold(
        np.concatenate([s.labels for s in scores[1:]]), np.concatenate(probabilities[1:])
    )
    assert figures["folds"][0]["threshold"] == pytest.approx(expected)
    assert 0.0 <= figures["pooled"]["roc_auc"] <= 1.0


def test_a_run_without_validation_scores_gets_them_from_its_weights(
    patches, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """A run of an older version kept no validation scores: they are computed again from each
    fold's weights, its validation patients dealt by the same rule, exactly as stored."""
    folds = make_folds(patches, set(), k=3, seed=0)
    settings = TrainingSettings(**{**TINY.__dict__, "epochs": 1})
    scores = run_to_end(cross_validate(patches, folds, settings, tmp_path, torch.device("cpu")))
    recipe = {"settings": settings.__dict__, "colour": True, "folds": 3}
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    for fold in scores:
        replace(fold, validation_log_odds=None, validation_labels=None).save(
            tmp_path / f"fold-{fold.fold}.npz"
        )
    assert FoldScores.load(tmp_path / "fold-0.npz", 0).own_calibration() is None
    again = add_validation_scores(patches, tmp_path, set(), torch.device("cpu"))
    for stored, computed in zip(scores, again, strict=True):
        assert computed.validation_log_odds is not None
        assert stored.validation_log_odds is not None
        np.testing.assert_allclose(
            computed.validation_log_odds, stored.validation_log_odds, atol=1e-5
        )
        np.testing.assert_array_equal(computed.validation_labels, stored.validation_labels)
        reloaded = FoldScores.load(tmp_path / f"fold-{stored.fold}.npz", stored.fold)
        assert reloaded.own_calibration() == computed.own_calibration()


def test_penultimate_features_are_the_last_linear_layers_input(patches) -> None:  # type: ignore[no-untyped-def]
    from wsiviewer.core.model.networks import build_model
    from wsiviewer.training.ood_fit import penultimate_features

    model = build_model("resnet8", {"widths": [4, 8, 8]})
    features = penultimate_features(
        model, patches.pixels[:10], (0.5, 0.5, 0.5), (0.2, 0.2, 0.2), torch.device("cpu")
    )
    assert features.shape == (10, 8)
    assert np.isfinite(features).all()
