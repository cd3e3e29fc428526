"""QuPath-style GeoJSON of regions: FeatureCollections of closed Polygons in level-0 px."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from shapely.geometry import MultiPolygon, Polygon, mapping

from wsiviewer import RESEARCH_USE_NOTICE, __version__
from wsiviewer.core.analysis.regions import Region, RegionSet
from wsiviewer.core.exports.files import finite_or_none, write_text
from wsiviewer.core.review.status import STATUS_COLORS
from wsiviewer.core.review.wording import STATUS_CLASSES, STATUS_WORDS

if TYPE_CHECKING:
    from wsiviewer.core.review.log import ReviewItem, ReviewState


#: QuPath classification of each review status: pending regions are candidates, only accepted
#: ones are "IDC", rejected ones have a class of their own (QuPath users can hide, count or
#: delete them by class, and never mistake them for IDC).
CANDIDATE_CLASS_NAME = STATUS_CLASSES["pending"]
IDC_CLASS_NAME = STATUS_CLASSES["accepted"]
REJECTED_CLASS_NAME = STATUS_CLASSES["rejected"]

#: The colour of each class: the status colours of the viewer and the report.
CANDIDATE_COLOR = STATUS_COLORS["pending"]
IDC_COLOR = STATUS_COLORS["accepted"]
REJECTED_COLOR = STATUS_COLORS["rejected"]


#: Namespace of the deterministic feature ids (uuid5) of exported regions.
_REGION_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:wsiviewer:region")


def regions_feature_collection(region_set: RegionSet, *, analysis_key: str = "") -> dict[str, Any]:
    """The regions as a QuPath-style GeoJSON FeatureCollection (a JSON-ready dict).

    Each region is a Feature with a closed ``Polygon`` (holes as interior rings) in level-0 px,
    ``objectType: "annotation"``, the classification ``IDC (candidate)`` with its colour (no
    one has reviewed it: it is flagged, not diagnosed), the name ``Region 3 (candidate)``,
    the measurements
    ``area_mm2``, ``max_prob`` and ``mean_prob`` as a map (QuPath ≥ 0.4), and a UUID ``id``
    derived from ``analysis_key``, the threshold, the minimum area and the region number, so
    the same regions always export the same ids. The research-use notice and the threshold
    are foreign members of the FeatureCollection, which QuPath ignores on import.
    """
    features: list[dict[str, Any]] = []
    for region in region_set.regions:
        parts = _polygons(region)
        for part_number, polygon in enumerate(parts, start=1):
            name = f"Region {region.number}"
            id_text = f"{analysis_key}:{region_set.threshold!r}:{region_set.min_area_mm2!r}"
            id_text += f":{region.number}"
            if len(parts) > 1:
                name += f" part {part_number}"
                id_text += f".{part_number}"
            features.append(
                {
                    "type": "Feature",
                    "id": str(uuid.uuid5(_REGION_ID_NAMESPACE, id_text)),
                    "geometry": _polygon_geometry(polygon),
                    "properties": {
                        "objectType": "annotation",
                        "name": f"{name} ({STATUS_WORDS['pending']})",
                        "classification": {
                            "name": CANDIDATE_CLASS_NAME,
                            "color": list(CANDIDATE_COLOR),
                        },
                        "isLocked": False,
                        "measurements": {
                            "area_mm2": finite_or_none(region.area_mm2),
                            "max_prob": finite_or_none(region.max_prob),
                            "mean_prob": finite_or_none(region.mean_prob),
                        },
                    },
                }
            )
    return _feature_collection(features, region_set.threshold, region_set.min_area_mm2)


def _feature_collection(
    features: list[dict[str, Any]], threshold: float, min_area_mm2: float, **about: object
) -> dict[str, Any]:
    """A FeatureCollection with the research-use notice and what the regions came from."""
    return {
        "type": "FeatureCollection",
        "notice": RESEARCH_USE_NOTICE,
        "wsiviewer": {
            "version": __version__,
            "units": "level-0 px, origin top-left, x right, y down",
            "threshold": threshold,
            "min_area_mm2": min_area_mm2,
            **about,
        },
        "features": features,
    }


def write_geojson(
    path: str | os.PathLike[str], region_set: RegionSet, *, analysis_key: str = ""
) -> Path:
    """Write :func:`regions_feature_collection` as a ``.geojson`` file (atomically).

    One feature per line: compact, yet a diff or a text editor shows one region at a time.
    """
    collection = regions_feature_collection(region_set, analysis_key=analysis_key)
    return _write_feature_collection(path, collection)


def _polygons(region: Region) -> list[Polygon]:
    """A region's outline as Polygons: never a MultiPolygon, one Polygon when it is one."""
    geometry = region.polygon
    if isinstance(geometry, MultiPolygon):
        return [part for part in geometry.geoms if not part.is_empty]
    return [geometry] if not geometry.is_empty else []


