"""Tissue detection: which parts of a slide hold tissue, and which grid cells to analyse.

The mask is computed on a low-resolution overview of the slide (8 µm/px by default), read
with :meth:`~wsiviewer.core.slides.base.Slide.read_l0_box`, which picks the coarsest pyramid level
that is fine enough, so a huge slide is never read at level 0.

Method, in the overview's pixels:

1. **Flat-field correction.** The glass colour is estimated locally (a wide, normalised
   Gaussian average of the pixels that look like glass) and every pixel is divided by it, so
   a tinted background, uneven illumination or tiles scanned at different brightness all
   become white glass.
2. **Artefacts out.** Near-black pixels (black pen, scanner borders) and pen ink (green,
   blue, cyan: pixels whose green channel is brighter than red, which haematoxylin and eosin
   never give, as both absorb green most) are never tissue on their own.
3. **Stain saturation, with hysteresis.** H&E tissue is coloured; glass, dust and grey debris
   are not. A *strong* threshold on the HSV saturation (Otsu, clipped to sane bounds so an
   all-glass or all-tissue slide still gets a sensible value) seeds tissue, which then grows
   over *faint* pixels that touch it: saturation above a weak threshold, or the texture of
   fat (a high local spread of saturation), in both cases only with the hue of H&E (green
   the lowest channel), which keeps grey coverslip edges, fibres and dust out.
4. **Breast fat is tissue.** Its vacuoles are as white as glass, but the thin pink membranes
   between them are faint, textured and connected; the faint criteria above find them, a
   closing bridges the membranes, and holes up to a size (vacuoles, duct and vessel lumens,
   ink enclosed by tissue) are filled.
5. **Clean-up.** Fragments below a size (dust, specks) are dropped, and a small dilation adds
   a margin so the patches at the tissue's edge are analysed too.

Sizes are in µm and converted with the slide's µm/px; a slide without one is assumed to be
scanned at :attr:`TissueSettings.assumed_mpp`.

Known limits: fat whose membranes are grey rather than pink, and tissue under black margin
ink, can be missed; coverslip edges, air bubbles and pen are (deliberately) not tissue.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from wsiviewer.core.analysis.grid import PatchGrid
from wsiviewer.core.slides import Slide
from wsiviewer.core.slides.resample import block_mean
from wsiviewer.core.units import px2_from_mm2


@dataclass(frozen=True)
class TissueSettings:
    """Parameters of :func:`detect_tissue` and :func:`tissue_cells` (part of the analysis key)."""

    #: µm per mask px when the slide's µm/px is known.
    target_mpp: float = 8.0
    #: Without a µm/px the mask is at ``target_mpp`` for ``assumed_mpp``, but at least this
    #: many px on its longest side (a small image may be a low-magnification one).
    unknown_mpp_min_dimension: int = 1024
    #: Longest side of the mask in px, whatever the resolution (bounds memory on huge slides).
    max_dimension: int = 8192
    #: µm/px assumed for level 0 when the slide has none, to size the morphology.
    assumed_mpp: float = 0.5
    #: Scale (Gaussian sigma, µm) of the local glass colour estimate.
    background_sigma_um: float = 400.0
    #: Bounds of the strong (Otsu) saturation threshold.
    strong_saturation_bounds: tuple[float, float] = (0.08, 0.2)
    #: Weak saturation threshold: faint pixels connected to tissue (fat membranes) are kept.
    weak_saturation: float = 0.03
    #: Fat is found by its texture: the local standard deviation of saturation (membranes
    #: against white vacuoles) over a Gaussian window of this sigma (µm) ...
    texture_sigma_um: float = 12.0
    #: ... above this marks fat, where the saturation is also above ``texture_floor``.
    texture_threshold: float = 0.03
    texture_floor: float = 0.02
    #: A faint px has the hue of H&E when its green is at most this (0–1) above red or blue.
    hue_tolerance: float = 0.01
    #: Pixels whose brightest channel is below this (0–1) are artefacts (black pen, borders).
    dark_value: float = 0.2
    #: Exclude pen ink (green, blue, cyan): px whose green exceeds red by this (0–1); None: off.
    pen_margin: float | None = 0.04
    #: Radius of the morphological closing, µm.
    closing_um: float = 40.0
    #: Holes up to this area (mm²) inside tissue are filled.
    max_hole_mm2: float = 0.25
    #: Fragments smaller than this area (µm²) are dropped.
    min_object_um2: float = 5_000.0
    #: Margin added around the tissue, µm.
    dilation_um: float = 12.0
    #: A grid cell is analysed when at least this fraction of it is tissue.
    min_cell_coverage: float = 0.1

    def __post_init__(self) -> None:
        low, high = self.strong_saturation_bounds
        if not 0.0 < low <= high:
            raise ValueError(f"Invalid strong_saturation_bounds {self.strong_saturation_bounds}")
        if not 0.0 < self.min_cell_coverage <= 1.0:
            raise ValueError(
                f"Invalid min_cell_coverage {self.min_cell_coverage}; expected 0 < value <= 1"
            )
        if self.target_mpp <= 0 or self.assumed_mpp <= 0:
            raise ValueError(
                f"Invalid target_mpp {self.target_mpp} or assumed_mpp {self.assumed_mpp}"
            )
        if self.unknown_mpp_min_dimension < 1 or self.max_dimension < 1:
            raise ValueError(
                f"Invalid mask dimensions {self.unknown_mpp_min_dimension}, {self.max_dimension}"
            )

    def to_dict(self) -> dict[str, object]:
        """JSON-ready settings (tuples as lists)."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }


