"""The grid's child processes (papermill, packs): started so that they die with the runner, stopped
together on Ctrl-C or SIGTERM (their checkpoints stay for a resume)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

STOP = threading.Event()  # set on Ctrl-C / SIGTERM: no new run starts, running ones are stopped


KERNEL_START_ERRORS = ("Kernel died before replying to kernel_info", "Kernel didn't respond", "NoSuchKernel")


_RUNNING: set[subprocess.Popen] = set()


_RUNNING_LOCK = threading.Lock()


def prepare_child() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the thread that started it dies (even by kill -9), so an
    orphaned notebook never trains on; its kernel follows papermill (ipykernel's parent poller).

    And SIGINT back to its default: a runner started in the background by a script (``ltkit grid run ... &``)
    inherits SIGINT ignored, and so would its children; the runner stops its children with SIGINT
    (:func:`stop_running`), which they must hear, or each stop waits out the grace and kills."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _papermill(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run papermill as a child this process can stop (Ctrl-C / SIGTERM on the runner stops it too)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=prepare_child)  # noqa: PLW1509
    with _RUNNING_LOCK:
        _RUNNING.add(proc)
    try:
        out, err = proc.communicate()
    finally:
        with _RUNNING_LOCK:
            _RUNNING.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def stop_running(grace: float = 20.0) -> None:
    """Stop every papermill child (SIGINT, then SIGKILL after ``grace`` seconds); checkpoints stay for a resume."""
    STOP.set()
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the grid runs, SIGTERM (a scheduler, ``kill``) stops it as Ctrl-C does: a KeyboardInterrupt in
    the runner, which stops its children and keeps what finished. Only the main thread can install it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _term(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
