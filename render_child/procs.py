"""The child's view of its Chromium processes, from /proc: the browser process and the
renderers, so each job can name the renderer that draws its page.

Read through the kernel's per-thread children lists (shared/proc_children.py, as the watchdog does),
not psutil's scan of every process on the machine: a few reads per process.
"""

from __future__ import annotations

from shared.proc_children import children_of, threads_of


def _children(pid: int) -> list[int]:
    return [kid for tid in threads_of(pid) for kid in children_of(pid, tid)]


def descendants(root: int) -> list[int]:
    """Every process under ``root`` (not ``root`` itself); [] when it is gone."""
    found: list[int] = []
    todo = [root]
    while todo:
        for kid in _children(todo.pop()):
            if kid not in found:
                found.append(kid)
                todo.append(kid)
    return found


def _cmdline(pid: int) -> list[str]:
    """A process's arguments. Chromium's zygote children rewrite theirs as one string
    (setproctitle): split on spaces then, as ps does."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            parts = [part.decode("utf-8", "replace") for part in fh.read().split(b"\0") if part]
    except OSError:
        return []
    return parts[0].split(" ") if len(parts) == 1 else parts


def browser_pid(root: int) -> int:
    """The Chromium browser process under ``root`` (Playwright drives it over a pipe), or 0."""
    for pid in descendants(root):
        args = _cmdline(pid)
        if "--remote-debugging-pipe" in args and not any(a.startswith("--type=") for a in args):
            return pid
    return 0


_zygotes: dict[int, list[int]] = {}  # browser pid -> its zygotes (they live as long as it does)


def renderer_pids(browser: int) -> set[int]:
    """The browser's renderer processes now (empty when it is gone or not known).

    Renderers are forked by Chromium's zygote from its one thread: a few reads per job
    (the zygotes are found once), not a walk of every thread of the tree."""
    if not browser:
        return set()
    zygotes = _zygotes.get(browser)
    if zygotes is None:
        zygotes = [pid for pid in _children(browser) if "--type=zygote" in _cmdline(pid)]
        if zygotes:
            _zygotes[browser] = zygotes
    kids = [kid for zygote in zygotes for kid in children_of(zygote, zygote)] if zygotes else descendants(browser)
    return {pid for pid in kids if "--type=renderer" in _cmdline(pid)}
