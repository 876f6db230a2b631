"""The project lock against the ways its holder can die (found by the soak, bench/soak.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from eventflow.shell.lock import ProjectLock, process_alive

TAKE_LOCK = """
import sys, time
from eventflow.shell.lock import ProjectLock
assert ProjectLock(__import__("pathlib").Path(sys.argv[1])).try_acquire("once")
print("locked", flush=True)
time.sleep(600)
"""


def test_a_lock_held_by_a_killed_but_unreaped_process_is_taken_over(tmp_path: Path) -> None:
    """Regression: a ``watch --once`` SIGKILLed by a parent that had not yet waited for it
    is a zombie; os.kill(pid, 0) still succeeds on a zombie, so its lock counted as held and
    every other ``watch --once`` waited the full lock timeout (600 s) and failed."""
    lock_path = tmp_path / "watcher.lock"
    holder = subprocess.Popen([sys.executable, "-c", TAKE_LOCK, str(lock_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert not ProjectLock(lock_path).try_acquire("once")  # alive: really held
        holder.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{holder.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "the killed holder never became a zombie"
            time.sleep(0.05)
        assert not process_alive(holder.pid)  # a zombie, not reaped yet (no wait() so far)
        taker = ProjectLock(lock_path)
        assert taker.try_acquire("once")
        assert taker.holder()["pid"] != holder.pid
        taker.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_living_process_is_alive_and_a_reaped_one_is_not() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)
