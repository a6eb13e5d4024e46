"""scripts/check_size.py, which `make lint` runs: what it counts, what it lets through."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("check_size", ROOT / "scripts" / "check_size.py")
assert _spec is not None and _spec.loader is not None
check_size = importlib.util.module_from_spec(_spec)
sys.modules["check_size"] = check_size
_spec.loader.exec_module(check_size)


def findings(tmp_path: Path, source: str) -> list[str]:
    path = tmp_path / "sample.py"
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return [f.what for f in check_size.check_file(path, "sample.py")]


def test_a_long_function_and_a_long_method_are_named(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(50))
    method = "".join(f"        x{i} = {i}\n" for i in range(50))
    source = f"def long():\n{body}    return x0\n\nclass C:\n    def m(self):\n{method}"
    assert findings(tmp_path, source) == ["function long is 52 lines, over 50", "function C.m is 51 lines, over 50"]


def test_a_long_class_is_named_unless_it_only_declares_fields(tmp_path: Path) -> None:
    methods = "".join(f"    def m{i}(self):\n        return {i}\n\n" for i in range(70))
    fields = "".join(f"    f{i}: int = {i}\n" for i in range(210))
    found = findings(tmp_path, f"class Big:\n{methods}\nclass Fields:\n{fields}")
    assert found == ["class Big is 210 lines, over 200"]


def test_a_function_returning_one_literal_is_a_declarative_table(tmp_path: Path) -> None:
    rows = "".join(f"        {i!r}: 'row {i}',\n" for i in range(60))
    assert findings(tmp_path, f"def table():\n    return {{\n{rows}    }}\n") == []


def test_a_radon_grade_worse_than_c_is_named(tmp_path: Path) -> None:
    branches = "".join(f"    if x == {i}:\n        return {i}\n" for i in range(21))
    assert findings(tmp_path, f"def branchy(x):\n{branches}    return -1\n") == [
        "branchy has radon grade D (complexity 22), worse than C"]

