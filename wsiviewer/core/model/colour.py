"""Per-slide colour standardisation: a slide's tissue colours mapped onto a reference.

H&E colour differs from lab to lab, stain batch to stain batch and scanner to scanner, and a
patch classifier trained on some slides shifts its probabilities as a whole on a slide stained
differently. Standardising every slide to one reference, the same way in training and in
analysis, removes most of that shift (measured on patient-level cross-validation: see the
model's report).

The method is per-channel quantile matching (histogram matching, as
``skimage.exposure.match_histograms`` does for whole images) of the slide's *tissue* px: the
0th, 1st, ..., 100th percentile of each RGB channel over a sample of the slide's tissue cells
are mapped onto the reference's, linearly between them. The mapping is a monotone lookup table
per channel, applied to every px of every patch (a table lookup: a few ms per thousand
patches). The reference is the mean of the training patients' quantiles; the model card carries
it (``colour``), so training and analysis can never disagree.

A patient of the IDC dataset and a slide under analysis are treated alike: their statistics
come from up to :data:`SAMPLE_CELLS` model patches drawn at random from their tissue.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The method name on the card.
METHOD = "channel-quantiles"
#: Percentiles matched: 0, 1, ..., 100.
QUANTILES = np.linspace(0.0, 1.0, 101)
#: Most model patches a slide's statistics are drawn from.
SAMPLE_CELLS = 256
#: Fewest tissue px that make statistics; fewer and the patches' own px are used as they are.
MIN_TISSUE_PX = 100
#: A px is glass (not tissue) when its darkest channel is at least this bright and its
#: channels are within :data:`GLASS_SPREAD` of each other.
GLASS_MIN = 200
GLASS_SPREAD = 30


@dataclass(frozen=True)
class ColourReference:
    """The reference colours: ``(3, 101)`` percentiles of R, G and B of tissue px."""

    quantiles: np.ndarray

    def __post_init__(self) -> None:
        quantiles = np.asarray(self.quantiles, dtype=np.float64)
        if quantiles.shape != (3, len(QUANTILES)) or not np.isfinite(quantiles).all():
            raise ValueError(
                f"Colour reference must be 3 x {len(QUANTILES)} finite percentiles, "
                f"got {quantiles.shape}"
            )
        if (np.diff(quantiles, axis=1) < 0).any() or quantiles.min() < 0 or quantiles.max() > 255:
            raise ValueError("Colour reference percentiles must increase within 0-255")
        object.__setattr__(self, "quantiles", quantiles)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": METHOD,
            "sample_cells": SAMPLE_CELLS,
            "quantiles": np.round(self.quantiles, 3).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColourReference:
        if data.get("method") != METHOD:
            raise ValueError(f"Unknown colour standardisation {data.get('method')!r}")
        return cls(np.asarray(data["quantiles"], dtype=np.float64))

    @classmethod
    def mean_of(cls, quantiles: list[np.ndarray]) -> ColourReference:
        """The reference of several slides (patients): the mean of their percentiles."""
        if not quantiles:
            raise ValueError("A colour reference needs at least one slide")
        return cls(np.mean(np.stack(quantiles), axis=0))


def tissue_pixels(patches: np.ndarray) -> np.ndarray:
    """``(N, 3) uint8``: the px of ``(..., 3)`` patches that are not glass."""
    flat = patches.reshape(-1, 3)
    darkest = flat.min(axis=1)
    spread = flat.max(axis=1).astype(np.int16) - darkest
    return flat[(darkest < GLASS_MIN) | (spread > GLASS_SPREAD)]


def slide_quantiles(patches: np.ndarray) -> np.ndarray:
    """``(3, 101)`` percentiles of each channel over the tissue px of ``patches`` (all px
    when fewer than :data:`MIN_TISSUE_PX` are tissue)."""
    pixels = tissue_pixels(patches)
    if len(pixels) < MIN_TISSUE_PX:
        pixels = patches.reshape(-1, 3)
    return np.quantile(pixels, QUANTILES, axis=0).T


def lookup_table(quantiles: np.ndarray, reference: ColourReference) -> np.ndarray:
    """``(3, 256) uint8``: each channel's value mapped from the slide's percentiles onto the
    reference's (linear between percentiles, flat beyond the extremes)."""
    values = np.arange(256, dtype=np.float64)
    table = np.empty((3, 256), dtype=np.uint8)
    for channel in range(3):
        # Repeated percentiles (a channel with few distinct values) map to their first
        # reference value: np.interp needs increasing x.
        xs, first = np.unique(quantiles[channel], return_index=True)
        ys = reference.quantiles[channel][first]
        mapped = np.interp(values, xs, ys) if len(xs) > 1 else np.full(256, ys[0])
        table[channel] = np.clip(np.rint(mapped), 0, 255).astype(np.uint8)
    return table


def apply_table(patches: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``patches`` (``(..., 3) uint8``) with each channel passed through its lookup table."""
    out = np.empty_like(patches)
    for channel in range(3):
        np.take(table[channel], patches[..., channel], out=out[..., channel])
    return out


def sample_cells(count: int, seed: int = 0) -> np.ndarray:
    """Indices of up to :data:`SAMPLE_CELLS` of ``count`` cells, at random but reproducibly
    (a training patient's patches)."""
    if count <= SAMPLE_CELLS:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, SAMPLE_CELLS, replace=False))


def sample_positions(cells: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of up to :data:`SAMPLE_CELLS` of the ``(N, 2)`` grid cells ``(row, col)``, at
    random by position: each cell's key is a hash of its row and column, and the cells with
    the smallest keys are taken (a slide's tissue cells).

    A uniform random draw, as :func:`sample_cells`'s, but stable: a tissue mask a few cells
    different (the same slide read from another pyramid level) changes the sample by those
    cells only, where a fresh draw would change it all. On real patients a fresh draw of 256
    moved up to 5 % of the cells' scores by more than 0.05.
    """
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    if len(cells) <= SAMPLE_CELLS:
        return np.arange(len(cells))
    # splitmix64's finaliser on (row, col) mixed with the seed; uint64 arithmetic wraps.
    key = (cells[:, 0].astype(np.uint64) << np.uint64(32)) | cells[:, 1].astype(np.uint64)
    key ^= np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    key ^= key >> np.uint64(30)
    key *= np.uint64(0xBF58476D1CE4E5B9)
    key ^= key >> np.uint64(27)
    key *= np.uint64(0x94D049BB133111EB)
    key ^= key >> np.uint64(31)
    return np.sort(np.argsort(key, kind="stable")[:SAMPLE_CELLS])
