"""The command line with hostile file names, hostile metadata and a database it cannot write:
nothing written outside ``--out`` or the data folder, nothing raw reaching the terminal,
nothing analysed before the database is known to be writable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from tests.conftest import REPO, he_like_slide
from wsiviewer import cli
from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff

#: File names a slide may arrive with: dots only, a leading dash, terminal escapes, a newline,
#: a Windows device name, a right-to-left override.
HOSTILE_NAMES = (
    "...svs",
    "-rf.tif",
    "\x1b[2J\x1b]0;pwned\x07.tif",
    "a\nb.tif",
    "CON.tif",
    "\u202egnp.tif",
)


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pyramid_tiff(
        tmp_path_factory.mktemp("slides") / "small.tif",
        he_like_slide((800, 1200), seed=4),
        mpp=0.5,
        downsamples=(1, 4),
    )


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wsiviewer", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=os.environ.copy(),
    )


def _files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


@pytest.mark.parametrize("include_filename", [False, True])
def test_hostile_slide_names_never_write_outside_out(
    small_slide: Path, tiny_model_card: Path, tmp_path: Path, include_filename: bool
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    slides = [Path(shutil.copyfile(small_slide, inputs / name)) for name in HOSTILE_NAMES[:4]]
    out = tmp_path / "deep" / "out"
    before = _files_under(tmp_path)
    args = ["analyze", *slides, "--out", out, "--model", tiny_model_card, "--quiet"]
    result = _run(*args, *(["--include-filename"] if include_filename else []))
    assert result.returncode == 0, result.stderr
    created = _files_under(tmp_path) - before
    outside = [p for p in created if out not in p.parents and p not in (out, out.parent)]
    assert outside == []
    folders = sorted(p.name for p in out.iterdir())
    assert len(folders) == 4
    for name in folders:
        assert name.isprintable()
        assert not name.startswith((".", "-"))
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    # What reaches the terminal is escaped: no ESC, BEL, bidi override or extra line.
    assert "\x1b" not in result.stderr
    assert "\x07" not in result.stderr
    assert "\u202e" not in result.stderr


def test_a_hostile_name_in_an_error_is_one_escaped_line(tmp_path: Path) -> None:
    path = tmp_path / HOSTILE_NAMES[2]
    path.write_bytes(b"not a slide")
    result = _run("info", path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("wsiviewer: error: ")
    assert "\x1b" not in result.stderr
    assert "\\x1b[2J" in result.stderr


def test_info_escapes_control_characters_json_leaves_raw(small_slide: Path, tmp_path: Path) -> None:
    """JSON escapes C0 controls but prints C1 ones (a CSI, U+009B) and bidi overrides raw."""
    path = write_pyramid_tiff(
        tmp_path / "described.svs",
        he_like_slide((400, 600)),
        mpp=0.5,
        downsamples=(1,),
        style="aperio",
        description="Stain = HXXE",
    )
    data = bytearray(path.read_bytes())
    data[data.index(b"HXXE") + 1 : data.index(b"HXXE") + 3] = "\u009b".encode()
    path.write_bytes(bytes(data))
    result = _run("info", path)
    assert result.returncode == 0, result.stderr
    assert "\u009b" not in result.stdout
    assert json.loads(result.stdout)["properties"]["aperio.Stain"] == "H\u009bE"


def test_a_database_that_cannot_be_written_fails_before_the_model_loads(
    small_slide: Path,
    tiny_model_card: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A full disk under the database used to give a complete output folder, then exit 1."""
    import wsiviewer.core.model.predictor as predictor_module

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40, 2**20))
    monkeypatch.setattr(predictor_module, "Predictor", no_model)
    out = tmp_path / "out"
    code = cli.main(
        ["analyze", str(small_slide), "--out", str(out), "--model", str(tiny_model_card)]
    )
    assert code == cli.EXIT_FAILED
    assert "Only 1 MiB free on the disk of results database" in capsys.readouterr().err
    assert not out.exists()
