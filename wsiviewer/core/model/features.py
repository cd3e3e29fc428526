"""What the network sees in a patch: the input of its last linear layer (the feature vector
the out-of-distribution score is measured on, in training and in analysis alike)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def last_linear(model: nn.Module) -> nn.Linear:
    """The network's last linear layer: its input is the feature vector of a patch."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear layer")
    return linears[-1]


@torch.inference_mode()
def penultimate_features(
    model: nn.Module,
    pixels: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    batch_size: int = 512,
) -> np.ndarray:
    """``(N, F)`` features (the last linear layer's input) of ``(N, H, W, 3) uint8`` patches,
    normalised by the card's ``mean`` and ``std`` (of values in 0-1)."""
    model.eval()
    captured: list[np.ndarray] = []
    hook = last_linear(model).register_forward_hook(
        lambda _module, inputs, _output: captured.append(inputs[0].float().cpu().numpy())
    )
    m = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, 3, 1, 1)
    try:
        for start in range(0, len(pixels), batch_size):
            batch = np.ascontiguousarray(pixels[start : start + batch_size])
            x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float() / 255.0
            model((x - m) / s)
    finally:
        hook.remove()
    return np.concatenate(captured) if captured else np.zeros((0, 1), np.float32)
