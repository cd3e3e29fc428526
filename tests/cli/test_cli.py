from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, he_like_slide
from wsiviewer import cli
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
from wsiviewer.core.slides import open_slide

EXPECTED_OUTPUTS = {
    "regions.geojson",
    "idc_mask.tif",
    "idc_mask.png",
    "patches.csv",
    "heatmap.png",
    "overlay.png",
    "probabilities.npy",
    "run.json",
}


@pytest.fixture(scope="module")
def generated_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.5 µm/px generic pyramidal TIFF with two tissue blobs (grid of 400 px cells)."""
    path = tmp_path_factory.mktemp("slides") / "generated-slide.tif"
    return write_pyramid_tiff(path, he_like_slide((2400, 3200)), mpp=0.5, downsamples=(1, 4, 16))


def run_cli(*args: str | Path) -> tuple[int, str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "wsiviewer", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
    )
    return result.returncode, result.stdout, result.stderr


def test_info_is_json_without_identifying_data(wsi_dir: Path) -> None:
    code, out, err = run_cli("info", wsi_dir / "cmu-1-small-region.svs")
    assert code == 0, err
    info = json.loads(out)
    assert info["vendor"] == "aperio"
    assert info["mpp"] == 0.499
    assert info["mpp_source"] == "metadata"
    assert info["associated_images"] == ["thumbnail"]
    assert "aperio.Filename" not in info["properties"]
    assert "CMU-1" not in out
    code, out, _ = run_cli("info", "--show-identifying", wsi_dir / "cmu-1-small-region.svs")
    assert code == 0
    assert "label" in json.loads(out)["associated_images"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing.svs", "Slide not found"),
        ("fixtures/unopenable.tiff", "Unsupported TIFF compression"),
    ],
)
def test_info_bad_slide_is_one_line(wsi_dir: Path, name: str, message: str) -> None:
    code, out, err = run_cli("info", wsi_dir / name)
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1
    assert message in err
    assert "Traceback" not in err


def test_analyze_without_any_model_says_so(
    generated_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    # An installation whose shipped models folder is gone, and no user models.
    monkeypatch.setattr("wsiviewer.core.model.cards.shipped_models_dir", lambda: None)
    code = cli.main(["analyze", str(generated_slide), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "No model is installed" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_analyze_writes_every_output_and_records_it(
    generated_slide: Path, tiny_model_card: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(
        "analyze", generated_slide, "--out", out, "--model", tiny_model_card, "--threshold", "0.3"
    )
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == EXPECTED_OUTPUTS
    run = json.loads((out / "run.json").read_text())
    assert run["slide"]["mpp"] == 0.5
    text = "".join(
        p.read_text(errors="ignore")
        for p in out.iterdir()
        if p.suffix in {".json", ".geojson", ".csv"}
    )
    assert "generated-slide" not in text
    assert str(generated_slide.parent) not in text
    assert "Research use only" in (out / "regions.geojson").read_text()


def test_store_is_shared_with_a_second_process(
    generated_slide: Path, tiny_model_card: Path, tmp_path: Path
) -> None:
    code, _, err = run_cli(
        "analyze", generated_slide, "--out", tmp_path / "out", "--model", tiny_model_card, "--quiet"
    )
    assert code == 0, err
    identity = json.loads((tmp_path / "out" / "run.json").read_text())["slide"]["identity"]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from wsiviewer.core.store.database import Store\n"
            "with Store.open() as s:\n"
            f"    r = s.latest_analysis({identity!r})\n"
            "    rows, cols = r.grid.shape\n"
            "    print(rows, cols, r.scored_count, len(s.region_sets(r.id)))\n",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows, cols, scored, sets = map(int, result.stdout.split())
    assert (rows, cols) == (6, 8)
    assert scored > 0
    assert sets == 1


def test_several_slides_go_on_past_failures(
    generated_slide: Path, tiny_model_card: Path, wsi_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    slides = [
        generated_slide,
        wsi_dir / "fixtures" / "unopenable.tiff",
        wsi_dir / "multiframe_camelyon_challenge_image.dcm",
    ]
    code, _, err = run_cli("analyze", *slides, "--out", out, "--model", tiny_model_card, "--quiet")
    assert code == 1
    # One folder per slide, named by its non-identifying label; none for the failed slides.
    with open_slide(generated_slide) as slide:
        label = f"slide-{slide.identity[:12]}"
    assert [p.name for p in out.iterdir()] == [label]
    assert {p.name for p in (out / label).iterdir()} == EXPECTED_OUTPUTS
    lines = [line for line in err.splitlines() if line.startswith("wsiviewer: error")]
    assert len(lines) == 2
    assert "Unsupported TIFF compression" in lines[0]
    assert "coarser than the model's input" in lines[1]
    assert "2 of 3 slides failed" in err
    assert "Traceback" not in err


def test_several_slides_named_after_their_files_only_when_asked(
    generated_slide: Path, tiny_model_card: Path, tmp_path: Path
) -> None:
    hostile = tmp_path / "..é x;$(rm).tif"
    shutil.copy(generated_slide, hostile)
    out = tmp_path / "out"
    slides = [generated_slide, hostile, generated_slide]
    code, _, err = run_cli(
        "analyze",
        *slides,
        "--out",
        out,
        "--model",
        tiny_model_card,
        "--quiet",
        "--include-filename",
    )
    assert code == 0, err
    # Cleaned to one safe path component inside --out; repeats numbered.
    assert sorted(p.name for p in out.iterdir()) == [
        "e_x_rm",
        "generated-slide",
        "generated-slide-2",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([hostile.name, "out"])


def test_slide_without_mpp_needs_one(wsi_dir: Path, tiny_model_card: Path, tmp_path: Path) -> None:
    slide = wsi_dir / "tcga-cr-7395-01a-01-ts1.svs"
    code, _, err = run_cli("analyze", slide, "--out", tmp_path / "a", "--model", tiny_model_card)
    assert code == 1
    assert "--mpp" in err
    code, _, err = run_cli(
        "analyze", slide, "--out", tmp_path / "b", "--model", tiny_model_card, "--mpp", "0.25"
    )
    assert code == 0, err
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["slide"]["mpp_source"] == "user"


def test_slide_smaller_than_a_patch_warns_with_empty_outputs(
    wsi_dir: Path, tiny_model_card: Path, tmp_path: Path
) -> None:
    code, _, err = run_cli(
        "analyze", wsi_dir / "fixtures" / "small.svs", "--out", tmp_path, "--model", tiny_model_card
    )
    assert code == 0, err
    assert "warning" in err
    assert "smaller than one" in err
    assert json.loads((tmp_path / "regions.geojson").read_text())["features"] == []
    assert {p.name for p in tmp_path.iterdir()} >= EXPECTED_OUTPUTS - {"overlay.png"}


def test_unreadable_tiles_fail_cleanly(
    wsi_dir: Path, tiny_model_card: Path, tmp_path: Path
) -> None:
    code, _, err = run_cli(
        "analyze",
        wsi_dir / "fixtures" / "unreadable.svs",
        "--out",
        tmp_path / "o",
        "--model",
        tiny_model_card,
    )
    assert code == 1
    assert "Bogus marker length" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    code, _, err = run_cli("analyze", "x.svs", "--out", tmp_path, "--threshold", "2")
    assert code == 2
    assert "not a probability" in err


def test_interrupt_leaves_no_partial_outputs(
    generated_slide: Path, tiny_model_card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during inference: exit 130, nothing in --out, nothing in the Store."""
    from wsiviewer.core.model.predictor import Predictor

    calls = 0
    original = Predictor.predict

    def interrupted(self: Predictor, patches: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return original(self, patches)

    monkeypatch.setattr(Predictor, "predict", interrupted)
    out = tmp_path / "out"
    code = cli.main(
        [
            "analyze",
            str(generated_slide),
            "--out",
            str(out),
            "--model",
            str(tiny_model_card),
            "--batch-size",
            "2",
            "--quiet",
        ]
    )
    assert code == cli.EXIT_INTERRUPTED
    assert calls == 2
    assert not out.exists() or list(out.iterdir()) == []
    from wsiviewer.core.slides import open_slide
    from wsiviewer.core.store.database import Store

    with open_slide(generated_slide) as slide, Store.open() as store:
        assert store.latest_analysis(slide.identity) is None


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX-only")
def test_sigint_in_a_real_process(
    generated_slide: Path, tiny_model_card: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wsiviewer",
            "analyze",
            str(generated_slide),
            "--out",
            str(out),
            "--model",
            str(tiny_model_card),
            "--batch-size",
            "1",
            # At 4 µm/px the slide is ~1,000 tissue patches: seconds of work at batch size 1.
            "--mpp",
            "4",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    # The model line is printed once the model is loaded, before the slide is read.
    first_line = process.stderr.readline()
    assert "Model cancernet-untrained" in first_line
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == cli.EXIT_INTERRUPTED, err
    assert "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []
