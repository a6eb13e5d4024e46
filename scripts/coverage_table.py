"""The combined coverage as a per-package table, the total, the least-covered modules, and the baseline check.

Run after `coverage combine` (scripts/run-tests.sh --coverage does both). The figure is
coverage.py's own total: statements and branches together (branch = true). With
--baseline FILE it fails (exit 1) when the total is more than 1 point below the figure
in FILE; --write-baseline FILE records the current total there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import coverage

ALLOWED_DROP = 1.0


def _percent(covered: int, total: int) -> float:
    return 100.0 * covered / total if total else 100.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", type=Path, help="fail if the total drops more than 1 point below this file's")
    parser.add_argument("--write-baseline", type=Path, help="write the total to this file")
    parser.add_argument("--least", type=int, default=5, help="how many least-covered modules to list")
    args = parser.parse_args()

    cov = coverage.Coverage()
    cov.load()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        total = cov.json_report(outfile=str(out))
        files = json.loads(out.read_text())["files"]

    packages: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # statements, covered, branches, covered
    modules = []
    for name, data in files.items():
        s = data["summary"]
        counts = (s["num_statements"], s["covered_lines"], s.get("num_branches", 0), s.get("covered_branches", 0))
        row = packages[str(Path(name).parent)]
        for i, n in enumerate(counts):
            row[i] += n
        modules.append((_percent(counts[1] + counts[3], counts[0] + counts[2]), counts[0], name))

    print(f"\n{'package':<28} {'statements':>10} {'missed':>7} {'branches':>9} {'partial/missed':>15} {'cover':>7}")
    for name in sorted(packages):
        st, cst, br, cbr = packages[name]
        print(f"{name:<28} {st:>10} {st - cst:>7} {br:>9} {br - cbr:>15} {_percent(cst + cbr, st + br):>6.1f}%")
    print(f"{'TOTAL (lines and branches)':<28} {'':>10} {'':>7} {'':>9} {'':>15} {total:>6.1f}%")
    print("\nleast covered modules (of at least 20 statements):")
    for pct, statements, name in sorted(m for m in modules if m[1] >= 20)[: args.least]:
        print(f"  {pct:5.1f}%  {statements:>5} statements  {name}")

    if args.write_baseline:
        args.write_baseline.write_text(f"{total:.1f}\n")
        print(f"\nbaseline written: {total:.1f}% -> {args.write_baseline}")
    if args.baseline:
        baseline = float(args.baseline.read_text().split()[0])
        if total < baseline - ALLOWED_DROP:
            print(f"\ncoverage {total:.1f}% is more than {ALLOWED_DROP} point below the baseline {baseline:.1f}% "
                  f"({args.baseline}); add tests, or lower the baseline in the same change and say why")
            return 1
        print(f"\ncoverage {total:.1f}% (baseline {baseline:.1f}%, allowed drop {ALLOWED_DROP} point)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
