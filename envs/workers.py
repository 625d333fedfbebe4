"""Worker processes that run rollouts (collection, DAgger rounds, evaluation): what each of them sets up."""

from __future__ import annotations

import os
import threading
import time


def watch_parent(parent_pid: int) -> None:
    """Exit this worker when the process that started it is gone (e.g. SIGKILLed), so no orphan keeps running.

    Call it first in a process pool's initializer: a daemon thread polls the parent twice a second.

    Args:
        parent_pid: the starting process's pid (``os.getpid()`` there, passed in the initializer's arguments).
    """

    def watch() -> None:
        ppid = os.getppid()
        while True:
            time.sleep(0.5)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            if os.getppid() != ppid:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
