"""A render child is spawned clean: no secret in its environment, and the parent's `__main__`
(`export-worker`: the CLI, psycopg, the config) is not imported again in it.

Real processes: a script stands in for `export-worker`; it records every import of itself
and starts a child with `CleanEnvProcess` and, as the control, with plain `spawn`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)

SCRIPT = textwrap.dedent(
    """
    import multiprocessing, os, sys
    from pathlib import Path

    marker = Path(sys.argv[2])
    with marker.open("a") as out:
        out.write(__name__ + "\\n")

    if __name__ == "__main__":
        from shared.child_env import CleanEnvProcess

        environ_dump = sys.argv[3]
        # The child copies its own /proc/self/environ: what it was exec'd with.
        target_args = ("/proc/self/environ", environ_dump)
        if sys.argv[1] == "clean":
            child = CleanEnvProcess(target=__import__("shutil").copyfile, args=target_args)
        else:
            child = multiprocessing.get_context("spawn").Process(
                target=__import__("shutil").copyfile, args=target_args)
        child.start()
        child.join(30)
        sys.exit(child.exitcode)
    """
)


def spawn_from_script(tmp_path: Path, how: str) -> tuple[list[str], dict[str, str]]:
    script = tmp_path / "fake_export_worker.py"
    script.write_text(SCRIPT)
    marker, environ_dump = tmp_path / f"imports-{how}", tmp_path / f"environ-{how}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": "postgresql://u:hunter2@db/x",
           "SUPABASE_JWT_SECRET": "jwt-secret-value"}
    done = subprocess.run([sys.executable, str(script), how, str(marker), str(environ_dump)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    pairs = [p.split("=", 1) for p in environ_dump.read_bytes().decode().split("\0") if "=" in p]
    return marker.read_text().split(), dict(pairs)


def test_a_clean_child_neither_reimports_main_nor_sees_secrets(tmp_path: Path) -> None:
    imports, environ = spawn_from_script(tmp_path, "clean")
    assert imports == ["__main__"]  # only the parent ran the script
    assert "DATABASE_URL" not in environ and "SUPABASE_JWT_SECRET" not in environ
    assert "PATH" in environ


def test_the_control_plain_spawn_does_both(tmp_path: Path) -> None:
    """Without CleanEnvProcess the same script is imported again as __mp_main__ and the
    secrets are inherited: the assertions above can fail."""
    imports, environ = spawn_from_script(tmp_path, "plain")
    assert imports == ["__main__", "__mp_main__"]
    assert environ["SUPABASE_JWT_SECRET"] == "jwt-secret-value"
