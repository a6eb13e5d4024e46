"""The child's life: crash recovery, test templates, busy loops, Stop, a closed pipe, boot failure."""

from __future__ import annotations

import time

import pytest
from render_helpers import (
    chromium_processes,
    kill_tree,
    make_job,
    processes_using,
    requires_chromium,
    running_child,
    spawn_child,
    user_data_dirs,
)

from shared.messages import (
    EX_BOOT_FAILED,
    EX_PARENT_GONE,
    EX_RECYCLE,
    Rendered,
    RenderFailed,
    RenderLimits,
    Stop,
)
from shared.payload import TestTemplateSource as TemplateSource

pytestmark = [pytest.mark.timeout(300), pytest.mark.chromium, requires_chromium]


def test_crash_is_transient_and_the_child_recovers() -> None:
    with running_child() as child:
        crash = make_job(TemplateSource(name="crash-renderer"), child.scratch, allow_test_templates=True)
        answer = child.render(crash)
        assert isinstance(answer, RenderFailed), answer
        assert answer.category == "transient"
        assert "crash" in answer.message.lower()
        for _ in range(2):
            after = child.render(make_job("<h1>after the crash</h1>", child.scratch))
            assert isinstance(after, Rendered), after
        assert child.process.is_alive()


def test_test_templates_are_refused_unless_allowed() -> None:
    with running_child() as child:
        answer = child.render(make_job(TemplateSource(name="busy-loop"), child.scratch))
        assert isinstance(answer, RenderFailed)
        assert answer.category == "validation"


def test_busy_loop_keeps_the_child_busy_and_a_tree_kill_leaves_no_chromium() -> None:
    child = spawn_child()
    try:
        procs = chromium_processes(child.tree())
        dirs = user_data_dirs(procs)
        assert len(dirs) == 1
        busy = make_job(
            TemplateSource(name="busy-loop"),
            child.scratch,
            allow_test_templates=True,
            limits=RenderLimits(navigation_timeout_ms=50_000),
        )
        child.send(busy)
        with pytest.raises(TimeoutError):  # its page starts (Started), and then nothing comes
            child.recv(timeout=3.0)
        assert [s.job_id for s in child.started] == [busy.job_id]
        assert processes_using(next(iter(dirs)))
    finally:
        kill_tree(child)
    (user_data_dir,) = dirs
    deadline = time.monotonic() + 10
    while processes_using(user_data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_using(user_data_dir) == []
    assert not child.process.is_alive()


def test_stop_exits_with_recycle_and_closes_chromium() -> None:
    child = spawn_child()
    try:
        (user_data_dir,) = user_data_dirs(chromium_processes(child.tree()))
        child.send(Stop())
        child.process.join(20)
        assert child.process.exitcode == EX_RECYCLE
        assert processes_using(user_data_dir) == []
    finally:
        kill_tree(child)


def test_closed_pipe_exits_with_parent_gone_and_closes_chromium() -> None:
    child = spawn_child()
    try:
        (user_data_dir,) = user_data_dirs(chromium_processes(child.tree()))
        assert isinstance(child.render(make_job("<p>one</p>", child.scratch)), Rendered)
        child.conn.close()
        child.process.join(20)
        assert child.process.exitcode == EX_PARENT_GONE
        deadline = time.monotonic() + 5
        while processes_using(user_data_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_using(user_data_dir) == []
    finally:
        kill_tree(child)


def test_boot_failure_is_reported_and_exits() -> None:
    with pytest.raises(AssertionError, match="BootFailed") as info:
        spawn_child(executable_path="/nonexistent/chromium")
    assert "nonexistent" in str(info.value)


def test_boot_failure_exit_code() -> None:
    import multiprocessing

    import msgspec

    from render_child.main import child_entry
    from shared.messages import CHROMIUM_ARGS, FROM_CHILD_DECODER, BootFailed, ChildOptions

    ctx = multiprocessing.get_context("spawn")
    parent, child_conn = ctx.Pipe()
    options = ChildOptions(
        child_index=1,
        worker_id="t",
        executable_path="/nonexistent/chromium",
        chromium_args=list(CHROMIUM_ARGS),
        scratch_dir="/tmp",
    )
    proc = ctx.Process(target=child_entry, args=(child_conn, msgspec.msgpack.encode(options)))
    proc.start()
    child_conn.close()
    try:
        assert parent.poll(45)
        msg = FROM_CHILD_DECODER.decode(parent.recv_bytes())
        assert isinstance(msg, BootFailed)
        proc.join(20)
        assert proc.exitcode == EX_BOOT_FAILED
    finally:
        if proc.is_alive():
            proc.kill()
        parent.close()


def test_a_killed_child_leaves_no_crash_handler_behind() -> None:
    """chrome_crashpad_handler re-parents itself to PID 1, out of reach of a tree kill:
    the child launches Chromium without it, so nothing of a killed child survives."""
    import psutil

    child = spawn_child()
    started = psutil.Process(child.process.pid).create_time()
    try:
        assert isinstance(child.render(make_job("<p>one render</p>", child.scratch)), Rendered)
    finally:
        kill_tree(child)

    def handlers() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["name", "create_time", "cmdline"]):
            # This child's only: its handler's --database lies in the child's scratch (other
            # Chromiums on the machine, another engineer's tests, are not this test's business).
            mine = any(str(child.scratch) in arg for arg in proc.info["cmdline"] or ())
            if "crashpad" in (proc.info["name"] or "") and proc.info["create_time"] >= started - 0.01 and mine:
                found.append(proc)
        return found

    assert handlers() == [], "a crash handler started with this child outlived it"
