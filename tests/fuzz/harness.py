"""A fuzz harness for slide files: seeded mutations of real and generated slides, run through
what ``wsiviewer info``, ``analyze`` and the viewer do with a file, in a worker process.

Every case is a slide file (a shared fixture or a slide built here) changed by one seeded
mutation: a TIFF field (value, count or type of any IFD entry), tile offsets and byte counts,
a JPEG codestream or table header, a truncation, an ImageDescription edit (bytes that are not
UTF-8, control characters, odd numbers), or random bytes. A case is fully determined by its
base, its kind and its seed, so a failure is reproduced by :func:`make_case` alone.

The worker (``python -m tests.fuzz.harness worker``) opens each case as the tool does
(:func:`exercise`): the slide's description as ``info`` prints it, reads of every level and
display reads at 1/2 and 1/4 as the viewer makes them, associated images, the thumbnail, and
the reads of an analysis (tissue detection, the first blocks of model patches). Its outcome:

- ``success``, or ``clean error`` (one of our errors, :class:`~wsiviewer.WsiViewerError`);
- ``traceback``: any other exception escaped (the worker reports its type and where);
- ``signal``: the worker died (a native crash in a library), restarted for the next case;
- ``hang``: no answer within the timeout, the worker killed and restarted.

Used by ``tests/fuzz/test_fuzz.py`` (a few hundred cases, in ``make test``) and
``benchmarks/fuzz.py`` (thousands, with the outcome table).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED_WSI = REPO.parent / "shared" / "data" / "wsi"

#: Outcomes, in table order.
OUTCOMES = ("success", "clean error", "traceback", "signal", "hang")

#: Mutation kinds.
KINDS = (
    "ifd-value",
    "ifd-count-type",
    "tile-offsets",
    "tile-counts",
    "codestream",
    "truncate",
    "description",
    "bytes",
)

#: The worker's address space limit: a decoder asked for a huge image fails (and is counted)
#: rather than taking the machine's memory.
WORKER_MEMORY_BYTES = 6 * 1024**3


# --------------------------------------------------------------------------- bases


@dataclass(frozen=True)
class Base:
    """A slide file to mutate: its files (the first is the one opened) and its format."""

    name: str
    files: tuple[Path, ...]
    tiff: bool


def build_bases(folder: Path, *, shared: bool = True) -> list[Base]:
    """The slides cases are made from: generated Aperio and generic pyramids (JPEG, deflate,
    with label and macro images), and the shared fixtures and small real slides when
    ``../shared/data`` is there."""
    import numpy as np
    import tifffile

    from wsiviewer.core.exports.pyramid_tiff import write_pyramid_tiff
    from wsiviewer.core.slides.synthetic import he_like_slide

    folder.mkdir(parents=True, exist_ok=True)
    pixels = he_like_slide((600, 800), seed=3)
    bases: list[Base] = []
    aperio = write_pyramid_tiff(
        folder / "aperio.svs",
        pixels,
        mpp=0.5,
        downsamples=(1, 4),
        tile=256,
        style="aperio",
        description="ScanScope ID = SS1234|Filename = case-17|Date = 01/02/24",
    )
    # Label and macro images as Aperio stores them: stripped pages after the pyramid.
    with tifffile.TiffWriter(aperio, append=True) as writer:
        for name, shade in (("label", 90), ("macro", 160)):
            writer.write(
                np.full((64, 96, 3), shade, np.uint8),
                description=f"Aperio Image Library v12.0.0\n{name} 96x64",
                photometric="rgb",
                compression="lzw",
                subfiletype=1 if name == "label" else 9,
                metadata=None,
            )
    bases.append(Base("generated aperio (JPEG, label, macro)", (aperio,), True))
    bases.append(
        Base(
            "generated generic (JPEG)",
            (
                write_pyramid_tiff(
                    folder / "generic.tif", pixels, mpp=0.5, downsamples=(1, 4), tile=256
                ),
            ),
            True,
        )
    )
    bases.append(
        Base(
            "generated generic (deflate)",
            (
                write_pyramid_tiff(
                    folder / "deflate.tif",
                    pixels,
                    mpp=0.5,
                    downsamples=(1, 4),
                    tile=128,
                    compression="deflate",
                ),
            ),
            True,
        )
    )
    if shared and SHARED_WSI.is_dir():
        fixtures = SHARED_WSI / "fixtures"
        for name in ("small.svs", "boxes.tiff", "unreadable.svs"):
            if (fixtures / name).is_file():
                bases.append(Base(f"fixture {name}", (fixtures / name,), True))
        if (fixtures / "boxes_0.dcm").is_file() and (fixtures / "boxes_1.dcm").is_file():
            bases.append(
                Base(
                    "fixture boxes_0.dcm (DICOM pair)",
                    (fixtures / "boxes_0.dcm", fixtures / "boxes_1.dcm"),
                    False,
                )
            )
        if (SHARED_WSI / "cmu-1-small-region.svs").is_file():
            bases.append(
                Base("CMU-1 small region (Aperio)", (SHARED_WSI / "cmu-1-small-region.svs",), True)
            )
    return bases


# --------------------------------------------------------------------------- mutations


@dataclass(frozen=True)
class Case:
    """One fuzz case: a base, a mutation kind and its seed."""

    base: Base
    kind: str
    seed: int

    @property
    def label(self) -> str:
        return f"{self.base.name} / {self.kind} / seed {self.seed}"


@dataclass(frozen=True)
class _Entry:
    """One IFD entry of a TIFF: where it is and what it holds."""

    page: int
    code: int
    entry_offset: int
    type_size: int
    count: int
    value_offset: int


def _tiff_entries(data: bytes, path: Path) -> tuple[str, bool, list[_Entry], list[Any]]:
    """Byte order, BigTIFF, every IFD entry and the pages of a TIFF (tifffile's view)."""
    import tifffile

    entries: list[_Entry] = []
    pages: list[Any] = []
    with tifffile.TiffFile(path) as tiff:
        byteorder = tiff.byteorder
        bigtiff = tiff.is_bigtiff
        for index, page in enumerate(tiff.pages):
            pages.append(
                {
                    "tiled": bool(page.is_tiled),
                    "offsets": list(page.dataoffsets),
                    "counts": list(page.databytecounts),
                    "jpeg": page.compression == 7,
                    "tables": _tag(page, 347),
                    "description": _tag(page, 270),
                    "offsets_tag": _tag(page, 324) or _tag(page, 273),
                    "counts_tag": _tag(page, 325) or _tag(page, 279),
                }
            )
            for tag in page.tags.values():
                entries.append(
                    _Entry(
                        index,
                        tag.code,
                        tag.offset,
                        _type_size(tag),
                        tag.count,
                        tag.valueoffset,
                    )
                )
    return byteorder, bigtiff, entries, pages


def _type_size(tag: Any) -> int:
    sizes = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8}
    return sizes.get(int(tag.dtype), 1)


