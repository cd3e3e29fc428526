"""Shared fixtures: an isolated data directory, the real data folder, a tiny random model."""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: Set to run the suite as on an install without the GUI extra (no Qt at all): core, the
#: training code and the CLI must work, and the GUI tests skip.
WITHOUT_QT_ENV = "WSIVIEWER_TEST_WITHOUT_QT"
#: The modules of the GUI extra.
QT_MODULES = ("PySide6", "shiboken6", "pyqtgraph", "superqt")

if os.environ.get(WITHOUT_QT_ENV):
    for _name in QT_MODULES:
        sys.modules[_name] = None  # type: ignore[assignment]  # import raises ImportError

import pytest  # noqa: E402

from wsiviewer.core.slides.synthetic import he_like_slide  # noqa: E402

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


__all__ = ["QT_MODULES", "REPO", "SHARED_DATA", "WITHOUT_QT_ENV", "he_like_slide"]