@dataclass
class TissueMask:
    """A boolean tissue mask over the whole slide at a uniform downsample of level 0.

    Mask px ``(row, col)`` covers the level-0 box ``[col * d, row * d, d, d]`` with
    ``d = l0_downsample``; the mask may run a little past the slide's edge (no tissue there).
    """

    #: ``(H, W) bool``, True = tissue.
    mask: np.ndarray
    #: Level-0 px per mask px, in x and in y.
    l0_downsample: float

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.size == 0:
            raise ValueError(f"Tissue mask must be a non-empty 2-D array, got {self.mask.shape}")
        if not self.l0_downsample > 0:
            raise ValueError(f"Invalid l0_downsample {self.l0_downsample}; expected > 0")
        self.mask = self.mask.astype(bool, copy=False)

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the mask's px that are tissue."""
        return float(self.mask.mean())

    def cell_coverage(self, grid: PatchGrid) -> np.ndarray:
        """``(rows, cols) float32``: the fraction of each grid cell covered by tissue.

        The area fraction is exact for the mask (mask px are squares of ``l0_downsample``
        level-0 px, cut at fractional edges). A cell that runs past the slide's edge is
        measured over its part inside the slide only.
        """
        rows, cols = grid.shape
        if rows == 0 or cols == 0:
            return np.zeros(grid.shape, dtype=np.float32)
        l0_x_edges, l0_y_edges = grid.l0_cell_edges()
        height, width = self.mask.shape
        mask_x_edges = np.clip(l0_x_edges / self.l0_downsample, 0.0, float(width))
        mask_y_edges = np.clip(l0_y_edges / self.l0_downsample, 0.0, float(height))

        # Summed-area table; the integral of a piecewise-constant image is bilinear inside
        # each pixel, so interpolating the table at fractional edges is exact. Only the
        # table's rows next to the cells' y edges are made (the whole table would be 8 bytes
        # per mask px).
        index = np.minimum(np.floor(mask_y_edges).astype(np.intp), height - 1)
        frac = (mask_y_edges - index)[:, None]
        table_rows = _summed_area_rows(self.mask, np.concatenate([index, index + 1]))
        below, above = table_rows[: len(index)], table_rows[len(index) :]
        table = below + frac * (above - below)
        table = _interpolate_along(table, mask_x_edges, axis=1)
        tissue_area = np.diff(np.diff(table, axis=0), axis=1)
        cell_area = np.outer(np.diff(mask_y_edges), np.diff(mask_x_edges))
        coverage = np.divide(
            tissue_area, cell_area, out=np.zeros_like(tissue_area), where=cell_area > 0
        )
        return np.clip(coverage, 0.0, 1.0).astype(np.float32)


