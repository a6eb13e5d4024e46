"""Per-job CPU of one document, by process and by function (issue 26 item 6).

    .venv/bin/export-worker bench jobcpu                 # the light page, 150 jobs, with py-spy
    .venv/bin/python -m bench.jobcpu --doc small --jobs 200 --no-profile

One supervisor (the end-to-end case's: real children, MAX_CONCURRENT_RENDERS of them)
runs in a spawned process. Once its children are idle, the jobs are created in one
transaction and drained; the CPU time (utime + stime from /proc) of every process of the
supervisor's tree, and of the PostgreSQL backends connected to the bench's database,
is read before and after, and divided by the jobs. A second drain of the same jobs runs
under ``py-spy record --subprocesses --nonblocking`` (the supervisor and its Python
children; the driver and Chromium are native): samples per function, in ms per job.
Then the bare warm-page loop (bench/browsers.py, ``bare``: Playwright's defaults, no
routing, no tagged PDF or outline) renders the same document in the same number of
lanes, measured the same way: what printing costs without the product around it.

"Outside Chromium" is the supervisor, the child's Python, the Playwright driver and
PostgreSQL. py-spy counts a thread that waits for a core as busy: under load, its
figures are upper bounds; the /proc figures are not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench.stats import load
from shared.chromium import configured_browser

OUTSIDE_CHROMIUM = ("supervisor", "python child", "playwright driver", "postgresql backends")
PROFILED = ("supervisor", "python child")
PROJECT = ("supervisor/", "render_child/", "shared/")
RATE = 200  # py-spy samples per second
IDLE_S = 10.0  # the idle window, before the drains
SPY_ATTACH_S = 2.0  # time given py-spy to find the supervisor's children before the jobs are created
# Leaf frames that wait (py-spy's own idle test misses some under load): not counted.
WAITS = frozenset({"EpollSelector.select", "PollSelector.select", "Condition.wait", "Event.wait", "_worker",
                   "Connection._recv", "Connection._poll", "Connection.poll", "Lock.acquire", "Queue.get"})
_PROCESS_FRAME = re.compile(r'process (\d+):"[^"]*";?')
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")


# ---- processes and their CPU ------------------------------------------------------------------


def chromium_role(proc: psutil.Process, root_pid: int) -> str:
    """One name per kind of process under a render child (or a bare lane) rooted at `root_pid`."""
    from bench.memsplit import role

    name = role(proc, root_pid)
    if name == "playwright node driver":
        return "playwright driver"
    if name.startswith("zygote"):
        return "chromium zygote and ended renderers"
    if name.startswith("utility"):
        return "chromium utility"
    if name in ("renderer", "gpu-process"):
        return "chromium " + name.removesuffix("-process")
    return name if name in ("python child", "chromium browser") else "other"


def tree_roles(root_pid: int) -> dict[int, str]:
    """Every process under a render child or a bare lane, by role."""
    roles = {root_pid: "python child"}
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process(root_pid).children(recursive=True):
            roles[proc.pid] = chromium_role(proc, root_pid)
    return roles


def supervisor_roles(sup_pid: int) -> dict[int, str]:
    """The supervisor, its render children and their trees; a Python helper without children
    (multiprocessing's resource tracker) is "other"."""
    roles = {sup_pid: "supervisor"}
    for child in psutil.Process(sup_pid).children():
        with contextlib.suppress(psutil.Error):
            roles.update(tree_roles(child.pid) if child.children() else {child.pid: "other"})
    return roles


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime per process; a zygote's also counts the renderers it has reaped, since
    with a context per job each renderer ends with its job and its CPU would be lost."""
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            t = proc.cpu_times()
            out[pid] = t.user + t.system
            if "--type=zygote" in proc.cmdline():
                out[pid] += t.children_user + t.children_system
    return out


def per_role_ms(roles: dict[int, str], before: dict[int, float], after: dict[int, float],
                jobs: int) -> dict[str, float]:
    """CPU ms per job by role; a process born during the run counts from zero, one that died is lost."""
    out: dict[str, float] = defaultdict(float)
    for pid, end in after.items():
        out[roles.get(pid, "other")] += (end - before.get(pid, 0.0)) * 1000 / jobs
    return dict(out)


# ---- one drain --------------------------------------------------------------------------------


def backend_pids(conn: psycopg.Connection[Any]) -> list[int]:
    """This database's PostgreSQL backends, the caller's own left out."""
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND pid <> pg_backend_pid()").fetchall()
    return [int(r[0]) for r in rows]


def create_jobs(conn: psycopg.Connection[Any], payload: dict[str, Any], jobs: int) -> str:
    """`jobs` jobs of one new user, visible at once; the user."""
    from bench.jobs import create_burst

    user = str(uuid.uuid4())
    create_burst(conn, [user], payload, jobs)
    return user


def wait_done(conn: psycopg.Connection[Any], user: str, jobs: int, timeout: float = 900) -> tuple[int, float]:
    """Completed jobs and the drain's wall time (first start to last completion, server clock)."""
    deadline = time.monotonic() + timeout
    query = ("SELECT count(*) FILTER (WHERE status IN ('completed','failed','cancelled')),"
             " count(*) FILTER (WHERE status = 'completed'),"
             " extract(epoch FROM max(completed_at) - min(started_at))::float8 FROM export_jobs WHERE user_id = %s")
    while True:
        done, ok, wall = conn.execute(query, (user,)).fetchone()  # type: ignore[misc]
        if done >= jobs or time.monotonic() > deadline:
            return int(ok), float(wall or 0.0)
        time.sleep(0.2)


def drain(conn: psycopg.Connection[Any], sup_pid: int, payload: dict[str, Any], jobs: int) -> dict[str, Any]:
    """Create and drain `jobs` jobs; the CPU per job of every role meanwhile."""
    roles = supervisor_roles(sup_pid)
    backends = backend_pids(conn)
    before_load = load()
    before = cpu_seconds([*roles, *backends])
    user = create_jobs(conn, payload, jobs)
    completed, wall = wait_done(conn, user, jobs)
    backends = sorted({*backends, *backend_pids(conn)})
    roles = {**roles, **supervisor_roles(sup_pid), **dict.fromkeys(backends, "postgresql backends")}
    after = cpu_seconds(list(roles))
    return {"jobs": jobs, "completed": completed, "wall_s": wall, "per_s": completed / wall if wall else 0.0,
            "cpu_ms": per_role_ms(roles, before, after, jobs), "load_before": before_load, "load_after": load()}


def idle(conn: psycopg.Connection[Any], sup_pid: int, seconds: float = IDLE_S) -> dict[str, float]:
    """CPU ms per second by role with no job at all: the time-based part (the watchdog's ticks,
    heartbeats, polls), which a per-job figure carries in proportion to 1 / jobs per second."""
    roles = {**supervisor_roles(sup_pid), **dict.fromkeys(backend_pids(conn), "postgresql backends")}
    before = cpu_seconds(list(roles))
    time.sleep(seconds)
    after = cpu_seconds(list(roles))
    return {role: ms / seconds for role, ms in per_role_ms(roles, before, after, 1).items()}


def profiled_drain(conn: psycopg.Connection[Any], sup_pid: int, payload: dict[str, Any], jobs: int,
                   out: Path) -> dict[str, Any]:
    """The same drain under py-spy (supervisor and its Python children); samples by function."""
    spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(sup_pid),
                            "--subprocesses", "--nonblocking", "--rate", str(RATE), "--format", "raw",
                            "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(SPY_ATTACH_S)  # py-spy says nothing when attached unless on a terminal
    result = drain(conn, sup_pid, payload, jobs)
    spy.send_signal(signal.SIGINT)
    _, err = spy.communicate(timeout=60)
    if not out.exists():  # the /proc figures stand without it
        result["spy_error"] = f"py-spy wrote no samples (exit {spy.returncode}): {err.strip()[-500:]}"
        print(f"  {result['spy_error']}", file=sys.stderr, flush=True)
        return result
    result["functions"] = functions(out.read_text(encoding="utf-8"), supervisor_roles(sup_pid), jobs)
    return result


# ---- py-spy's samples by function -------------------------------------------------------------


def _frame(text: str) -> tuple[str, str]:
    """``func (file:line)`` -> (func, file)."""
    m = _FRAME.match(text)
    return (m.group(1), m.group(2)) if m else (text, "")


def functions(raw: str, roles: dict[int, str], jobs: int, top: int = 12) -> dict[str, dict[str, Any]]:
    """Per profiled role: ms per job in all, by leaf function (self), and by project function
    (inclusive: every supervisor/, render_child/ or shared/ frame on the stack); waits left out."""
    own: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    total: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        # A process frame quotes its command line, which may hold ";" (spawn's "-c" does)
        pids = [int(pid) for pid in _PROCESS_FRAME.findall(stack)]
        frames = _PROCESS_FRAME.sub("", stack).split(";")
        role = roles.get(pids[-1], "other") if pids else "supervisor"  # no --subprocesses: the one process
        code = [_frame(f) for f in frames if f and not f.startswith("thread ")]
        if not code or code[-1][0] in WAITS:
            continue
        n = int(count)
        total[role] += n
        func, file = code[-1]
        own[role][f"{func} ({file})"] += n
        for name in {f"{func} ({file})" for func, file in code if file.startswith(PROJECT)}:
            inclusive[role][name] += n
    scale = 1000 / RATE / jobs
    return {role: {"total_ms": total[role] * scale,
                   "self": [(name, n * scale) for name, n in own[role].most_common(top)],
                   "inclusive": [(name, n * scale) for name, n in inclusive[role].most_common(top)]}
            for role in PROFILED}


# ---- the bare loop, measured the same way -----------------------------------------------------


def bare(executable: str, html: dict[str, str], doc: str, lanes: int, jobs: int) -> dict[str, Any]:
    """The bare warm-page loop's CPU per PDF by role (its Python lane counts as "python child")."""
    from bench.browsers import LaneMode, Lanes

    runner = Lanes(LaneMode.BARE, lanes, executable, html)
    try:
        roles: dict[int, str] = {}
        for proc in runner.procs:
            assert proc.pid is not None
            roles.update(tree_roles(proc.pid))
        before_load = load()
        before = cpu_seconds(list(roles))
        res = runner.run(doc, jobs)
        after = cpu_seconds(list(roles))
    finally:
        runner.close()
    return {"jobs": jobs, "per_s": res["per_s"], "wall_s": res["wall_s"],
            "cpu_ms": per_role_ms(roles, before, after, jobs), "load_before": before_load}


# ---- the command ------------------------------------------------------------------------------


def run(settings: Any, *, doc: str = "light", jobs: int = 150, profile: bool = True,
        spy_out: Path | None = None) -> dict[str, Any]:
    from bench.capacity import supervisor_main
    from bench.docs import ImageServer, documents, payload_html
    from bench.run import ADMIN_URL, DB_NAME, bench_settings, recreate_database
    from supervisor.queue.migrate import sync_queue_settings

    lanes = settings.worker.max_concurrent_renders
    with tempfile.TemporaryDirectory(prefix="ew-jobcpu-") as tmp, ImageServer() as images:
        payloads = documents(images.port)
        url = recreate_database(migrate_it=True)
        s = bench_settings(settings, url, Path(tmp) / "data", images.port)
        sync_queue_settings(url, s)
        ctx = multiprocessing.get_context("spawn")
        ready, stop = ctx.Event(), ctx.Event()
        proc = ctx.Process(target=supervisor_main, args=(url, s, 0, ready, stop, False))
        proc.start()
        result: dict[str, Any] = {"doc": doc, "lanes": lanes}
        try:
            if not ready.wait(300):
                raise RuntimeError("the supervisor's children did not become idle in 300 s")
            assert proc.pid is not None
            with psycopg.connect(url, autocommit=True) as conn:
                result["idle_ms_per_s"] = idle(conn, proc.pid)
                result["pipeline"] = drain(conn, proc.pid, payloads[doc], jobs)
                if profile:
                    result["profiled"] = profiled_drain(conn, proc.pid, payloads[doc], jobs,
                                                       spy_out or Path(tmp) / "spy.txt")
        finally:
            stop.set()
            proc.join(120)
            if proc.is_alive():
                proc.kill()
        html = {name: payload_html(p) for name, p in payloads.items()}
        result["bare"] = bare(configured_browser(settings.render).executable_path,
                              html, doc, lanes, jobs)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    return result


def table(r: dict[str, Any]) -> str:
    """The per-role table (pipeline against the bare loop) and the function tables, as Markdown."""
    pipe, ref = r["pipeline"], r["bare"]
    roles = sorted({*pipe["cpu_ms"], *ref["cpu_ms"]}, key=lambda k: -pipe["cpu_ms"].get(k, 0.0))
    lines = [f"CPU per job, {r['doc']}: pipeline {pipe['completed']}/{pipe['jobs']} jobs at {pipe['per_s']:.1f}/s "
             f"(load {pipe['load_before'][0]:.1f} before, {pipe['load_after'][0]:.1f} after); bare loop "
             f"{ref['per_s']:.1f}/s (load {ref['load_before'][0]:.1f}); {r['lanes']} lanes", "",
             "| process | pipeline ms/job | bare loop ms/job | pipeline idle, ms/s |", "|---|---:|---:|---:|"]
    idle_ms = r.get("idle_ms_per_s", {})
    lines += [f"| {k} | {pipe['cpu_ms'].get(k, 0.0):.1f} | {ref['cpu_ms'].get(k, 0.0):.1f} | "
              f"{idle_ms.get(k, 0.0):.1f} |" for k in roles]
    for label, keep in (("outside Chromium", True), ("Chromium", False), ("all", None)):
        a, b, c = (sum(v for k, v in x.items() if keep is None or (k in OUTSIDE_CHROMIUM) == keep)
                   for x in (pipe["cpu_ms"], ref["cpu_ms"], idle_ms))
        lines.append(f"| **{label}** | **{a:.1f}** | **{b:.1f}** | **{c:.1f}** |")
    prof = r.get("profiled")
    if prof:
        lines += ["", f"py-spy, {prof['completed']} jobs at {prof['per_s']:.1f}/s (load "
                  f"{prof['load_before'][0]:.1f}), {RATE} Hz, ms per job:"]
        for role, f in prof.get("functions", {}).items():
            lines += ["", f"| {role}: {f['total_ms']:.1f} ms/job | self ms | project function | inclusive ms |",
                      "|---|---:|---|---:|"]
            rows = max(len(f["self"]), len(f["inclusive"]))
            pad = [("", 0.0)] * rows
            for (a, x), (b, y) in zip([*f["self"], *pad][:rows], [*f["inclusive"], *pad][:rows], strict=True):
                lines.append(f"| {a} | {x:.2f} | {b} | {y:.2f} |")
    return "\n".join(lines)


def run_jobcpu_command(settings: Any, *, jobs: int, out: Path, doc: str = "light", profile: bool = True,
                       spy_out: Path | None = None) -> int:
    """`export-worker bench jobcpu [--jobs N] [--out FILE]`: the tables, and the JSON in `out`."""
    result = run(settings, doc=doc, jobs=jobs, profile=profile, spy_out=spy_out)
    print(table(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"\nJSON written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from shared.config import load_settings

    ap = argparse.ArgumentParser(prog="python -m bench.jobcpu", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--doc", default="light", choices=("light", "small", "medium", "large"))
    ap.add_argument("--jobs", type=int, default=150)
    ap.add_argument("--no-profile", action="store_true", help="skip the py-spy drain")
    ap.add_argument("--spy-out", type=Path, help="keep py-spy's raw samples in this file")
    ap.add_argument("--out", type=Path, default=Path("bench/results/jobcpu.json"))
    ns = ap.parse_args(argv)
    return run_jobcpu_command(load_settings(), jobs=ns.jobs, out=ns.out, doc=ns.doc, profile=not ns.no_profile,
                              spy_out=ns.spy_out)


if __name__ == "__main__":
    sys.exit(main())
