"""`lio serve`'s watch over the server: the Python backend does not restart a stub that died (a
killed worker answers every request with "Stub process is not healthy" while Triton still reports the
model ready), so the supervisor counts the stubs and, when one is gone or the server itself exited,
restarts the server (killed at once: a graceful exit would wait out its timeout for the dead stub). While
it restarts, the server is down: requests get connection errors, never a
hang or a wrong answer, and a readiness probe sees it is not ready."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pipeline.serve.server import Server


def supervise(server: Server, stop: threading.Event, say: Callable[[str], None] = print, every: float = 0.25) -> None:
    """Until `stop` is set: restart the server when a stub or the server died; then stop it."""
    expected = len(server.stubs())
    while not stop.wait(every):
        process = server.process
        died = None
        if process is None or process.poll() is not None:
            died = f"tritonserver exited (status {process.returncode if process else None})"
        elif len(server.stubs()) < expected:
            died = f"a model's worker process died ({len(server.stubs())} of {expected} running)"
        if died is None:
            continue
        started = time.monotonic()
        say(f"{died}: restarting the server")
        server.stop(now=True)  # requests in flight get connection errors at once, not a wait for the dead stub
        server.start()
        expected = len(server.stubs())
        say(f"ready again after {time.monotonic() - started:.1f} s")
    server.stop()