def _tag(page: Any, code: int) -> tuple[int, int, int] | None:
    tag = page.tags.get(code)
    return None if tag is None else (tag.valueoffset, tag.count, _type_size(tag))


_INTERESTING = (0, 1, 2, 7, 15, 16, 17, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1)


def _interesting(rng: random.Random, old: int, limit: int) -> int:
    choice = rng.randrange(4)
    if choice == 0:
        value = rng.choice(_INTERESTING)
    elif choice == 1:
        value = old + rng.choice((-1, 1, -16, 16, 1000))
    elif choice == 2:
        value = old * rng.choice((2, 3, 16)) if rng.random() < 0.5 else old // rng.choice((2, 16))
    else:
        value = rng.randrange(limit + 1)
    return value % (limit + 1)


def mutate(data: bytes, path: Path, kind: str, rng: random.Random, tiff: bool) -> bytes:
    """``data`` (the bytes of ``path``) changed by one mutation of ``kind``."""
    out = bytearray(data)
    if kind == "truncate":
        return bytes(out[: rng.randrange(8, max(9, len(out)))])
    if kind == "bytes" or not tiff:
        span = len(out) if rng.random() < 0.5 else min(len(out), 4096)
        for _ in range(rng.choice((1, 2, 4, 16, 64))):
            position = rng.randrange(span)
            out[position] = rng.randrange(256) if rng.random() < 0.7 else out[position] ^ 0xFF
        return bytes(out)
    byteorder, bigtiff, entries, pages = _tiff_entries(data, path)
    order = "<" if byteorder == "<" else ">"
    count_format, offset_size = ("Q", 8) if bigtiff else ("I", 4)
    if kind == "ifd-value":
        entry = rng.choice(entries)
        size = min(entry.type_size, 4)
        if entry.type_size * entry.count > offset_size:  # an array: change one element
            position = entry.value_offset + entry.type_size * rng.randrange(entry.count)
        else:
            position = entry.value_offset
        if position + size <= len(out):
            fmt = order + {1: "B", 2: "H", 4: "I"}[size if size in (1, 2, 4) else 4]
            (old,) = struct.unpack_from(fmt, out, position)
            struct.pack_into(fmt, out, position, _interesting(rng, old, 256**size - 1))
        return bytes(out)
    if kind == "ifd-count-type":
        entry = rng.choice(entries)
        if rng.random() < 0.5:
            struct.pack_into(
                order + "H",
                out,
                entry.entry_offset + 2,
                rng.choice((0, 1, 2, 3, 4, 5, 7, 12, 16, 99)),
            )
        else:
            limit = 256**offset_size - 1
            struct.pack_into(
                order + count_format,
                out,
                entry.entry_offset + 4,
                _interesting(rng, entry.count, limit),
            )
        return bytes(out)
    tiled = [page for page in pages if page["offsets_tag"] is not None and page["offsets"]]
    if not tiled:
        return mutate(data, path, "bytes", rng, tiff)
    page = rng.choice(tiled)
    if kind in ("tile-offsets", "tile-counts"):
        value_offset, count, size = page["offsets_tag" if kind == "tile-offsets" else "counts_tag"]
        fmt = order + {2: "H", 4: "I", 8: "Q"}.get(size, "I")
        size = struct.calcsize(fmt)
        offsets, counts = page["offsets"], page["counts"]
        for _ in range(rng.choice((1, 1, 2, 8))):
            index = rng.randrange(count)
            position = value_offset + size * index if count * size > offset_size else value_offset
            choice = rng.randrange(5)
            if kind == "tile-offsets":
                value = (
                    0,
                    len(out) - rng.randrange(1, 64),
                    len(out) + rng.randrange(1, 10**6),
                    offsets[rng.randrange(len(offsets))],
                    offsets[index] + rng.randrange(-32, 32),
                )[choice]
            else:
                value = (
                    0,
                    1,
                    2**size * 8 - 1 if size < 4 else rng.choice((2**31, 2**32 - 1, 10**8)),
                    counts[rng.randrange(len(counts))],
                    max(0, counts[index] + rng.randrange(-64, 64)),
                )[choice]
            if position + size <= len(out):
                struct.pack_into(fmt, out, position, value % 256**size)
        return bytes(out)
    if kind == "codestream":
        if page["jpeg"] and page["tables"] is not None and rng.random() < 0.3:
            start, length, _ = page["tables"]
        else:
            index = rng.randrange(len(page["offsets"]))
            start, length = page["offsets"][index], page["counts"][index]
        # The headers: the first bytes (SOI, SOF, DHT/DQT, SOS header) and the tail.
        for _ in range(rng.choice((1, 2, 3, 6))):
            if rng.random() < 0.8:
                position = start + rng.randrange(min(max(length, 1), 160))
            else:
                position = start + max(0, length - 1 - rng.randrange(min(max(length, 1), 32)))
            if position < len(out):
                out[position] = rng.choice((0x00, 0xFF, 0xD8, 0xD9, 0xC0, 0xDA, rng.randrange(256)))
        return bytes(out)
    if kind == "description":
        described = [p for p in pages if p["description"] is not None]
        if not described:
            return mutate(data, path, "bytes", rng, tiff)
        start, length, _ = rng.choice(described)["description"]
        text = bytearray(out[start : start + length])
        edits: list[Callable[[], None]] = [
            lambda: text.__setitem__(
                rng.randrange(len(text)), rng.choice((0xFF, 0xC3, 0x80, 0xFE))
            ),
            lambda: text.__setitem__(
                rng.randrange(len(text)), rng.choice((0x1B, 0x07, 0x0D, 0x08, 0x9B))
            ),
            lambda: _replace_value(
                text, rng, rng.choice((b"nan", b"-1", b"1e308", b"0", b"\xff\xfe", b"9" * 40))
            ),
            lambda: text.__setitem__(rng.randrange(len(text)), rng.choice((ord("|"), ord("="), 0))),
        ]
        for _ in range(rng.choice((1, 2, 4))):
            if text:
                rng.choice(edits)()
        out[start : start + length] = text[:length].ljust(length, b" ")
        return bytes(out)
    raise ValueError(f"Unknown mutation kind {kind!r}")


