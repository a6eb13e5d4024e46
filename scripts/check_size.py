"""The size rules of the product code, checked by `make lint` (issue 25 item 7).

- no class over 200 lines;
- no function over 50 lines, except declarative tables;
- no radon grade worse than C (cyclomatic complexity above 20).

A declarative table is recognised by shape: a class whose body only declares
fields (a settings section, a message), or a function that only returns or
assigns one literal. Anything else over a limit fails the run, unless it is in
UNDER_REWRITE: files other work is rewriting now, each listed with its owner, to
be emptied once that work has landed. Prints one line a finding:
``path:line: what (size) over the limit``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from radon.complexity import cc_rank, cc_visit

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("supervisor", "render_child", "shared", "bench")
MAX_CLASS_LINES = 200
MAX_FUNCTION_LINES = 50
WORST_GRADE = "C"

# path (from the repository root) -> who is rewriting it. Findings there are reported, not failed;
# empty it as that work lands (an entry whose file is gone fails the run, one without findings is named).
UNDER_REWRITE: dict[str, str] = {}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _lines(node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first decorator to the end of the body."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    return (node.end_lineno or first) - first + 1


def _body_without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return body[1:]
    return body


_LITERALS = (ast.Dict, ast.List, ast.Tuple, ast.Set, ast.Constant)


def is_declarative(node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A class of field declarations only, or a function that returns or assigns one literal."""
    body = _body_without_docstring(node.body)
    if isinstance(node, ast.ClassDef):
        return all(isinstance(stmt, ast.AnnAssign | ast.Assign | ast.Pass) for stmt in body)
    if len(body) != 1:
        return False
    stmt = body[0]
    value = stmt.value if isinstance(stmt, ast.Return | ast.Assign | ast.AnnAssign) else None
    return isinstance(value, _LITERALS)


def _qualified(tree: ast.Module) -> Iterator[tuple[str, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef]]:
    def walk(node: ast.AST, prefix: str) -> Iterator[tuple[str, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                yield name, child
                yield from walk(child, name + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def check_file(path: Path, relative: str) -> list[Finding]:
    source = path.read_text(encoding="utf-8")
    findings = []
    for name, node in _qualified(ast.parse(source, filename=relative)):
        size = _lines(node)
        if isinstance(node, ast.ClassDef):
            kind, limit = "class", MAX_CLASS_LINES
        else:
            kind, limit = "function", MAX_FUNCTION_LINES
        if size > limit and not is_declarative(node):
            findings.append(Finding(relative, node.lineno, f"{kind} {name} is {size} lines, over {limit}"))
    for block in cc_visit(source):
        grade = cc_rank(block.complexity)
        if grade > WORST_GRADE:
            what = f"{block.fullname} has radon grade {grade} (complexity {block.complexity}), worse than {WORST_GRADE}"
            findings.append(Finding(relative, block.lineno, what))
    return findings


def product_files(root: Path) -> Iterator[tuple[Path, str]]:
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            yield path, path.relative_to(root).as_posix()


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else ROOT
    findings = [f for path, relative in product_files(root) for f in check_file(path, relative)]
    failed = [f for f in findings if f.path not in UNDER_REWRITE]
    waived = [f for f in findings if f.path in UNDER_REWRITE]
    for finding in failed:
        print(finding)
    for finding in waived:
        print(f"{finding} [allowed while {UNDER_REWRITE[finding.path]} rewrites it]")
    problems = len(failed)
    for listed in UNDER_REWRITE:
        if not (root / listed).is_file():
            problems += 1
            print(f"scripts/check_size.py: UNDER_REWRITE names {listed}, which does not exist; remove it")
        elif all(f.path != listed for f in waived):
            print(f"scripts/check_size.py: {listed} is within the limits now; remove it from UNDER_REWRITE")
    print(f"size check: {problems} problems, {len(waived)} findings allowed while rewritten", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
