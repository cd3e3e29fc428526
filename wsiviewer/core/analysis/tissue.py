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
        # each pixel, so interpolating the table at fractional edges is exact.
        table = np.zeros((height + 1, width + 1), dtype=np.float64)
        np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.float64), axis=1, out=table[1:, 1:])
        table = _interpolate_along(table, mask_y_edges, axis=0)
        table = _interpolate_along(table, mask_x_edges, axis=1)
        tissue_area = np.diff(np.diff(table, axis=0), axis=1)
        cell_area = np.outer(np.diff(mask_y_edges), np.diff(mask_x_edges))
        coverage = np.divide(
            tissue_area, cell_area, out=np.zeros_like(tissue_area), where=cell_area > 0
        )
        return np.clip(coverage, 0.0, 1.0).astype(np.float32)


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


def tissue_cells(mask: TissueMask, grid: PatchGrid, settings: TissueSettings) -> np.ndarray:
    """``(rows, cols) bool``: the grid cells to analyse (tissue coverage high enough)."""
    return mask.cell_coverage(grid) >= settings.min_cell_coverage


def tissue_from_rgb(rgb: np.ndarray, mpp: float, settings: TissueSettings) -> np.ndarray:
    """The tissue mask of an ``(H, W, 3) uint8`` overview at ``mpp`` µm per px."""
    from scipy.ndimage import gaussian_filter

    # In-place arithmetic throughout: every full-size temporary saved is memory the kernel
    # need not fault in (a fresh process pays for each first touch).
    pixels = rgb.astype(np.float32)
    pixels /= np.float32(255.0)
    dark = _channel_max(pixels) < settings.dark_value
    corrected = _flat_field(pixels, ~dark, mpp, settings)
    artefact = dark
    if settings.pen_margin is not None:
        # Haematoxylin and eosin both absorb green more than red; inks that do not are pen.
        artefact = dark | (corrected[..., 1] - corrected[..., 0] > settings.pen_margin)

    saturation = _saturation(corrected)
    # A mask finer than the target resolution (slide without µm/px) is noisier: average the
    # saturation to about the target scale.
    smoothing_px = 0.4 * settings.target_mpp / mpp
    if smoothing_px >= 0.5:
        saturation = gaussian_filter(saturation, smoothing_px, mode="nearest")
    saturation[artefact] = 0.0
    usable = ~artefact
    strong = _strong_threshold(saturation[usable], settings.strong_saturation_bounds)
    weak = min(settings.weak_saturation, strong)
    texture = _local_std(
        saturation, usable & (saturation < strong), max(settings.texture_sigma_um / mpp, 0.5)
    )
    textured = (texture > settings.texture_threshold) & (saturation > settings.texture_floor)
    # Faint px count only with the hue of H&E (green the most absorbed channel): that keeps
    # pink fat membranes and drops grey or yellowish glass edges, dust and fibres.
    hue_limit = np.minimum(corrected[..., 0], corrected[..., 2])
    hue_limit += settings.hue_tolerance
    stained = corrected[..., 1] <= hue_limit
    faint = stained & ((saturation > weak) | textured)
    seeds = usable & ((saturation > strong) | (textured & stained))
    grow = usable & ((saturation > strong) | faint)
    tissue = _hysteresis(grow, seeds)
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


def _strong_threshold(values: np.ndarray, bounds: tuple[float, float]) -> float:
    """Otsu's threshold of ``values`` clipped to ``bounds``; the upper bound if degenerate."""
    from skimage.filters import threshold_otsu

    low, high = bounds
    if values.size < 2 or float(np.ptp(values)) < 1e-6:
        return high
    return float(np.clip(threshold_otsu(values), low, high))


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


