"""Golden images: compare a rendering with its committed PNG, or refresh it (`make golden`).

Tolerance: a pixel differs when any channel is more than 32/255 away from the golden;
a comparison fails when the sizes differ or more than 0.05% of the pixels differ.
One line of a missing script's boxes alone changes more than that; anti-aliasing
noise between two runs on the same fonts changes nothing (measured: 0 pixels).
On failure the rendering and a diff image (differing pixels red over a faded copy)
are written to build/golden/, the test output directory, and the message names them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parents[2]
GOLDEN_DIR = ROOT / "tests" / "golden"
OUTPUT_DIR = ROOT / "build" / "golden"
CHANNEL_TOLERANCE = 32
MAX_DIFFERING_FRACTION = 0.0005
PDF_DPI = 50  # an A4 page is 413 x 585 px: enough to see every glyph's shape, small to commit
IMAGE_WIDTH = 800
IMAGE_SCALE = 0.5  # device scale factor: a 400 px wide image


def updating() -> bool:
    return os.environ.get("UPDATE_GOLDEN") == "1"


def rasterise_first_page(pdf: Path, out: Path, dpi: int = PDF_DPI) -> Image.Image:
    """Page 1 as PNG through poppler's pdftoppm (installed with Chromium)."""
    return rasterise_page(pdf, out, 1, dpi)


def rasterise_page(pdf: Path, out: Path, page: int, dpi: int = PDF_DPI) -> Image.Image:
    """Page `page` (from 1) as PNG through poppler's pdftoppm."""
    prefix = out.with_suffix("")
    subprocess.run(
        ["pdftoppm", "-r", str(dpi), "-f", str(page), "-l", str(page), "-png", "-singlefile", str(pdf), str(prefix)],
        check=True,
        timeout=60,
    )
    return Image.open(prefix.with_suffix(".png")).convert("RGB")


def differing_pixels(actual: Image.Image, golden: Image.Image) -> tuple[int, Image.Image]:
    diff = ImageChops.difference(actual.convert("RGB"), golden.convert("RGB"))
    channels = diff.split()
    worst = ImageChops.lighter(ImageChops.lighter(channels[0], channels[1]), channels[2])
    mask = worst.point(lambda v: 255 if v > CHANNEL_TOLERANCE else 0)
    count = mask.histogram()[255]
    faded = Image.blend(actual.convert("RGB"), Image.new("RGB", actual.size, "white"), 0.7)
    faded.paste(Image.new("RGB", actual.size, (255, 0, 0)), mask=mask)
    return count, faded


def _within_tolerance(actual: Image.Image, golden: Image.Image) -> bool:
    if actual.size != golden.size:
        return False
    return differing_pixels(actual, golden)[0] <= int(actual.width * actual.height * MAX_DIFFERING_FRACTION)


def check_golden(name: str, actual: Image.Image) -> None:
    """Compare ``actual`` with tests/golden/{name}.png (or write it when refreshing)."""
    golden_path = GOLDEN_DIR / f"{name}.png"
    actual = actual.convert("RGB")
    if updating():
        # rewrite only what changed beyond the tolerance: no churn of committed images
        if not golden_path.exists() or not _within_tolerance(actual, Image.open(golden_path).convert("RGB")):
            GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
            actual.save(golden_path, optimize=True)
        return
    assert golden_path.exists(), f"no golden image {golden_path}; run `make golden` to create it"
    golden = Image.open(golden_path).convert("RGB")
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    actual_path = OUTPUT_DIR / f"{name}.actual.png"
    diff_path = OUTPUT_DIR / f"{name}.diff.png"
    if actual.size != golden.size:
        actual.save(actual_path)
        raise AssertionError(
            f"{name}: size {actual.size} differs from the golden's {golden.size}; rendering in {actual_path}"
        )
    count, diff = differing_pixels(actual, golden)
    allowed = int(actual.width * actual.height * MAX_DIFFERING_FRACTION)
    if count > allowed:
        actual.save(actual_path)
        diff.save(diff_path)
        raise AssertionError(
            f"{name}: {count} pixels differ from {golden_path.name} (allowed {allowed}); "
            f"rendering in {actual_path}, differences in red in {diff_path}; "
            "if the change is intended, run `make golden` and commit the new images"
        )
    for stale in (actual_path, diff_path):
        stale.unlink(missing_ok=True)
