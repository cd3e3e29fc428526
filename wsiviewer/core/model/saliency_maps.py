"""Saliency maps as numbers: what :mod:`.saliency` computes, without torch (the viewer and
the pictures import this; the network is loaded only when a map is computed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The two methods, in the order they are shown.
METHODS = ("gradcam", "integrated_gradients")

METHOD_NAMES = {"gradcam": "Grad-CAM", "integrated_gradients": "Integrated gradients"}


@dataclass(frozen=True)
class SaliencyMaps:
    """Saliency of ``N`` patches, each map ``(N, H, W) float32`` at the model's input px."""

    #: Grad-CAM, ≥ 0, in log-odds units per cell of the last convolutional block.
    gradcam: np.ndarray
    #: Integrated gradients summed over colour channels, signed, in log-odds per pixel.
    integrated_gradients: np.ndarray
    #: The calibrated IDC log-odds of each patch that both maps explain, ``(N,)``.
    log_odds: np.ndarray
    #: Integrated gradients' completeness gap: sum of attributions minus the log-odds
    #: difference from the baseline, ``(N,)``.
    convergence_delta: np.ndarray

    def method(self, name: str) -> np.ndarray:
        """The maps of one of :data:`METHODS`."""
        if name not in METHODS:
            raise ValueError(f"Unknown saliency method {name!r}; known: {', '.join(METHODS)}")
        return self.gradcam if name == "gradcam" else self.integrated_gradients

    @staticmethod
    def concatenate(parts: Sequence[SaliencyMaps]) -> SaliencyMaps:
        return SaliencyMaps(
            np.concatenate([part.gradcam for part in parts]),
            np.concatenate([part.integrated_gradients for part in parts]),
            np.concatenate([part.log_odds for part in parts]),
            np.concatenate([part.convergence_delta for part in parts]),
        )
