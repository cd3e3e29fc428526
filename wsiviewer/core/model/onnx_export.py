"""The ONNX export of a model: the torch classifier exported once and cached by weights and card.

The cached file is keyed by the weights' and the card's sha256, torch's version and the
export's own version, so an edited card or new weights never reuse an old export. The cache is
a convenience, never trusted: :func:`~wsiviewer.core.model.engines.build_engine` checks it
against torch at every load and rebuilds it on any doubt.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import torch

from wsiviewer.core.model.cards import ModelCard
from wsiviewer.core.model.networks import PatchClassifier
from wsiviewer.core.paths import inside, safe_component

#: Bump when the export changes, so cached files from older versions are not reused.
_EXPORT_VERSION = "1"


def export_onnx(classifier: PatchClassifier, card: ModelCard) -> bytes:
    """The classifier as an ONNX model with a dynamic batch dimension."""
    size = card.input_size
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export, which needs the
        # onnxscript package and takes ~15× longer for this network; torch is pinned.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            classifier.cpu().eval(),
            (example,),
            buffer,  # type: ignore[arg-type]  # file-like objects are accepted at run time
            input_names=["patches"],
            output_names=["p_idc"],
            dynamic_axes={"patches": {0: "batch"}, "p_idc": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return buffer.getvalue()


def onnx_cache_path(card: ModelCard, cache_dir: Path) -> Path:
    """Where the exported model of ``card`` is cached: keyed by weights, card and torch.

    Always a file directly inside ``cache_dir``: the card's name only labels it, cleaned to a
    safe file name (:func:`~wsiviewer.core.paths.safe_component`), whatever the card says
    (``../../x``, an absolute path); the key is what identifies it.
    """
    key = hashlib.sha256(
        "|".join(
            (card.weights_sha256, card.card_sha256, torch.__version__, _EXPORT_VERSION)
        ).encode()
    ).hexdigest()
    label = safe_component(card.name, max_chars=40, fallback="model")
    return inside(cache_dir, f"{label}-{key[:24]}.onnx")