def _replace_value(text: bytearray, rng: random.Random, value: bytes) -> None:
    """Overwrite the value after one ``=`` of an Aperio description, keeping its length."""
    equals = [i for i, byte in enumerate(text) if byte == ord("=")]
    if not equals:
        return
    start = rng.choice(equals) + 2
    end = start
    while end < len(text) and text[end] not in (ord("|"), 0):
        end += 1
    if end > start:
        text[start:end] = (value * (end - start))[: end - start]


def make_case(case: Case, folder: Path) -> Path:
    """Write ``case``'s files into ``folder`` (emptied first); the path of the one to open."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    rng = random.Random(f"{case.base.name}|{case.kind}|{case.seed}")
    target = rng.randrange(len(case.base.files)) if len(case.base.files) > 1 else 0
    opened = folder / case.base.files[0].name
    for index, source in enumerate(case.base.files):
        destination = folder / source.name
        if index == target:
            data = mutate(source.read_bytes(), source, case.kind, rng, case.base.tiff)
            destination.write_bytes(data)
        else:
            shutil.copyfile(source, destination)
    return opened


def cases(bases: Iterable[Base], count: int, seed: int = 0) -> Iterator[Case]:
    """``count`` cases spread evenly over ``bases`` and :data:`KINDS`, seeds from ``seed``."""
    combos = [(base, kind) for base in bases for kind in KINDS]
    for number in range(count):
        base, kind = combos[number % len(combos)]
        yield Case(base, kind, seed + number // len(combos))


# --------------------------------------------------------------------------- the worker


def exercise(path: Path) -> None:
    """What the tool does with a slide file, end to end but without the model: ``info``, the
    viewer's reads, associated images, and an analysis's reads.

    Raises whatever escapes: our errors are a clean outcome, anything else a traceback.
    """
    from wsiviewer.core.analysis.grid import PatchGrid
    from wsiviewer.core.analysis.patches import PatchReader
    from wsiviewer.core.analysis.tissue import TissueSettings, detect_tissue, tissue_cells
    from wsiviewer.core.slides import open_slide

    with open_slide(path) as slide:
        json.dumps(slide.describe(), ensure_ascii=False)
        json.dumps(slide.describe(include_identifying=True), ensure_ascii=False)
        for name in slide.associated_image_names:
            slide.associated_image(name, include_identifying=True)
        for level in range(min(slide.level_count, 4)):
            width, height = slide.level_dimensions[level]
            downsample = slide.level_downsamples[level]
            slide.read_region((0, 0), level, (min(width, 300), min(height, 300)))
            center = (round(width / 2 * downsample), round(height / 2 * downsample))
            slide.read_region(center, level, (256, 256))
            for reduction in (2, 4):
                slide.read_display((0, 0), level, (min(width, 512), min(height, 512)), reduction)
        slide.thumbnail(256)
        mpp = slide.mpp.value if slide.mpp is not None else 0.5
        settings = TissueSettings()
        mask = detect_tissue(slide, settings, mpp=mpp)
        grid = PatchGrid.for_slide(slide.dimensions, mpp, 4.0, 50)
        if grid.cell_count:
            reader = PatchReader(slide, grid)
            cells = tissue_cells(mask, grid, settings)
            cells[0, 0] = True
            for block, _ in zip(reader.iter_blocks(cells), range(3), strict=False):
                del block


def _worker() -> int:
    """Answer one JSON line per path read from stdin (see the module docstring)."""
    import logging
    import warnings

    from wsiviewer.errors import WsiViewerError

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    logging.disable(logging.CRITICAL)  # tifffile logs every odd tag it meets
    warnings.simplefilter("ignore")
    import wsiviewer.core.analysis.tissue  # noqa: F401 -- imports before the first case

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        path = Path(line.rstrip("\n"))
        started = time.perf_counter()
        try:
            exercise(path)
            answer: dict[str, object] = {"outcome": "success"}
        except WsiViewerError as exc:
            message = str(exc)
            answer = {
                "outcome": "clean error",
                "detail": f"{type(exc).__name__}: {message[:300]}",
                "unescaped": not message.isprintable(),
            }
        except Exception as exc:  # noqa: BLE001 -- what the harness exists to find
            frames = traceback.extract_tb(exc.__traceback__)
            ours = [f for f in frames if "wsiviewer" in f.filename] or frames
            where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
            answer = {
                "outcome": "traceback",
                "detail": f"{type(exc).__name__} at {where}: {str(exc)[:200]}",
            }
        answer["seconds"] = round(time.perf_counter() - started, 4)
        print(json.dumps(answer), flush=True)
    return 0


# --------------------------------------------------------------------------- the runner


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str = ""
    seconds: float = 0.0
    unescaped: bool = False


class Worker:
    """The worker process: started on demand, restarted after a crash or a hang."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._process: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz.harness", "worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            env=env,
        )
        ready = self._read_line(process, 120.0)
        if not ready or not json.loads(ready).get("ready"):
            self._stop(process, kill=True)
            raise RuntimeError("The fuzz worker did not start")
        return process

    def _read_line(self, process: subprocess.Popen[str], timeout_s: float) -> str | None:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], timeout_s)
        if not readable:
            return None  # silent: a hang
        return process.stdout.readline()  # "" when it ended

    def run(self, case: Case, path: Path) -> Result:
        if self._process is None or self._process.poll() is not None:
            self._process = self._start()
        process = self._process
        assert process.stdin is not None
        started = time.perf_counter()
        try:
            process.stdin.write(f"{path}\n")
            process.stdin.flush()
        except BrokenPipeError:
            pass
        line = self._read_line(process, self.timeout_s)
        seconds = time.perf_counter() - started
        if not line:
            hung = line is None
            code = self._stop(process, kill=True)
            if hung:
                return Result(case, "hang", f"no answer in {self.timeout_s:g} s", seconds)
            name = signal.Signals(-code).name if code < 0 else f"exit status {code}"
            return Result(case, "signal", name, seconds)
        answer = json.loads(line)
        return Result(
            case,
            str(answer["outcome"]),
            str(answer.get("detail", "")),
            float(answer.get("seconds", seconds)),
            bool(answer.get("unescaped", False)),
        )

    def _stop(self, process: subprocess.Popen[str], *, kill: bool) -> int:
        """End ``process`` (killed, or asked to finish by closing its input); its status."""
        if kill and process.poll() is None:
            process.kill()
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass
        try:
            code = process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if process is self._process:
            self._process = None
        return code

    def close(self) -> None:
        if self._process is not None:
            self._stop(self._process, kill=False)


