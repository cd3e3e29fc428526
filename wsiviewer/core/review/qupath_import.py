"""Reading QuPath GeoJSON annotations, and adding them to a review as manual regions.

QuPath (≥ 0.2) exports objects as GeoJSON in level-0 px (origin top-left, x right, y down),
our frame too. :func:`read_qupath_geojson` accepts what QuPath writes: a FeatureCollection
("Export objects as GeoJSON" with the collection option), a bare list of Features (its
default), a single Feature, or a bare Polygon / MultiPolygon geometry. Polygons are kept and
MultiPolygons split into their parts; points and lines have no area and are skipped and
counted, as are detections and cells (only annotations, or objects of no stated type, are
regions). Classification colours may be QuPath ≥ 0.4's ``color: [r, g, b]`` or older
versions' packed ``colorRGB`` integer; measurements may be a map (≥ 0.4) or a list of
``{"name", "value"}`` (older).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.validation import explain_validity

from wsiviewer.errors import QuPathImportError

if TYPE_CHECKING:
    from wsiviewer.core.review.log import RegionRef
    from wsiviewer.core.review.session import ReviewSession

#: QuPath object types imported as regions (a feature with no objectType counts as one).
_AREA_OBJECT_TYPES = {"annotation", "rootobject"}
_AREA_GEOMETRIES = {"Polygon", "MultiPolygon"}


@dataclass(frozen=True)
class ImportedAnnotation:
    """One area annotation read from QuPath GeoJSON (a MultiPolygon gives one per part)."""

    #: Outline in level-0 px.
    polygon: Polygon = field(compare=False)
    name: str | None
    #: The classification's name (e.g. ``"Tumor"``), ``None`` if unclassified.
    classification: str | None
    #: ``(r, g, b)`` of the classification (else the object's colour), if any.
    color: tuple[int, int, int] | None
    #: Numeric measurements by name.
    measurements: dict[str, float] = field(default_factory=dict, compare=False)
    #: Index of the feature in the file, and of the part within a MultiPolygon (from 1; 0 for
    #: a Polygon).
    feature_index: int = 0
    part: int = 0


class ImportedAnnotations(list[ImportedAnnotation]):
    """The annotations of a file, with what was skipped: ``skipped`` counts by reason
    (``"Point"``, ``"LineString"``, ``"detection"``, ``"no geometry"``...)."""

    def __init__(
        self, items: Iterable[ImportedAnnotation] = (), skipped: Counter[str] | None = None
    ):
        super().__init__(items)
        self.skipped: Counter[str] = skipped if skipped is not None else Counter()

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())


def read_qupath_geojson(path: str | os.PathLike[str]) -> ImportedAnnotations:
    """The area annotations of a QuPath GeoJSON file (see the module docstring).

    Returns
    -------
    ImportedAnnotations
        A list of :class:`ImportedAnnotation`, in file order, with ``skipped`` counts.

    Raises
    ------
    QuPathImportError
        If the file is missing or unreadable, is not JSON, is not GeoJSON features, or a
        feature's geometry is malformed or an invalid polygon (self-intersecting...).
    """
    path = Path(path)
    if not path.is_file():
        raise QuPathImportError(f"GeoJSON file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise QuPathImportError(f"Cannot read GeoJSON file {path}: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QuPathImportError(
            f"{path.name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    result = ImportedAnnotations()
    for index, feature in enumerate(_features(data, path.name)):
        result.extend(_annotations(feature, index, path.name, result.skipped))
    return result


@dataclass(frozen=True)
class ImportResult:
    """What an import did: regions added, features already in the review, features skipped
    (no area, detections...) by reason."""

    added: int
    already_present: int
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def text(self) -> str:
        """E.g. ``"2 annotations imported; 1 already in the review"``."""
        parts = [f"{self.added} annotation{'' if self.added == 1 else 's'} imported"]
        if self.already_present:
            parts.append(f"{self.already_present} already in the review")
        skipped = sum(self.skipped.values())
        if skipped:
            parts.append(
                f"{skipped} skipped ("
                + ", ".join(f"{count} {reason}" for reason, count in self.skipped.items())
                + ")"
            )
        return "; ".join(parts)


def import_annotations(session: ReviewSession, path: str | os.PathLike[str]) -> ImportResult:
    """Add the area annotations of a QuPath GeoJSON file to a review as manual regions.

    Each keeps its QuPath name, classification and colour (exports write them back as they
    came), starts ``pending``, and notes ``"imported from QuPath: <name>/<class>"``. A
    feature already in the review (the same outline, name and class imported before, or the
    outline of a region the review shows) is not added again, so importing a file twice, or
    a file exported from this review, adds nothing the second time.

    Every polygon is checked before the first is added, so a bad file adds nothing. Each
    region is then its own committed action (undo removes the last one added).

    Raises
    ------
    QuPathImportError
        If the file cannot be read (see :func:`read_qupath_geojson`).
    ReviewError
        If a polygon cannot be a region of this review (e.g. it lies outside the slide).
    """
    from wsiviewer.core.review.session import import_key

    annotations = read_qupath_geojson(path)
    for annotation in annotations:
        session.check_polygon(annotation.polygon)
    state = session.state()
    present_keys = {
        stored.import_key
        for stored in session.store.manual_regions(session.region_set_id)
        if stored.import_key is not None
        and any(item.ref.kind == "manual" and item.ref.id == stored.id for item in state.items)
    }
    present_outlines = [item.polygon for item in state.items]
    added: list[RegionRef] = []
    already = 0
    for annotation in annotations:
        key = import_key(annotation.polygon, annotation.name, annotation.classification)
        if key in present_keys or any(
            _same_outline(annotation.polygon, outline) for outline in present_outlines
        ):
            already += 1
            continue
        note = (
            f"imported from QuPath: {annotation.name or '(unnamed)'}/"
            f"{annotation.classification or '(unclassified)'}"
        )
        added.append(
            session.add_manual_region(
                annotation.polygon,
                note=note,
                status="pending",
                origin="imported",
                name=annotation.name,
                classification=annotation.classification,
                color=annotation.color,
                import_key=key,
            )
        )
        present_keys.add(key)
        present_outlines.append(annotation.polygon)
    return ImportResult(len(added), already, Counter(annotations.skipped))


#: Outlines whose symmetric difference is at most this many px² per px of outline are the
#: same region: exports round coordinates to 1/1000 px.
_SAME_OUTLINE_PX = 0.002


def _same_outline(a: Polygon, b: Polygon) -> bool:
    if not a.envelope.intersects(b.envelope):
        return False
    tolerance = _SAME_OUTLINE_PX * max(a.length, b.length)
    return bool(a.symmetric_difference(b).area <= tolerance)


# --------------------------------------------------------------------------- parsing


def _features(data: Any, file_name: str) -> Iterator[dict[str, Any]]:
    """The features of a FeatureCollection, a list of Features, a Feature or a geometry."""
    if isinstance(data, list):
        items: list[Any] = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise QuPathImportError(f"{file_name}: FeatureCollection has no 'features' list")
        items = features
    elif isinstance(data, dict) and data.get("type") == "Feature":
        items = [data]
    elif isinstance(data, dict) and isinstance(data.get("type"), str) and "coordinates" in data:
        items = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise QuPathImportError(
            f"{file_name} is not GeoJSON features: expected a FeatureCollection, a list of "
            f"Features or a Feature, got {kind!r}"
        )
    for index, item in enumerate(items):
        if not isinstance(item, dict) or item.get("type") != "Feature":
            found = item.get("type") if isinstance(item, dict) else type(item).__name__
            raise QuPathImportError(f"{file_name}: item {index} is not a Feature ({found!r})")
        yield item


def _annotations(
    feature: dict[str, Any], index: int, file_name: str, skipped: Counter[str]
) -> list[ImportedAnnotation]:
    properties = feature.get("properties") or {}
    if not isinstance(properties, dict):
        raise QuPathImportError(f"{file_name}: feature {index} has non-object properties")
    object_type = str(properties.get("objectType", "annotation")).lower()
    if object_type not in _AREA_OBJECT_TYPES:
        skipped[object_type] += 1
        return []
    geometry = feature.get("geometry")
    if geometry is None:
        skipped["no geometry"] += 1
        return []
    if not isinstance(geometry, dict) or not isinstance(geometry.get("type"), str):
        raise QuPathImportError(f"{file_name}: feature {index} has a malformed geometry")
    kind = geometry["type"]
    if kind == "GeometryCollection":
        parts = geometry.get("geometries")
        if not isinstance(parts, list):
            raise QuPathImportError(f"{file_name}: feature {index} has a malformed collection")
        found: list[ImportedAnnotation] = []
        for part in parts:
            found += _annotations(
                {**feature, "geometry": part, "properties": properties}, index, file_name, skipped
            )
        return found
    if kind not in _AREA_GEOMETRIES:
        skipped[kind] += 1
        return []
    name = properties.get("name")
    where = f"{file_name}: feature {index}" + (f" ({name!r})" if name else "")
    try:
        parsed = shape(geometry)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise QuPathImportError(f"{where} has a malformed {kind}: {exc}") from exc
    except shapely.errors.ShapelyError as exc:
        raise QuPathImportError(f"{where} has a malformed {kind}: {exc}") from exc
    polygons = list(parsed.geoms) if isinstance(parsed, MultiPolygon) else [parsed]
    classification, color = _classification(properties)
    measurements = _measurements(properties.get("measurements"))
    found = []
    for part_number, polygon in enumerate(polygons, start=1 if len(polygons) > 1 else 0):
        part_where = where + (f" part {part_number}" if part_number else "")
        if not isinstance(polygon, Polygon) or polygon.is_empty:
            skipped["empty polygon"] += 1
            continue
        if not all(math.isfinite(value) for value in polygon.bounds):
            raise QuPathImportError(f"{part_where} has non-finite coordinates")
        if not polygon.is_valid:
            raise QuPathImportError(
                f"{part_where} is an invalid polygon: {explain_validity(polygon)}"
            )
        found.append(
            ImportedAnnotation(
                polygon=shapely.force_2d(polygon),
                name=str(name) if name not in (None, "") else None,
                classification=classification,
                color=color,
                measurements=measurements,
                feature_index=index,
                part=part_number,
            )
        )
    return found


def _classification(properties: dict[str, Any]) -> tuple[str | None, tuple[int, int, int] | None]:
    """``(name, (r, g, b))`` of a QuPath classification; the object colour as a fallback."""
    raw = properties.get("classification")
    name: str | None = None
    color = _color(properties.get("color"))
    if isinstance(raw, dict):
        name = str(raw["name"]) if raw.get("name") not in (None, "") else None
        color = _color(raw.get("color", raw.get("colorRGB"))) or color
    elif isinstance(raw, str) and raw:
        name = raw
    return name, color


def _color(value: Any) -> tuple[int, int, int] | None:
    """QuPath colours: ``[r, g, b]`` or a packed (A)RGB integer, possibly negative."""
    if isinstance(value, list | tuple) and len(value) >= 3:
        try:
            red, green, blue = (int(channel) for channel in value[:3])
        except (TypeError, ValueError):
            return None
        if all(0 <= channel <= 255 for channel in (red, green, blue)):
            return red, green, blue
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        packed = value & 0xFFFFFF
        return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255
    return None


def _measurements(raw: Any) -> dict[str, float]:
    """Numeric, finite measurements from a map (QuPath ≥ 0.4) or a name/value list."""
    pairs: list[tuple[Any, Any]] = []
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, list):
        pairs = [(item.get("name"), item.get("value")) for item in raw if isinstance(item, dict)]
    found: dict[str, float] = {}
    for key, value in pairs:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found[str(key)] = float(value)
    return found
