"""Visual regression: every sample menu x template, as PDF page 1 and as image, against tests/golden;
and the test menus of tests/menus in the places they exist for (right to left with Latin
fields, per-script typography, contrast, page breaks).

`make golden` refreshes the images (UPDATE_GOLDEN=1); the tolerance is in golden.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from golden import (
    GOLDEN_DIR,
    IMAGE_SCALE,
    IMAGE_WIDTH,
    OUTPUT_DIR,
    check_golden,
    rasterise_first_page,
    rasterise_page,
    updating,
)
from PIL import Image
from render_helpers import ChildHandle, make_job, requires_chromium, running_child

from shared.menu import MenuDocument
from shared.messages import Rendered
from shared.payload import ImageOptions, MenuSource

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
SAMPLE_NAMES = sorted(p.stem for p in SAMPLES.glob("*.json"))
TEST_MENUS = Path(__file__).resolve().parents[1] / "menus"
# (test menu, template, PDF page or 0 for the image): few renders, each showing several cases.
MENU_CASES = [
    # Hebrew and Arabic menus with Latin names, numbers, an address and emoji; gold and yellow accents
    ("rtl_hebrew", "classic", 1),
    ("rtl_hebrew", "modern", 0),
    ("rtl_arabic", "modern", 1),
    # Devanagari, Thai and Hebrew headings: untracked, upright; a gold accent under the modern header
    ("scripts", "classic", 1),
    ("scripts", "modern", 0),
    # a heading pushed to the next page with its first dish (1-2); a section continued (3); the legend
    ("breaks", "classic", 1),
    ("breaks", "classic", 2),
    ("breaks", "classic", 3),
    ("breaks", "modern", 2),
]


@pytest.fixture(scope="module")
def child() -> Iterator[ChildHandle]:
    with running_child() as handle:
        yield handle


def _menu(name: str, directory: Path = SAMPLES) -> MenuDocument:
    return msgspec.json.decode((directory / f"{name}.json").read_bytes(), type=MenuDocument)


@pytest.mark.parametrize("template", ["classic", "modern"])
@pytest.mark.parametrize("sample", SAMPLE_NAMES)
def test_pdf_first_page(child: ChildHandle, sample: str, template: str, tmp_path: Path) -> None:
    answer = child.render(make_job(MenuSource(menu=_menu(sample), template=template), child.scratch))  # type: ignore[arg-type]
    assert isinstance(answer, Rendered), answer
    page = rasterise_first_page(Path(answer.output_path), tmp_path / "page.png")
    check_golden(f"{sample}-{template}-pdf", page)


@pytest.mark.parametrize("template", ["classic", "modern"])
@pytest.mark.parametrize("sample", SAMPLE_NAMES)
def test_image(child: ChildHandle, sample: str, template: str) -> None:
    opts = ImageOptions(format="png", width=IMAGE_WIDTH, device_scale_factor=IMAGE_SCALE)
    source = MenuSource(menu=_menu(sample), template=template)  # type: ignore[arg-type]
    answer = child.render(make_job(source, child.scratch, export_type="image", image=opts))
    assert isinstance(answer, Rendered), answer
    check_golden(f"{sample}-{template}-image", Image.open(answer.output_path))


@pytest.mark.parametrize(("menu", "template", "page"), MENU_CASES)
def test_menu_case(child: ChildHandle, menu: str, template: str, page: int, tmp_path: Path) -> None:
    source = MenuSource(menu=_menu(menu, TEST_MENUS), template=template)  # type: ignore[arg-type]
    if page:
        answer = child.render(make_job(source, child.scratch))
        assert isinstance(answer, Rendered), answer
        image = rasterise_page(Path(answer.output_path), tmp_path / "page.png", page)
        check_golden(f"case-{menu}-{template}-pdf-p{page}", image)
    else:
        opts = ImageOptions(format="png", width=IMAGE_WIDTH, device_scale_factor=IMAGE_SCALE)
        answer = child.render(make_job(source, child.scratch, export_type="image", image=opts))
        assert isinstance(answer, Rendered), answer
        check_golden(f"case-{menu}-{template}-image", Image.open(answer.output_path))


def test_multilingual_first_page_legible(child: ChildHandle, tmp_path: Path) -> None:
    """The food hall's first page at 100 dpi, where every script can be read by a person too."""
    answer = child.render(make_job(MenuSource(menu=_menu("world_kitchen"), template="classic"), child.scratch))
    assert isinstance(answer, Rendered), answer
    page = rasterise_first_page(Path(answer.output_path), tmp_path / "page.png", dpi=100)
    check_golden("world_kitchen-classic-pdf-100dpi", page)


def test_four_missing_glyphs_fail_the_comparison(child: ChildHandle) -> None:
    """The tolerance is tight enough to see one four-character dish name drawn as boxes."""
    if updating():
        pytest.skip("refreshing the goldens")
    name = "world_kitchen-classic-image"
    menu = _menu("world_kitchen")
    items = menu.sections[2].items
    assert items[0].name == "\u9ebb\u5a46\u8c46\u8150"  # 麻婆豆腐
    items[0] = msgspec.structs.replace(items[0], name="\ue000\ue001\ue002\ue003")  # no font has these
    opts = ImageOptions(format="png", width=IMAGE_WIDTH, device_scale_factor=IMAGE_SCALE)
    answer = child.render(make_job(MenuSource(menu=menu), child.scratch, export_type="image", image=opts))
    assert isinstance(answer, Rendered), answer
    with pytest.raises(AssertionError, match="pixels differ") as info:
        check_golden(name, Image.open(answer.output_path))
    diff = OUTPUT_DIR / f"{name}.diff.png"
    assert str(diff) in str(info.value)
    golden = Image.open(GOLDEN_DIR / f"{name}.png")
    assert Image.open(diff).size == golden.size
    check_golden(name, golden)  # the golden itself passes, and clears the failure files
    assert not diff.exists()