def run_cases(
    selected: Iterable[Case],
    folder: Path,
    *,
    timeout_s: float = 60.0,
    progress: Callable[[int, Result], None] | None = None,
) -> list[Result]:
    """Run every case in a worker; the results in order."""
    worker = Worker(timeout_s)
    results: list[Result] = []
    try:
        for number, case in enumerate(selected):
            path = make_case(case, folder / "case")
            result = worker.run(case, path)
            results.append(result)
            if progress is not None:
                progress(number, result)
    finally:
        worker.close()
    return results


def outcome_counts(results: Iterable[Result]) -> Counter[str]:
    counts: Counter[str] = Counter(dict.fromkeys(OUTCOMES, 0))
    counts.update(result.outcome for result in results)
    return counts


def table(results: list[Result], by: Callable[[Result], str] | None = None) -> str:
    """A Markdown table of outcomes: one row per group (``by``) and a total."""
    groups: dict[str, list[Result]] = {}
    for result in results:
        groups.setdefault(by(result) if by else "all", []).append(result)
    header = "| cases | " + " | ".join(OUTCOMES) + " |"
    if by:
        header = "| group " + header
    lines = [header, "|" + "---|" * (len(OUTCOMES) + 1 + (1 if by else 0))]
    rows = [*groups.items(), *([("total", results)] if by else [])]
    for name, group in rows:
        counts = outcome_counts(group)
        cells = " | ".join(f"{counts[o]:,}" for o in OUTCOMES)
        lines.append(("| " + name + " " if by else "") + f"| {len(group):,} | {cells} |")
    return "\n".join(lines)


def as_record(result: Result) -> dict[str, object]:
    return {
        "case": result.case.label,
        **{k: v for k, v in dataclasses.asdict(result).items() if k != "case"},
    }


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    sys.exit(_worker())