def _summed_area_rows(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (each in ``0..H``) of the ``(H + 1, W + 1)`` float64 summed-area table of
    ``mask``: row ``i`` holds the px of mask rows ``< i`` left of each column edge.

    Built strip by strip with a running column sum; its values are whole numbers below 2**53,
    exactly those of the whole table.
    """
    height, width = mask.shape
    wanted = np.unique(rows)
    found: dict[int, np.ndarray] = {}
    column_sums = np.zeros(width, dtype=np.float64)
    if wanted[0] == 0:
        found[0] = np.zeros(width + 1, dtype=np.float64)
    strip = max(1, 4_000_000 // max(width, 1))
    for start in range(0, height, strip):
        stop = min(start + strip, height)
        needed = wanted[(wanted > start) & (wanted <= stop)]
        if needed.size:
            partial = np.cumsum(mask[start:stop], axis=0, dtype=np.float64)
            partial += column_sums
            for row in needed:
                line = np.zeros(width + 1, dtype=np.float64)
                np.cumsum(partial[row - start - 1], out=line[1:])
                found[int(row)] = line
            column_sums = partial[-1].copy()
        else:
            column_sums += mask[start:stop].sum(axis=0, dtype=np.float64)
    return np.stack([found[int(row)] for row in rows])


def _interpolate_along(values: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` (at least 2 long on ``axis``) at ``positions``."""
    index = np.minimum(np.floor(positions).astype(np.intp), values.shape[axis] - 2)
    frac = positions - index
    shape = [1] * values.ndim
    shape[axis] = len(positions)
    frac = frac.reshape(shape)
    below = np.take(values, index, axis=axis)
    above = np.take(values, index + 1, axis=axis)
    return below + frac * (above - below)


def mask_downsample(
    slide: Slide, settings: TissueSettings, mpp: float | None = None
) -> tuple[float, float]:
    """``(l0_downsample, mask_mpp)``: the mask's level-0 px per mask px and its µm/px.

    With a known µm/px the mask is at ``settings.target_mpp`` (never finer than level 0).
    Without one it is at ``settings.target_mpp`` for ``settings.assumed_mpp``, or finer so that
    its longest side is at least ``settings.unknown_mpp_min_dimension`` px. Either way its
    longest side is at most ``settings.max_dimension`` px.
    """
    l0_mpp = mpp if mpp is not None else (slide.mpp.value if slide.mpp is not None else None)
    longest = max(slide.dimensions)
    if l0_mpp is not None:
        downsample = settings.target_mpp / l0_mpp
    else:
        downsample = min(
            settings.target_mpp / settings.assumed_mpp,
            longest / settings.unknown_mpp_min_dimension,
        )
    downsample = max(downsample, longest / settings.max_dimension, 1.0)
    return downsample, downsample * (l0_mpp if l0_mpp is not None else settings.assumed_mpp)


def read_overview(slide: Slide, l0_downsample: float) -> np.ndarray:
    """The whole slide area-averaged by ``l0_downsample`` as ``(H, W, 3) uint8``.

    The overview covers ``ceil(width / d) x ceil(height / d)`` px; the part past the slide's
    edge is white. :meth:`Slide.read_l0_box` reads a large slide in strips.
    """
    l0_width, l0_height = slide.dimensions
    out_width = max(1, math.ceil(l0_width / l0_downsample - 1e-9))
    out_height = max(1, math.ceil(l0_height / l0_downsample - 1e-9))
    return slide.read_l0_box(
        (0.0, 0.0, out_width * l0_downsample, out_height * l0_downsample),
        (out_width, out_height),
    )


def detect_tissue(
    slide: Slide, settings: TissueSettings = TissueSettings(), *, mpp: float | None = None
) -> TissueMask:
    """Detect tissue on a low-resolution overview of ``slide``.

    Parameters
    ----------
    slide
        Any slide; only a coarse pyramid level is read.
    settings
        Parameters of the method.
    mpp
        µm/px of level 0 to use instead of the slide's (e.g. the user's ``--mpp``).

    Returns
    -------
    TissueMask
        True where there is tissue; empty (all False) for a blank slide.
    """
    l0_downsample, mask_mpp = mask_downsample(slide, settings, mpp)
    overview = read_overview(slide, l0_downsample)
    return TissueMask(tissue_from_rgb(overview, mask_mpp, settings), l0_downsample)


#: Overview px looked at by :func:`no_tissue_reason` (an even subsample of them).
REASON_PIXELS = 1_000_000


def no_tissue_note(
    slide: Slide, settings: TissueSettings = TissueSettings(), *, mpp: float | None = None
) -> str:
    """Why :func:`detect_tissue` found no tissue on ``slide``: one sentence for the user.

    Reads the same overview again (only when there is no tissue, so the cost is paid once).
    """
    l0_downsample, _ = mask_downsample(slide, settings, mpp)
    return no_tissue_reason(read_overview(slide, l0_downsample), settings)


def no_tissue_reason(rgb: np.ndarray, settings: TissueSettings = TissueSettings()) -> str:
    """Why an ``(H, W, 3) uint8`` overview has no tissue: mostly near-black (a fluorescence or
    failed scan), blank glass, material without stain colour (greyscale or unstained), or
    stained areas too faint or too small. Each sentence starts "No tissue found"."""
    height, width = rgb.shape[:2]
    step = max(1, math.ceil(math.sqrt(height * width / REASON_PIXELS)))
    pixels = _unit_float(np.ascontiguousarray(rgb[::step, ::step]).reshape(-1, 3))
    dark = _channel_max(pixels) < settings.dark_value
    if dark.mean() > 0.5:
        return (
            f"No tissue found: {dark.mean():.0%} of the slide is near-black (a fluorescence "
            "or failed scan?); the model needs a brightfield H&E slide"
        )
    brightness = _brightness(pixels)
    saturation = _saturation(pixels)
    glass = float(np.percentile(brightness[~dark], 95))
    tint = float(np.median(saturation[~dark & (brightness >= glass)]))
    # Px clearly darker than the glass absorb light (tissue, dirt or pen); px more coloured
    # than it may be faint stain.
    absorbing = ~dark & (brightness < 0.85 * glass)
    coloured = ~dark & (saturation > tint + settings.weak_saturation)
    if absorbing.mean() < 0.005 and coloured.mean() < 0.005:
        return "No tissue found: the slide looks like blank glass; nothing to analyse"
    stain = float(np.median(saturation[absorbing])) if absorbing.any() else math.inf
    if stain < settings.strong_saturation_bounds[0] / 2:
        return (
            f"No tissue found: {absorbing.mean():.0%} of the slide is darker than its glass "
            f"but without stain colour (median saturation {stain:.2f}); it looks "
            "greyscale or unstained, and the model needs H&E-stained tissue in colour"
        )
    return "No tissue found: the slide's stained areas are too faint or too small to analyse"


def tissue_cells(mask: TissueMask, grid: PatchGrid, settings: TissueSettings) -> np.ndarray:
    """``(rows, cols) bool``: the grid cells to analyse (tissue coverage high enough)."""
    return mask.cell_coverage(grid) >= settings.min_cell_coverage


#: Overview px processed at a time by the per-px steps of :func:`tissue_from_rgb`: they work
#: on row strips, so no full-size float RGB image is ever made (12 bytes a px).
STRIP_PIXELS = 1_000_000


def tissue_from_rgb(rgb: np.ndarray, mpp: float, settings: TissueSettings) -> np.ndarray:
    """The tissue mask of an ``(H, W, 3) uint8`` overview at ``mpp`` µm per px.

    Memory: the per-px steps run on row strips and the neighbourhood ones on 2-D planes (the
    texture on strips with a margin), so the peak is about 13 bytes per overview px besides
    ``rgb`` itself (an 8192 x 8192 overview: under 1 GB), with exactly the result of the same
    steps on whole images.
    """
    from scipy.ndimage import gaussian_filter

    height, width = rgb.shape[:2]
    strips = _row_strips(height, width)
    dark = np.empty((height, width), dtype=bool)
    for rows in strips:
        dark[rows] = _channel_max(_unit_float(rgb[rows])) < settings.dark_value
    background = _Background.estimate(rgb, ~dark, mpp, settings)

    # Corrected px, strip by strip: artefacts (dark, pen), saturation and the H&E hue.
    artefact = dark
    saturation = np.empty((height, width), dtype=np.float32)
    stained = np.empty((height, width), dtype=bool)
    for rows in strips:
        corrected = background.correct(rgb, rows)
        if settings.pen_margin is not None:
            # Haematoxylin and eosin both absorb green more than red; inks that do not are pen.
            artefact[rows] |= corrected[..., 1] - corrected[..., 0] > settings.pen_margin
        saturation[rows] = _saturation(corrected)
        # Faint px count only with the hue of H&E (green the most absorbed channel): that
        # keeps pink fat membranes and drops grey or yellowish glass edges, dust and fibres.
        hue_limit = np.minimum(corrected[..., 0], corrected[..., 2])
        hue_limit += settings.hue_tolerance
        stained[rows] = corrected[..., 1] <= hue_limit
    del background

    # A mask finer than the target resolution (slide without µm/px) is noisier: average the
    # saturation to about the target scale.
    smoothing_px = 0.4 * settings.target_mpp / mpp
    if smoothing_px >= 0.5:
        saturation = gaussian_filter(saturation, smoothing_px, mode="nearest")
    saturation[artefact] = 0.0
    usable = np.logical_not(artefact, out=artefact)
    strong = _strong_threshold_of(saturation, usable, settings.strong_saturation_bounds)
    weak = min(settings.weak_saturation, strong)
    textured = _textured(saturation, usable, strong, mpp, settings)
    above_strong = saturation > strong
    faint = saturation > weak
    del saturation
    faint |= textured
    faint &= stained
    seeds = np.logical_and(textured, stained, out=textured)
    del stained
    seeds |= above_strong
    seeds &= usable
    grow = np.logical_or(above_strong, faint, out=above_strong)
    del faint
    grow &= usable
    tissue = _hysteresis(grow, seeds)
    del grow, seeds
    if not tissue.any():
        return tissue

    px_area_um2 = mpp * mpp
    closing_px = settings.closing_um / mpp
    if closing_px >= 1.0:
        tissue = _disk_erosion(_disk_dilation(tissue, closing_px), closing_px)
    # Pen on glass is dropped; ink or dye enclosed by tissue comes back as a filled hole.
    tissue &= usable
    tissue = _fill_holes(tissue, max_area_px=px2_from_mm2(settings.max_hole_mm2, mpp))
    tissue = _remove_small_objects(tissue, min_area_px=settings.min_object_um2 / px_area_um2)
    dilation_px = settings.dilation_um / mpp
    if dilation_px >= 0.5 and tissue.any():
        tissue = _disk_dilation(tissue, max(dilation_px, 1.0))
    return tissue


def _row_strips(height: int, width: int, multiple: int = 1) -> list[slice]:
    """Slices of rows covering ``height``, each about :data:`STRIP_PIXELS` px and (but the
    last) a multiple of ``multiple`` rows."""
    rows = max(multiple, (STRIP_PIXELS // max(width, 1)) // multiple * multiple)
    return [slice(start, min(start + rows, height)) for start in range(0, height, rows)]


def _unit_float(rgb: np.ndarray) -> np.ndarray:
    """``uint8`` px as float32 in 0–1."""
    pixels = rgb.astype(np.float32)
    pixels /= np.float32(255.0)
    return pixels


def _brightness(pixels: np.ndarray) -> np.ndarray:
    """Mean of the 3 channels of float px."""
    brightness = pixels[..., 0] + pixels[..., 1]
    brightness += pixels[..., 2]
    brightness /= np.float32(3.0)
    return brightness


@dataclass
class _Background:
    """The local glass colour of an overview (flat-field correction), estimated once and
    applied strip by strip (:meth:`correct`).

    Glass is taken to be the usable px that are bright and barely more coloured than the
    brightest quarter of the image (the glass tint). Its colour is averaged with a wide
    Gaussian normalised by the glass weight (so tissue does not darken the estimate); where
    no glass is near, the slide's median glass colour is used. With too little glass (or too
    few usable px) px are left as they are.
    """

    #: ``None``: no correction.
    coarse: np.ndarray | None
    factor: int
    shape: tuple[int, int]
    #: Below a sigma of one px, glass px keep their own colour, others the median's.
    glass: np.ndarray | None = None
    global_colour: np.ndarray | None = None

    @classmethod
    def estimate(
        cls, rgb: np.ndarray, usable: np.ndarray, mpp: float, settings: TissueSettings
    ) -> _Background:
        from scipy.ndimage import gaussian_filter

        height, width = rgb.shape[:2]
        shape = (height, width)
        none = cls(None, 1, shape)
        if usable.sum() < 16:
            return none
        strips = _row_strips(height, width)
        # The brightest px are glass on any slide that is not wall-to-wall tissue: their
        # saturation is the glass tint, which a tinted scan raises for all glass alike.
        usable_brightness = np.concatenate(
            [_brightness(_unit_float(rgb[rows]))[usable[rows]] for rows in strips]
        )
        quarter = np.percentile(usable_brightness, 75, overwrite_input=True)
        del usable_brightness
        tint_values = []
        for rows in strips:
            pixels = _unit_float(rgb[rows])
            bright = usable[rows] & (_brightness(pixels) >= quarter)
            tint_values.append(_saturation(pixels)[bright])
        tint = float(np.median(np.concatenate(tint_values), overwrite_input=True))
        del tint_values
        glass = np.empty(shape, dtype=bool)
        for rows in strips:
            glass[rows] = usable[rows] & (
                _saturation(_unit_float(rgb[rows])) < tint + settings.weak_saturation
            )
        if glass.sum() < 16:
            return none
        # Grey debris and fibres are not glass; vignetting may darken glass a little.
        glass_brightness = np.concatenate(
            [_brightness(_unit_float(rgb[rows]))[glass[rows]] for rows in strips]
        )
        median_glass = np.percentile(glass_brightness, 50, overwrite_input=True)
        del glass_brightness
        for rows in strips:
            glass[rows] &= _brightness(_unit_float(rgb[rows])) >= median_glass - 0.25
        # Channel by channel, on contiguous copies: medians run along memory.
        global_colour = np.array(
            [
                np.median(
                    _unit_float(np.ascontiguousarray(rgb[..., c])[glass]), overwrite_input=True
                )
                for c in range(3)
            ]
        )
        sigma = settings.background_sigma_um / mpp
        if sigma < 1.0:
            return cls(None, 1, shape, glass, global_colour)
        # The glass colour varies slowly: blur a block-averaged copy, upsample it per strip.
        factor = max(1, int(sigma / 4))
        prior = np.float32(1e-3)
        # Three glass-weighted colour planes and the weight, block-averaged strip by strip.
        coarse_sums: list[list[np.ndarray]] = [[] for _ in range(4)]
        for rows in _row_strips(height, width, multiple=factor):
            weight = glass[rows].astype(np.float32)
            pixels = _unit_float(rgb[rows])
            for channel in range(3):
                coarse_sums[channel].append(
                    block_mean(pixels[..., channel] * weight, factor, edge="replicate")
                )
            coarse_sums[3].append(block_mean(weight, factor, edge="replicate"))
        coarse = [np.concatenate(parts) for parts in coarse_sums]
        coarse_weight = gaussian_filter(coarse[3], sigma / factor, mode="nearest")
        coarse_colour = np.stack(
            [
                (gaussian_filter(plane, sigma / factor, mode="nearest") + prior * colour)
                / (coarse_weight + prior)
                for plane, colour in zip(coarse[:3], global_colour, strict=True)
            ],
            axis=2,
        )
        return cls(coarse_colour, factor, shape)

    def correct(self, rgb: np.ndarray, rows: slice) -> np.ndarray:
        """The corrected float px of ``rgb[rows]`` (divided by the glass colour, clipped)."""
        pixels = _unit_float(rgb[rows])
        if self.coarse is None and self.glass is None:
            return pixels
        if self.coarse is None:
            assert self.glass is not None
            assert self.global_colour is not None
            background = np.where(self.glass[rows][..., None], pixels, self.global_colour)
        else:
            background = _upsample_rows(self.coarse, self.factor, self.shape, rows)
        background = np.clip(background, 0.5, 1.0, out=background)
        corrected = np.divide(pixels, background, out=background)
        return np.clip(corrected, 0.0, 1.0, out=corrected)


def _textured(
    saturation: np.ndarray,
    usable: np.ndarray,
    strong: float,
    mpp: float,
    settings: TissueSettings,
) -> np.ndarray:
    """``(H, W) bool``: fat found by its texture, a high local spread of the saturation over
    faint usable px (:func:`_local_std`), where the saturation is also above the floor.

    Computed on row strips with a margin as wide as the Gaussian's reach, so each strip's
    values are exactly the whole image's.
    """
    sigma = max(settings.texture_sigma_um / mpp, 0.5)
    margin = int(_GAUSSIAN_TRUNCATE * sigma + 0.5) + 1
    height, width = saturation.shape
    textured = np.empty((height, width), dtype=bool)
    for rows in _row_strips(height, width):
        top, bottom = max(0, rows.start - margin), min(height, rows.stop + margin)
        values = saturation[top:bottom]
        texture = _local_std(values, usable[top:bottom] & (values < strong), sigma)
        inside = slice(rows.start - top, rows.stop - top)
        textured[rows] = (texture[inside] > settings.texture_threshold) & (
            saturation[rows] > settings.texture_floor
        )
    return textured


#: scipy's Gaussian filters reach ``int(truncate * sigma + 0.5)`` px, truncate 4 by default.
_GAUSSIAN_TRUNCATE = 4.0


def _strong_threshold_of(
    values: np.ndarray, usable: np.ndarray, bounds: tuple[float, float]
) -> float:
    """Otsu's threshold of ``values[usable]`` clipped to ``bounds``; the upper bound if
    degenerate.

    Without copying the values: the histogram Otsu's method works on is counted strip by
    strip, over the same 256 bins between the same extremes as scikit-image's
    ``threshold_otsu(values[usable])``, so the threshold is the same."""
    from skimage.filters import threshold_otsu

    low, high = bounds
    strips = _row_strips(*values.shape)
    lowest = highest = None
    count = 0
    for rows in strips:
        strip = values[rows][usable[rows]]
        if strip.size:
            count += strip.size
            lowest = strip.min() if lowest is None else min(lowest, strip.min())
            highest = strip.max() if highest is None else max(highest, strip.max())
    if count < 2 or lowest is None or highest is None or float(highest - lowest) < 1e-6:
        return high
    counts = np.zeros(256, dtype=np.int64)
    edges = None
    for rows in strips:
        strip_counts, edges = np.histogram(
            values[rows][usable[rows]], bins=256, range=(lowest, highest)
        )
        counts += strip_counts
    assert edges is not None
    centres = (edges[:-1] + edges[1:]) / 2.0
    return float(np.clip(threshold_otsu(hist=(counts, centres)), low, high))


def _saturation(pixels: np.ndarray) -> np.ndarray:
    """HSV saturation of ``(H, W, 3)`` float pixels in 0–1."""
    brightest = _channel_max(pixels)
    chroma = np.minimum(pixels[..., 0], pixels[..., 1])
    np.minimum(chroma, pixels[..., 2], out=chroma)
    np.subtract(brightest, chroma, out=chroma)
    return np.divide(chroma, brightest, out=np.zeros_like(chroma), where=brightest > 1e-3)


def _channel_max(pixels: np.ndarray) -> np.ndarray:
    """Per-pixel maximum over the 3 channels (much faster than ``max(axis=2)``)."""
    brightest = np.maximum(pixels[..., 0], pixels[..., 1])
    return np.maximum(brightest, pixels[..., 2], out=brightest)


def _upsample_rows(
    values: np.ndarray, factor: int, shape: tuple[int, int], rows: slice
) -> np.ndarray:
    """Rows ``rows`` of the bilinear upsampling of block means back to ``shape`` (the inverse
    of a block mean): each row is computed exactly as for the whole image."""
    if factor == 1:
        return values[rows, : shape[1]].copy()
    for axis in (0, 1):
        n_coarse = values.shape[axis]
        # Centre of fine px i in coarse px units; block centres sit at integer coordinates.
        position = np.clip((np.arange(shape[axis]) + 0.5) / factor - 0.5, 0.0, n_coarse - 1.0)
        if axis == 0:
            position = position[rows]
        below = np.minimum(np.floor(position).astype(np.intp), max(n_coarse - 2, 0))
        above = np.minimum(below + 1, n_coarse - 1)
        frac = (position - below).astype(np.float32)
        frac = frac.reshape((-1, 1, 1) if axis == 0 else (1, -1, 1))
        low = np.take(values, below, axis=axis)
        step = np.take(values, above, axis=axis)
        step -= low
        step *= frac
        low += step
        values = low
    return values


def _local_std(values: np.ndarray, usable: np.ndarray, sigma: float) -> np.ndarray:
    """Local standard deviation of the ``usable`` px of ``values`` over a Gaussian window.

    Px outside ``usable`` do not count (normalised convolution), so glass next to strongly
    stained tissue does not inherit the tissue's edge as texture.
    """
    from scipy.ndimage import gaussian_filter

    weight = usable.astype(np.float32)
    weighted = values * weight
    # SciPy filters without the GIL: the three planes are blurred side by side.
    with ThreadPoolExecutor(max_workers=3) as pool:
        total, mean, square = pool.map(
            lambda plane: gaussian_filter(plane, sigma, mode="nearest"),
            (weight, weighted, values * weighted),
        )
    np.maximum(total, 1e-6, out=total)
    mean /= total
    mean *= mean
    variance = np.divide(square, total, out=square)
    variance -= mean
    std = np.sqrt(np.maximum(variance, 0.0, out=variance), out=variance)
    std[~usable] = 0.0
    return std


def _disk_dilation(mask: np.ndarray, radius: float) -> np.ndarray:
    """Every px within ``radius`` px (Euclidean) of a True px of ``mask``.

    At each row offset the disk is a run of px: one running maximum along the rows per
    distinct run width (O(1) per px), then the maximum of those rows shifted by each
    offset. Exact, and several times faster than thresholding a distance transform.
    """
    from scipy.ndimage import maximum_filter1d

    half_widths = _disk_half_widths(radius)
    pixels = mask.view(np.uint8)
    widened = {
        width: maximum_filter1d(pixels, 2 * width + 1, axis=1, mode="constant") if width else pixels
        for width in set(half_widths)
    }
    out = widened[half_widths[0]].copy()
    height = out.shape[0]
    for offset in range(1, min(len(half_widths), height)):
        rows = widened[half_widths[offset]]
        np.maximum(out[offset:], rows[: height - offset], out=out[offset:])
        np.maximum(out[: height - offset], rows[offset:], out=out[: height - offset])
    return out.view(bool)


def _disk_erosion(mask: np.ndarray, radius: float) -> np.ndarray:
    """The px of ``mask`` farther than ``radius`` px from any False px (none lie outside it)."""
    return ~_disk_dilation(~mask, radius)


def _disk_half_widths(radius: float) -> list[int]:
    """Half-width of the disk's run of px at row offsets 0, 1, ..., ``floor(radius)``.

    An offset (dx, dy) is in the disk when ``sqrt(dx² + dy²) <= radius``, as a Euclidean
    distance transform compares it.
    """
    offsets = np.arange(math.floor(radius) + 1)
    inside = np.sqrt(offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius
    return [int(count) - 1 for count in inside.sum(axis=1)]


#: 8-connected neighbours (4-connected is scipy's default structure).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _label(mask: np.ndarray, eight: bool) -> tuple[np.ndarray, int]:
    """Connected components of ``mask`` as int32 labels (half the memory of int64)."""
    from scipy.ndimage import label

    labels, count = label(mask, structure=_EIGHT_CONNECTED if eight else None, output=np.int32)
    return labels, int(count)


def _hysteresis(grow: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``grow`` that contain a ``seeds`` px."""
    components, count = _label(grow | seeds, eight=True)
    if count == 0:
        return np.zeros_like(grow)
    keep = np.zeros(count + 1, dtype=bool)
    keep[components[seeds]] = True
    keep[0] = False
    return _lookup(keep, components)


def _fill_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """Fill background components not touching the border of at most ``max_area_px`` px."""
    holes, count = _label(~mask, eight=False)
    if count == 0:
        return mask
    sizes = _label_sizes(holes, count)
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    fill = sizes <= max_area_px
    fill[0] = False
    fill[border] = False
    filled = _lookup(fill, holes)
    filled |= mask
    return filled


def _remove_small_objects(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    """Drop 8-connected tissue components smaller than ``min_area_px`` px."""
    objects, count = _label(mask, eight=True)
    if count == 0:
        return mask
    keep = _label_sizes(objects, count) >= min_area_px
    keep[0] = False
    return _lookup(keep, objects)


def _label_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Px per label (``np.bincount``), strip by strip: bincount casts its input to int64."""
    sizes = np.zeros(count + 1, dtype=np.int64)
    for rows in _row_strips(*labels.shape):
        sizes += np.bincount(labels[rows].ravel(), minlength=count + 1)
    return sizes


def _lookup(table: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``table[labels]``, strip by strip (indexing casts the labels to int64)."""
    out = np.empty(labels.shape, dtype=table.dtype)
    for rows in _row_strips(*labels.shape):
        out[rows] = table[labels[rows]]
    return out