def _flat_field(
    pixels: np.ndarray, usable: np.ndarray, mpp: float, settings: TissueSettings
) -> np.ndarray:
    """``pixels`` divided by a local estimate of the glass colour (white glass stays white).

    Glass is taken to be the usable px that are bright and barely more coloured than the
    brightest quarter of the image (the glass tint). Its colour is averaged with a wide
    Gaussian normalised by the glass weight (so tissue does not darken the estimate); where
    no glass is near, the slide's median glass colour is used.
    """
    from scipy.ndimage import gaussian_filter

    saturation = _saturation(pixels)
    brightness = pixels[..., 0] + pixels[..., 1]
    brightness += pixels[..., 2]
    brightness /= np.float32(3.0)
    if usable.sum() < 16:
        return pixels
    # The brightest px are glass on any slide that is not wall-to-wall tissue: their
    # saturation is the glass tint, which a tinted scan raises for all glass alike.
    brightest_quarter = usable & (brightness >= np.percentile(brightness[usable], 75))
    tint = float(np.median(saturation[brightest_quarter]))
    glass = usable & (saturation < tint + settings.weak_saturation)
    if glass.sum() < 16:
        return pixels
    # Grey debris and fibres are not glass; vignetting may darken glass a little.
    glass &= brightness >= np.percentile(brightness[glass], 50) - 0.25
    # Channel by channel: 2-D products whose block sums and medians run along memory,
    # several times faster than reducing interleaved channels.
    planes = [pixels[..., channel] for channel in range(3)]
    global_colour = np.array([np.median(plane[glass]) for plane in planes])
    sigma = settings.background_sigma_um / mpp
    prior = np.float32(1e-3)
    if sigma < 1.0:
        background = np.where(glass[..., None], pixels, global_colour)
    else:
        # The glass colour varies slowly: blur a block-averaged copy, then upsample.
        factor = max(1, int(sigma / 4))
        weight = glass.astype(np.float32)
        coarse = [block_mean(plane * weight, factor, edge="replicate") for plane in planes]
        coarse_weight = gaussian_filter(
            block_mean(weight, factor, edge="replicate"), sigma / factor, mode="nearest"
        )
        coarse_colour = np.stack(
            [
                (gaussian_filter(plane, sigma / factor, mode="nearest") + prior * colour)
                / (coarse_weight + prior)
                for plane, colour in zip(coarse, global_colour, strict=True)
            ],
            axis=2,
        )
        background = _upsample(coarse_colour, factor, pixels.shape[:2])
    background = np.clip(background, 0.5, 1.0, out=background)
    corrected = np.divide(pixels, background, out=background)
    return np.clip(corrected, 0.0, 1.0, out=corrected)


def _upsample(values: np.ndarray, factor: int, shape: tuple[int, ...]) -> np.ndarray:
    """Bilinear upsampling of block means back to ``shape`` (the inverse of a block mean)."""
    if factor == 1:
        return values[: shape[0], : shape[1]]
    for axis in (0, 1):
        n_coarse = values.shape[axis]
        # Centre of fine px i in coarse px units; block centres sit at integer coordinates.
        position = np.clip((np.arange(shape[axis]) + 0.5) / factor - 0.5, 0.0, n_coarse - 1.0)
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


def _hysteresis(grow: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``grow`` that contain a ``seeds`` px."""
    from skimage.measure import label

    components, count = label(grow | seeds, connectivity=2, return_num=True)
    if count == 0:
        return np.zeros_like(grow)
    keep = np.zeros(count + 1, dtype=bool)
    keep[np.unique(components[seeds])] = True
    keep[0] = False
    return keep[components]


def _fill_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """Fill background components not touching the border of at most ``max_area_px`` px."""
    from skimage.measure import label

    holes, count = label(~mask, connectivity=1, return_num=True)
    if count == 0:
        return mask
    sizes = np.bincount(holes.ravel())
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    fill = sizes <= max_area_px
    fill[0] = False
    fill[border] = False
    return mask | fill[holes]


def _remove_small_objects(mask: np.ndarray, min_area_px: float) -> np.ndarray:
    """Drop 8-connected tissue components smaller than ``min_area_px`` px."""
    from skimage.measure import label

    objects, count = label(mask, connectivity=2, return_num=True)
    if count == 0:
        return mask
    sizes = np.bincount(objects.ravel())
    keep = sizes >= min_area_px
    keep[0] = False
    return keep[objects]
