"""Files are private: the data directory is 0700, exports and renders 0600, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from render_helpers import make_job, requires_chromium, running_child

from shared.data_dir import make_private_dir
from shared.messages import Rendered
from supervisor.delivery.links import LinkSigner, load_or_create_secret
from supervisor.delivery.storage import LocalStorage

pytestmark = pytest.mark.timeout(300)


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """The usual 022: without the fixes below, files would come out 0644 and directories 0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_data_dir_and_its_parents_are_0700(tmp_path: Path) -> None:
    data = tmp_path / "a" / "data"
    make_private_dir(data)
    assert _mode(data) == 0o700


def test_an_existing_loose_data_dir_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)  # noqa: S103 - the loose directory this test tightens
    make_private_dir(data)
    assert _mode(data) == 0o700


def test_the_link_secret_creates_a_private_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    load_or_create_secret("", data)
    assert _mode(data) == 0o700
    assert _mode(data / "link-secret") == 0o600


def test_stored_exports_are_0600_in_0700_directories(tmp_path: Path) -> None:
    root = tmp_path / "files"
    store = LocalStorage(root, LinkSigner(b"s" * 32), "http://worker.test")
    src = tmp_path / "out.pdf"
    src.write_bytes(b"%PDF-1.7 private")
    store.put("users/u1/jobs/j1/export.pdf", src, "application/pdf")
    target = root / "users" / "u1" / "jobs" / "j1" / "export.pdf"
    assert target.read_bytes() == b"%PDF-1.7 private"
    assert _mode(target) == 0o600
    for directory in (root / "users", root / "users" / "u1", root / "users" / "u1" / "jobs", target.parent):
        assert _mode(directory) == 0o700, directory
    # Overwriting keeps it private (a new file replaces the old one).
    store.put("users/u1/jobs/j1/export.pdf", src, "application/pdf")
    assert _mode(target) == 0o600


@pytest.mark.chromium
@requires_chromium
def test_a_render_childs_output_is_0600(tmp_path: Path) -> None:
    with running_child() as child:
        job = make_job("<h1>private</h1>", child.scratch)
        answer = child.render(job)
        assert isinstance(answer, Rendered), answer
        assert _mode(answer.output_path) == 0o600
        assert _mode(os.path.dirname(answer.output_path)) == 0o700
