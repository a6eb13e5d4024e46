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
            f"| - | - | - | {_load(nr)} |")


def peer_row(name: str, peer: dict[str, Any]) -> str:
    if peer.get("status") != "measured":
        return f"| {name} no-op drain (peer) | - | - | - | {peer.get('status')} | - | - | - | - |"
    return (f"| {name} {peer['version']} no-op drain (peer, concurrency {peer['concurrency']}) | - | "
            f"{peer['jobs']} | {peer['per_s'] * 60:.0f} | {peer['per_s']:.0f} | - | - | - | {_load(peer)} |")


# Issue 26's goals: the pipeline's share of the best-of-three bare loop, per document.
SHARE_OF_BARE_GOALS = {"light": 0.85, "small": 0.90, "medium": 0.80, "large": 0.85}


def share_of_bare(r: dict[str, Any], name: str) -> float | None:
    """End to end jobs/s over the bare loop's (best of runs) for one document, when both ran."""
    e2e = r["end_to_end"]["cases"].get(name)
    ceil = r["ceiling"].get(name)
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
    rows = [
        ("small PDFs/s end to end", f"{e2e:.1f}/s", ">= 20/s", e2e >= 20),
        *((f"end to end / bare ceiling ({name})", f"{100 * share:.0f}%", f">= {100 * goal:.0f}%", share >= goal)
          for name, share, goal in shares if share is not None),
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
        rows.append(("2 GiB container, 3 children, medium + large: claims never stopped",
                     f"peak {box['peak_ratio']:.0%}, {box['ticks_over_high_water']} ticks over high water",
                     "no stop", not box["claims_stopped"]))
    return rows


def table(r: dict[str, Any], docs: tuple[str, ...]) -> str:
    """The results as Markdown: the cases (each in ``docs``), the memory, the goals, the machine."""
    lines = [f"Parallelism: {r['parallelism']} (MAX_CONCURRENT_RENDERS); smoke={r['smoke']}", "",
             "| case | document | jobs | jobs/min | jobs/s | of bare | p50 | p95 | load |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, key in (("end to end (pipeline)", "end_to_end"),
                       ("ceiling: bare warm page loop, best of runs", "ceiling"),
                       ("ceiling with the product's network policy", "ceiling_policy"),
                       ("browser per job (seed)", "browser_per_job")):
        cases = r[key]["cases"] if key == "end_to_end" else r[key]
        for name in (d for d in docs if d in cases):
            c = cases[name]
            runs = "".join(f" ({', '.join(f'{x:.1f}' for x in c['runs_per_s'])})" for _ in [0] if "runs_per_s" in c)
            share = share_of_bare(r, name) if key == "end_to_end" else None
            lines.append(f"| {label} | {name} | {c['jobs']} | {c['per_min']:.0f} | {c['per_s']:.2f}{runs} | "
                         f"{'-' if share is None else f'{100 * share:.0f}%'} | "
                         f"{c['p50_s'] * 1000:.0f} ms | {c['p95_s'] * 1000:.0f} ms | {_load(c)} |")
    p, cr, nr, mem = r["pickup"], r["creation"], r["null_renderer"], r["memory"]
    lines += [
        *(f"| browser per job (child's flags) | small | {c['jobs']} | {c['per_min']:.0f} | {c['per_s']:.2f} | - | "
          f"{c['p50_s'] * 1000:.0f} ms | {c['p95_s'] * 1000:.0f} ms | {_load(c)} |"
          for c in [r.get("browser_per_job_child_flags", {}).get("small")] if c),
        f"| pickup, NOTIFY (null child) | - | {p['notify']['samples']} | - | - | - | "
        f"{p['notify']['p50_ms']:.1f} ms | {p['notify']['p95_ms']:.1f} ms | {_load(p['notify'])} |",
        f"| pickup, polling only (null child) | - | {p['polling']['samples']} | - | - | - | "
        f"{p['polling']['p50_ms']:.0f} ms | {p['polling']['p95_ms']:.0f} ms | {_load(p['polling'])} |",
        f"| create_export_job, {cr['clients']} clients (p50 / p99) | - | {cr['calls']} | - | {cr['per_s']:.0f} | - | "
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
