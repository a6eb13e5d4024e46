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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--children", type=int, default=3)
    ap.add_argument("--settle", type=float, default=1.0)
    args = ap.parse_args()

    from render_child.canary import canary_job
    from render_child.main import child_entry
    from shared.messages import CHROMIUM_ARGS, FROM_CHILD_DECODER, TO_CHILD_ENCODER, ChildOptions, Stop

    scratch = tempfile.mkdtemp(prefix="memsplit-")
    extra = [a for a in os.environ.get("MEMSPLIT_ARGS", "").split("|") if a]
    ctx = multiprocessing.get_context("spawn")
    kids = []
    for i in range(args.children):
        opts = ChildOptions(child_index=i, worker_id="memsplit", executable_path="/usr/bin/chromium",
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
        while True:
            msg = FROM_CHILD_DECODER.decode(conn.recv_bytes())
            if type(msg).__name__ in ("Rendered", "RenderFailed"):
                assert type(msg).__name__ == "Rendered", msg
                break
    time.sleep(args.settle)
    totals = []
    uss_total: dict[int, int] = {}
    by_role: dict[str, list[int]] = defaultdict(list)
    for p, _ in kids:
        assert p.pid is not None
        pid: int = p.pid
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        total = 0
        rows = []
        for pr in procs:
            try:
                info = pr.memory_full_info()
                pss = info.pss
                uss_total[pid] = uss_total.get(pid, 0) + info.uss
            except psutil.Error:
                continue
            r = role(pr, pid)
            if r == "renderer":
                cmd = pr.cmdline()
                r += " webui" if "--top-chrome-webui" in cmd else ""
            rows.append((r, pss))
            by_role[r].append(pss)
            total += pss
        totals.append(total)
        print(f"child {pid}: {len(rows)} processes, tree PSS {total / 2**20:.1f} MB")
        for r, pss in rows:
            print(f"    {r:40s} {pss / 2**20:7.1f} MB")
    print(f"tree PSS per child: {[round(t / 2**20, 1) for t in totals]}  max {max(totals) / 2**20:.1f} MB"
          f"  (tree USS {[round(u / 2**20, 1) for u in uss_total.values()]})")
    for r, v in sorted(by_role.items(), key=lambda kv: -sum(kv[1])):
        print(f"  {r:40s} mean {sum(v) / len(v) / 2**20:7.1f} MB  x{len(v)}")
    for _, conn in kids:
        conn.send_bytes(TO_CHILD_ENCODER.encode(Stop()))
    for p, _ in kids:
        p.join(10)
        if p.is_alive():
            p.kill()


if __name__ == "__main__":
    main()
