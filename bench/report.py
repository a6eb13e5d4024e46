"""The benchmark report: the results as Markdown tables, and the goals they are held to."""

from __future__ import annotations

from typing import Any


def _mb(b: float) -> str:
    return f"{b / 2**20:.0f} MB"


def _load(c: dict[str, Any]) -> str:
    return f"{c['load_before'][0]:.1f}" if c.get("load_before") else "-"


def null_row(nr: dict[str, Any]) -> str:
    """The null renderer's row (bench/run.py null_throughput)."""
    return (f"| null renderer, full supervisor | - | {nr['jobs']} | {nr['per_s'] * 60:.0f} | {nr['per_s']:.0f} "
            f"| - | - | - | - | {_load(nr)} |")


def peer_row(name: str, peer: dict[str, Any]) -> str:
    if peer.get("status") != "measured":
        return f"| {name} no-op drain (peer) | - | - | - | {peer.get('status')} | - | - | - | - | - |"
    return (f"| {name} {peer['version']} no-op drain (peer, concurrency {peer['concurrency']}) | - | "
            f"{peer['jobs']} | {peer['per_s'] * 60:.0f} | {peer['per_s']:.0f} | - | - | - | - | {_load(peer)} |")


# Issue 26's goals: the pipeline's share of the best-of-three bare loop, per document.
SHARE_OF_BARE_GOALS = {"light": 0.85, "small": 0.90, "medium": 0.80, "large": 0.85}


def share_of_bare(r: dict[str, Any], name: str, ceiling: str = "ceiling") -> float | None:
    """End to end jobs/s over a bare loop's (best of runs) for one document, when both ran:
    ``ceiling`` (a warm page) or ``ceiling_context`` (a fresh context per job, the isolation
    the product keeps)."""
    e2e = r["end_to_end"]["cases"].get(name)
    ceil = r.get(ceiling, {}).get(name)
    if not e2e or not ceil or not ceil["per_s"]:
        return None
    return float(e2e["per_s"] / ceil["per_s"])


