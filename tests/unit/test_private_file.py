"""The one atomic private file write (shared.data_dir.write_private_file) and its users' cases."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import BinaryIO

import pytest

from shared.data_dir import write_private_file
from supervisor.delivery.links import load_or_create_secret


def test_written_whole_0600_and_no_temporary_file_left(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    assert write_private_file(target, lambda fh: fh.write(b"first"))
    assert write_private_file(target, lambda fh: fh.write(b"second"))  # replaces
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_exclusive_keeps_the_file_already_there(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    assert write_private_file(target, lambda fh: fh.write(b"winner"), exclusive=True)
    assert not write_private_file(target, lambda fh: fh.write(b"loser"), exclusive=True)
    assert target.read_bytes() == b"winner"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_a_failing_writer_leaves_neither_target_nor_temporary_file(tmp_path: Path) -> None:
    def broken(fh: BinaryIO) -> None:
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_private_file(tmp_path / "out.bin", broken, temp_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_unreadable_link_secret_is_replaced_once(tmp_path: Path) -> None:
    (tmp_path / "link-secret").write_text("not hex\n")
    secret = load_or_create_secret("", tmp_path)
    assert len(secret) == 32
    assert load_or_create_secret("", tmp_path) == secret
    assert stat.S_IMODE((tmp_path / "link-secret").stat().st_mode) == 0o600
