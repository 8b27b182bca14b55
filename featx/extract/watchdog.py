"""Ends what a featx process leaves of the local Ray instance it started, however it ends.

kill -9 runs nothing in the process that receives it, and Ray's own fate-sharing does not
reach every process it starts: on Ray 2.60 a SIGKILLed driver leaves its DashboardAgent and
RuntimeEnvAgent running, reparented to init. So `featx.extract.distributed.connect` starts this
watchdog beside a new local instance: `python -m featx.extract.watchdog PID`, with the read end of a
pipe as its stdin whose write end only the driver holds. While the driver lives, the watchdog
notes the Ray processes below it in the process tree; when the pipe closes (the driver is gone:
a normal exit, Ctrl-C, kill -9) it sends SIGTERM, then SIGKILL, to those still running.

Linux only (it reads /proc); elsewhere connect does not start it. Standard library only, so it
starts in a few milliseconds and keeps no torch or Ray in memory.
"""
import os
import select
import signal
import sys
import time

SCAN_EVERY_S = 1.0
GRACE_S = 3.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a running process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
    fields = text[text.rindex(b")") + 2:].split()
    return int(fields[1]), int(fields[19])


def _is_ray(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ray" in f.read()
    except OSError:
        return False


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of the Ray processes below `root` in the process tree now."""
    parent, started = {}, {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                parent[int(name)], started[int(name)] = stat
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid != os.getpid() and _is_ray(pid):
            found[pid] = started[pid]
        todo.extend(children.get(pid, []))
    return found


def _alive(tracked: dict[int, int]) -> dict[int, int]:
    """The tracked processes still running (the same process: a reused pid starts later)."""
    out = {}
    for pid, started in tracked.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == started:
            out[pid] = started
    return out


def _signal(tracked: dict[int, int], signum: int) -> None:
    for pid in tracked:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def watch(driver: int, pipe: int) -> None:
    tracked: dict[int, int] = {}
    while True:
        tracked.update(descendants(driver))
        ready, _, _ = select.select([pipe], [], [], SCAN_EVERY_S)
        if ready and not os.read(pipe, 4096):
            break  # end of file: the driver is gone
    # A normal exit ran Ray's own shutdown already; give what it stopped a moment to go.
    tracked = _alive(tracked)
    _signal(tracked, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while tracked and time.monotonic() < deadline:
        time.sleep(0.1)
        tracked = _alive(tracked)
    _signal(tracked, signal.SIGKILL)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle, not ours
    watch(int(sys.argv[1]), sys.stdin.fileno())