def _polygon_geometry(polygon: Polygon) -> dict[str, Any]:
    """GeoJSON Polygon with closed rings; coordinates rounded to 1/1000 px."""
    rings = mapping(polygon)["coordinates"]
    coordinates = []
    for ring in rings:
        points = [[rounded_coordinate(x), rounded_coordinate(y)] for x, y in ring]
        if points and points[0] != points[-1]:
            points.append(points[0])
        coordinates.append(points)
    return {"type": "Polygon", "coordinates": coordinates}


def rounded_coordinate(value: float) -> float | int:
    rounded = round(float(value), 3)
    return int(rounded) if rounded.is_integer() else rounded


def review_feature_collection(
    state: ReviewState, *, analysis_key: str = "", accepted_only: bool = False
) -> dict[str, Any]:
    """A reviewed region set as a QuPath-style GeoJSON FeatureCollection (JSON-ready dict).

    Like :func:`regions_feature_collection` (closed Polygons in level-0 px, ``objectType:
    "annotation"``, measurements as a map, research-use notice), for every region of the
    review that is not deleted, manual regions included, with:

    - ``classification``: ``IDC (candidate)`` (grey) for pending regions, ``IDC``
      (vermillion) for accepted ones, ``IDC (rejected)`` (sky blue) for rejected ones; an
      annotation imported from QuPath keeps its own class and colour;
    - ``name``: ``"Region 3 (accepted)"``, ``"Region M32 (candidate)"``, or an imported
      annotation's own name with its status;
    - ``status`` (``accepted`` / ``rejected`` / ``pending``), ``note``, ``reviewer``,
      ``decided_at``, ``source`` (``model`` / ``manual``), ``origin`` (``model``, ``drawn``,
      ``imported``, ``edit``) and ``number`` as properties, which QuPath ignores on import;
    - measurements ``area_mm2`` and, for model regions, ``max_prob`` and ``mean_prob``.

    ``accepted_only`` keeps only accepted regions. Feature ids are UUIDs derived from the
    analysis key, the set and the region, so a re-export gives the same ids.
    """
    features: list[dict[str, Any]] = []
    for item in state.items:
        if accepted_only and item.status != "accepted":
            continue
        features.append(_review_feature(item, state, analysis_key))
    return _feature_collection(
        features,
        state.threshold,
        state.min_area_mm2,
        review=state.progress_text,
        accepted_only=accepted_only,
    )


def _review_feature(item: ReviewItem, state: ReviewState, analysis_key: str) -> dict[str, Any]:
    measurements: dict[str, float | None] = {"area_mm2": finite_or_none(item.area_mm2)}
    if item.max_prob is not None and item.mean_prob is not None:
        measurements["max_prob"] = finite_or_none(item.max_prob)
        measurements["mean_prob"] = finite_or_none(item.mean_prob)
    id_text = f"{analysis_key}:{state.region_set_id}:{item.ref.kind}:{item.ref.id}"
    status_word = STATUS_WORDS[item.status]
    if item.classification is not None:
        # Imported from QuPath: its own class (a "Stroma" annotation stays Stroma).
        classification = {
            "name": item.classification,
            "color": list(item.color or STATUS_COLORS[item.status]),
        }
    else:
        classification = {
            "name": STATUS_CLASSES[item.status],
            "color": list(STATUS_COLORS[item.status]),
        }
    name = f"{item.source_name or 'Region ' + item.label} ({status_word})"
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_REGION_ID_NAMESPACE, id_text)),
        "geometry": _polygon_geometry(item.polygon),
        "properties": {
            "objectType": "annotation",
            "name": name,
            "classification": classification,
            "isLocked": False,
            "measurements": measurements,
            "status": item.status,
            "note": item.note,
            "reviewer": item.reviewer,
            "decided_at": item.decided_at,
            "source": item.ref.kind,
            "origin": item.origin,
            "number": item.number,
        },
    }


def write_review_geojson(
    path: str | os.PathLike[str],
    state: ReviewState,
    *,
    analysis_key: str = "",
    accepted_only: bool = False,
) -> Path:
    """Write :func:`review_feature_collection` (atomically), one feature per line."""
    collection = review_feature_collection(
        state, analysis_key=analysis_key, accepted_only=accepted_only
    )
    return _write_feature_collection(path, collection)


def _write_feature_collection(path: str | os.PathLike[str], collection: dict[str, Any]) -> Path:
    """Write a FeatureCollection one feature per line: compact, yet diffable (atomically)."""
    features = collection.pop("features")

    def write(handle: TextIO) -> None:
        handle.write(json.dumps(collection)[:-1] + ', "features": [')
        for index, feature in enumerate(features):
            handle.write(("," if index else "") + "\n" + json.dumps(feature))
        handle.write("\n]}\n")

    return write_text(path, write)
