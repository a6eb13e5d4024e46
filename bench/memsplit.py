"""Per-process PSS split of idle render children (diagnostic, not part of `bench`).

Spawns N real render children (render_child.main.child_entry, the supervisor's
CHROMIUM_ARGS), sends each the canary job, waits, then prints every process of
each child's tree with its role and PSS (psutil memory_full_info().pss).

    .venv/bin/python -m bench.memsplit [--children 3] [--settle 1.0]

MEMSPLIT_ARGS="--flag|--other" adds Chromium switches (merged like the child's own);
NODE_OPTIONS is passed on to the Playwright driver. PSS depends on what else maps the
same pages (other Chromiums on the machine lower it), so compare runs made back to back;
the tree USS printed beside it does not have that noise.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from collections import defaultdict
from typing import Any

import msgspec
import psutil


def role(proc: psutil.Process, root_pid: int) -> str:
    if proc.pid == root_pid:
        return "python child"
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    exe = os.path.basename(cmd[0]) if cmd else proc.name()
    if "node" in exe:
        return "playwright node driver"
    t = next((a.split("=", 1)[1] for a in cmd if a.startswith("--type=")), None)
    if t is None:
        return "chromium browser"
    if t == "zygote":
        return "zygote" + (" (no-sandbox)" if "--no-zygote-sandbox" in cmd else "")
    if t == "utility":
        sub = next((a.split("=", 1)[1] for a in cmd if a.startswith("--utility-sub-type=")), "")
        return f"utility {sub}"
    return t


def start_children(count: int, scratch: str, extra: list[str]) -> list[tuple[Any, Any]]:
    """`count` real render children (the child's entry point, the supervisor's CHROMIUM_ARGS
    plus `extra`), each past its canary render; (process, pipe) pairs."""
    from render_child.canary import canary_job
    from render_child.main import child_entry
    from shared.chromium import configured_browser
    from shared.config import RenderSettings
    from shared.messages import CHROMIUM_ARGS, FROM_CHILD_DECODER, TO_CHILD_ENCODER, ChildOptions

    ctx = multiprocessing.get_context("spawn")
    kids = []
    executable = configured_browser(RenderSettings()).executable_path
    for i in range(count):
        opts = ChildOptions(child_index=i, worker_id="memsplit", executable_path=executable,
                            chromium_args=[*CHROMIUM_ARGS, *extra], log_level="warning", scratch_dir=scratch)
        parent, child = ctx.Pipe()
        p = ctx.Process(target=child_entry, args=(child, msgspec.msgpack.encode(opts)), daemon=True)
        p.start()
        child.close()
        kids.append((p, parent))
    for p, conn in kids:
        msg = FROM_CHILD_DECODER.decode(conn.recv_bytes())
        assert type(msg).__name__ == "Ready", msg
        conn.send_bytes(TO_CHILD_ENCODER.encode(canary_job(os.path.join(scratch, f"c{p.pid}.pdf"))))
        while type(msg).__name__ not in ("Rendered", "RenderFailed"):
            msg = FROM_CHILD_DECODER.decode(conn.recv_bytes())
        assert type(msg).__name__ == "Rendered", msg
    return kids


def tree_split(pid: int) -> tuple[list[tuple[str, int]], int]:
    """One child's tree: (role, PSS) per process, and the tree's USS."""
    root = psutil.Process(pid)
    rows = []
    uss = 0
    for pr in [root, *root.children(recursive=True)]:
        try:
            info = pr.memory_full_info()
            name = role(pr, pid)
            if name == "renderer" and "--top-chrome-webui" in pr.cmdline():
                name += " webui"
        except psutil.Error:
            continue
        uss += info.uss
        rows.append((name, info.pss))
    return rows, uss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--children", type=int, default=3)
    ap.add_argument("--settle", type=float, default=1.0)
    args = ap.parse_args()

    from shared.messages import TO_CHILD_ENCODER, Stop

    scratch = tempfile.mkdtemp(prefix="memsplit-")
    kids = start_children(args.children, scratch, [a for a in os.environ.get("MEMSPLIT_ARGS", "").split("|") if a])
    time.sleep(args.settle)
    totals, uss_totals = [], []
    by_role: dict[str, list[int]] = defaultdict(list)
    for p, _ in kids:
        assert p.pid is not None
        rows, uss = tree_split(p.pid)
        totals.append(sum(pss for _, pss in rows))
        uss_totals.append(uss)
        print(f"child {p.pid}: {len(rows)} processes, tree PSS {totals[-1] / 2**20:.1f} MB")
        for name, pss in rows:
            by_role[name].append(pss)
            print(f"    {name:40s} {pss / 2**20:7.1f} MB")
    print(f"tree PSS per child: {[round(t / 2**20, 1) for t in totals]}  max {max(totals) / 2**20:.1f} MB"
          f"  (tree USS {[round(u / 2**20, 1) for u in uss_totals]})")
    for name, v in sorted(by_role.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {name:40s} mean {sum(v) / len(v) / 2**20:7.1f} MB  x{len(v)}")
    for _, conn in kids:
        conn.send_bytes(TO_CHILD_ENCODER.encode(Stop()))
    for p, _ in kids:
        p.join(10)
        if p.is_alive():
            p.kill()


if __name__ == "__main__":
    main()
