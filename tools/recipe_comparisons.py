"""The recipe on fixed patient splits, beside the published anchors: a Markdown table.

    .venv/bin/python tools/recipe_comparisons.py CARD.json [CARD.json ...] > comparisons.md

A development tool, not part of the installed package. Each card is a model trained by
``wsiviewer train`` on one split (``--split`` or ``--standard-split``), with the split's
validation and test figures on the card (threshold and calibration chosen on validation).
"""

from __future__ import annotations

import sys
from pathlib import Path

from wsiviewer.core.model.cards import ModelCard

KEYS = ("balanced_accuracy", "roc_auc", "sensitivity", "specificity", "ece")


def _cell(metrics: dict, key: str) -> str:  # type: ignore[type-arg]
    low, high = metrics["intervals_95"][key]
    return f"{metrics[key]:.3f} ({low:.3f}–{high:.3f})"


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    lines = [
        "| model | split | part | patients | patches | "
        + " | ".join(k.replace("_", " ") for k in KEYS)
        + " | TP | FN | TN | FP |",
        "|---|---|---|---|---|" + "---|" * len(KEYS) + "---|---|---|---|",
    ]
    for path in paths:
        card = ModelCard.from_file(Path(path))
        split = card.extra.get("split", "?")
        for part in ("validation", "test"):
            m = card.extra["metrics"][part]
            counts = " | ".join(f"{int(m[k]):,}" for k in ("tp", "fn", "tn", "fp"))
            lines.append(
                f"| {card.name} | {split} | {part} | {m['patients']} | {m['patches']:,} | "
                + " | ".join(_cell(m, k) for k in KEYS)
                + f" | {counts} |"
            )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
