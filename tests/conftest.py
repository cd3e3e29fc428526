"""Shared fixtures: an isolated data directory, the real data folder, a tiny random model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
#: ``../shared/data`` beside the checkout: real slides and IDC patches (never committed).
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def isolated_data_dir(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own user data directory (Store, user models)."""
    folder = tmp_path_factory.mktemp("wsiviewer-data")
    monkeypatch.setenv("WSIVIEWER_DATA_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def wsi_dir(shared_data: Path) -> Path:
    folder = shared_data / "wsi"
    if not folder.is_dir():
        pytest.skip(f"real slides not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def idc_dir(shared_data: Path) -> Path:
    folder = shared_data / "idc"
    if not folder.is_dir():
        pytest.skip(f"IDC patches not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def tiny_model_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised CancerNet written by the real model writer."""
    import torch

    from wsiviewer.core.model.networks import CancerNet
    from wsiviewer.core.model.weights import untrained_card_fields, write_model

    torch.manual_seed(0)
    model = CancerNet()
    # Random BatchNorm statistics so the untrained net gives varied probabilities.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return write_model(model.eval(), tmp_path_factory.mktemp("models"), untrained_card_fields())


def he_like_slide(shape: tuple[int, int] = (1200, 1600), seed: int = 0) -> np.ndarray:
    """Glass with two pink/purple tissue blobs, at any resolution."""
    rng = np.random.default_rng(seed)
    height, width = shape
    pixels = np.full((height, width, 3), 240, np.uint8)
    yy, xx = np.mgrid[0:height, 0:width]
    for cy, cx, r in ((0.35, 0.3, 0.22), (0.65, 0.72, 0.18)):
        blob = (yy - cy * height) ** 2 + (xx - cx * width) ** 2 < (r * min(height, width)) ** 2
        noise = rng.integers(-25, 25, (int(blob.sum()), 3))
        pixels[blob] = np.clip(np.array([200, 120, 170]) + noise, 0, 255)
    pixels += rng.integers(0, 4, pixels.shape, dtype=np.uint8)
    return pixels