def goals(r: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    e2e = r["end_to_end"]["cases"]["small"]["per_s"]
    seed = r["browser_per_job"]["small"]["per_s"]
    mem = r["memory"]
    null = r["null_renderer"]["per_s"]
    pgq = r.get("peers", {}).get("pgqueuer", {})
    shares = [(name, share_of_bare(r, name), goal) for name, goal in SHARE_OF_BARE_GOALS.items()]
    shares_isolated = [(name, share_of_bare(r, name, "ceiling_context"), goal)
                       for name, goal in SHARE_OF_BARE_GOALS.items()]
    rows = [
        ("small PDFs/s end to end", f"{e2e:.1f}/s", ">= 20/s", e2e >= 20),
        *((f"end to end / bare ceiling ({name})", f"{100 * share:.0f}%", f">= {100 * goal:.0f}%", share >= goal)
          for name, share, goal in shares if share is not None),
        *((f"end to end / bare context-per-job ceiling ({name})", f"{100 * share:.0f}%", f">= {100 * goal:.0f}%",
           share >= goal) for name, share, goal in shares_isolated if share is not None),
        ("end to end / browser-per-job (small)", f"{e2e / seed:.1f}x", ">= 10x", e2e >= 10 * seed),
        ("pickup p50 (NOTIFY)", f"{r['pickup']['notify']['p50_ms']:.1f} ms", "<= 5 ms",
         r["pickup"]["notify"]["p50_ms"] <= 5),
        ("creation p99 (8 clients)", f"{r['creation']['p99_ms']:.1f} ms", "<= 10 ms", r["creation"]["p99_ms"] <= 10),
        ("null renderer", f"{null:.0f} jobs/s", ">= 1000 jobs/s", null >= 1000),
        *([("null renderer / pgqueuer drain", f"{null / pgq['per_s']:.2f}x", ">= 1.00x", null >= pgq["per_s"])]
          if pgq.get("per_s") else []),
        ("idle child tree PSS", _mb(mem["idle_child_tree_pss_bytes"]), "<= 230 MB",
         mem["idle_child_tree_pss_bytes"] <= 230 * 2**20),
        ("peak child tree PSS (small run)", _mb(mem["peak_child_tree_pss_bytes"]), "<= 400 MB",
         mem["peak_child_tree_pss_bytes"] <= 400 * 2**20),
        ("supervisor RSS", _mb(mem["supervisor_rss_bytes"]), "<= 80 MB", mem["supervisor_rss_bytes"] <= 80 * 2**20),
    ]
    page = r.get("console")
    if page:
        rows.append((f"slowest console page, best of {page['rounds']}, {page['jobs']:,} jobs",
                     f"{page['slowest_best_ms']:.0f} ms ({page['slowest_page']})", f"< {page['budget_ms']:.0f} ms",
                     page["slowest_best_ms"] < page["budget_ms"]))
    poison = r.get("poison")
    if poison:  # full runs only (bench/poison.py)
        rows.append(("normal jobs p95 beside a poison job / alone", f"{poison['ratio']:.2f}x", "<= 2.00x",
                     poison["ratio"] <= 2.0))
    box = r.get("container")
    if box:  # full runs only (bench/container.py)
        rows += container_goals(box)
    return rows


# Issue 26's memory goals: twice round 3's medium jobs/s per GiB (6.02/s at 1,376 MiB), and
# an idle container of the default configuration within 600 MiB.
MEDIUM_PER_GIB_GOAL = 9.0
IDLE_CONTAINER_GOAL_MIB = 600


def container_goals(box: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    shape = f"{box['children']} children x {box.get('slots_per_child', 1)} slots"
    rows = [(f"2 GiB container, {shape}, medium + large: claims never stopped",
             f"peak {box['peak_ratio']:.0%}, {box['ticks_over_high_water']} ticks over high water",
             "no stop", not box["claims_stopped"]),
            (f"idle container PSS ({shape})", _mb(box["idle_bytes"]), f"<= {IDLE_CONTAINER_GOAL_MIB} MiB",
             box["idle_bytes"] <= IDLE_CONTAINER_GOAL_MIB * 2**20)]
    medium = box["cases"].get("medium")
    if medium and box["peak_bytes"]:
        per_gib = medium["per_s"] / (box["peak_bytes"] / 2**30)
        rows.append((f"medium jobs/s per GiB of peak container PSS ({shape})",
                     f"{per_gib:.1f} ({medium['per_s']:.2f}/s at {_mb(box['peak_bytes'])})",
                     f">= {MEDIUM_PER_GIB_GOAL:.1f}", per_gib >= MEDIUM_PER_GIB_GOAL))
    return rows


CASE_ROWS = (("end to end (pipeline)", "end_to_end"),
             ("ceiling: bare warm page loop, best of runs", "ceiling"),
             ("ceiling under isolation: bare loop, a context per job, best of runs", "ceiling_context"),
             ("ceiling with the product's network policy", "ceiling_policy"),
             ("browser per job (seed)", "browser_per_job"))


def case_rows(r: dict[str, Any], docs: tuple[str, ...]) -> list[str]:
    """One row per document of each case: jobs/s, the share of both bare ceilings, p50, p95."""
    lines = []
    for label, key in CASE_ROWS:
        cases = r[key]["cases"] if key == "end_to_end" else r.get(key, {})
        for name in (d for d in docs if d in cases):
            c = cases[name]
            runs = "".join(f" ({', '.join(f'{x:.1f}' for x in c['runs_per_s'])})" for _ in [0] if "runs_per_s" in c)
            shares = [share_of_bare(r, name, ceiling) if key == "end_to_end" else None
                      for ceiling in ("ceiling", "ceiling_context")]
            lines.append(f"| {label} | {name} | {c['jobs']} | {c['per_min']:.0f} | {c['per_s']:.2f}{runs} | "
                         + "".join(f"{'-' if share is None else f'{100 * share:.0f}%'} | " for share in shares) +
                         f"{c['p50_s'] * 1000:.0f} ms | {c['p95_s'] * 1000:.0f} ms | {_load(c)} |")
    return lines


def table(r: dict[str, Any], docs: tuple[str, ...]) -> str:
    """The results as Markdown: the cases (each in ``docs``), the memory, the goals, the machine."""
    lines = [f"Parallelism: {r['parallelism']} (MAX_CONCURRENT_RENDERS); smoke={r['smoke']}", "",
             "| case | document | jobs | jobs/min | jobs/s | of bare | of bare context | p50 | p95 | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += case_rows(r, docs)
    p, cr, nr, mem = r["pickup"], r["creation"], r["null_renderer"], r["memory"]
    lines += [
        *(f"| browser per job (child's flags) | small | {c['jobs']} | {c['per_min']:.0f} | {c['per_s']:.2f} | - | - | "
          f"{c['p50_s'] * 1000:.0f} ms | {c['p95_s'] * 1000:.0f} ms | {_load(c)} |"
          for c in [r.get("browser_per_job_child_flags", {}).get("small")] if c),
        f"| pickup, NOTIFY (null child) | - | {p['notify']['samples']} | - | - | - | - | "
        f"{p['notify']['p50_ms']:.1f} ms | {p['notify']['p95_ms']:.1f} ms | {_load(p['notify'])} |",
        f"| pickup, polling only (null child) | - | {p['polling']['samples']} | - | - | - | - | "
        f"{p['polling']['p50_ms']:.0f} ms | {p['polling']['p95_ms']:.0f} ms | {_load(p['polling'])} |",
        f"| create_export_job, {cr['clients']} clients (p50 / p99) | - | {cr['calls']} | - | {cr['per_s']:.0f} "
        "| - | - | "
        f"{cr['p50_ms']:.2f} ms | p99 {cr['p99_ms']:.2f} ms | {_load(cr)} |",
        null_row(nr),
        *(peer_row(name, peer) for name, peer in r.get("peers", {}).items()),
        "",
        "| memory | value |", "|---|---:|",
        f"| idle child tree PSS (largest of {len(mem['idle_child_tree_pss_all'])}) | "
        f"{_mb(mem['idle_child_tree_pss_bytes'])} |",
        *(f"| &nbsp;&nbsp;of which {name} | {_mb(pss)} |"
          for name, pss in sorted(mem.get("idle_child_split", {}).items(), key=lambda kv: -kv[1])),
        f"| supervisor RSS (idle, children ready) | {_mb(mem['supervisor_rss_bytes'])} |",
        f"| supervisor RSS (after the end-to-end run) | {_mb(mem['supervisor_rss_after_bytes'])} |",
        f"| peak child tree PSS during end to end | {_mb(mem['peak_child_tree_pss_bytes'])} |",
        f"| peak PSS of all children together | {_mb(mem['peak_children_total_pss_bytes'])} |",
        "", "| goal | measured | goal | met |", "|---|---:|---:|---|",
    ]
    for name, value, goal, met in goals(r):
        lines.append(f"| {name} | {value} | {goal} | {'yes' if met else 'no'} |")
    m = r["machine"]
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM, Python {m['python']}, "
              f"Chromium {m['chromium']}. Total bench time {r['total_s']:.0f} s."]
    return "\n".join(lines)
