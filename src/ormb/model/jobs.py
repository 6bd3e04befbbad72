"""Raw layers written at once (:func:`ormb.model.modelpack.write_files`): the first failure stops them all.

``run_at_once`` starts ``concurrency`` daemon threads that take the jobs in order.  One stop flag
(:class:`threading.Event`) is shared by every job and set on the first failure of a job, or on anything the
waiting (main) thread raises while it waits: ``KeyboardInterrupt`` on Ctrl-C.  Then:

- the jobs under way see the flag between two chunks of their copy (streamed, or from the cache's copy) and end
  with :class:`~ormb.content.background.Stopped`, their file and connection closed;
- the jobs not started never start: the waiting thread closes their files;
- the waiting thread gives the jobs under way ``STOP_GRACE`` seconds to end (a job moving bytes ends within one
  chunk), then raises the first failure, or the interrupt.  The caller's staging tree then goes.

A job blocked in a read (a registry that stalls mid-blob) cannot see the flag until the read returns, which the
transport's read timeout bounds (``TransportOptions.read_timeout``; a resumed download may wait again).  It is not
waited for past ``STOP_GRACE``: its thread is a daemon, so it does not hold the process at exit either (the workers
of :class:`concurrent.futures.ThreadPoolExecutor` are joined at interpreter exit, which made Ctrl-C wait for every
download).  Until its read returns, its file, removed with the staging directory, is reachable only through its
open descriptor; then it sees the flag, closes the file and the connection, and ends.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from ormb.content.background import Stopped

STOP_GRACE = 2.0  # seconds the jobs under way get to end after a failure or Ctrl-C, before the error is raised


class Job(Protocol):
    def run(self, stop: threading.Event | None = None) -> None: ...

    def close(self) -> None: ...


def run_at_once(jobs: Sequence[Job], concurrency: int) -> None:
    """Run ``jobs``, ``concurrency`` at a time in threads; return when all succeeded, else raise the first failure
    (or what interrupted the waiting thread) once the others stopped, as described above."""
    _Jobs(jobs, concurrency).run()


class _Jobs:
    def __init__(self, jobs: Sequence[Job], concurrency: int) -> None:
        self._waiting: deque[Job] = deque(jobs)
        self._workers = max(1, min(concurrency, len(jobs)))
        self._running = 0
        self._failure: BaseException | None = None
        self._stop = threading.Event()
        self._changed = threading.Condition()

    def run(self) -> None:
        ok = False
        try:
            for i in range(self._workers):
                threading.Thread(target=self._work, name=f"ormb-layer-{i}", daemon=True).start()
            with self._changed:
                while (self._waiting or self._running) and not self._stop.is_set():
                    self._changed.wait()
                failure = self._failure
            if failure is not None:
                raise failure
            ok = True
        finally:
            if not ok:
                self._stop_all()

    def _stop_all(self) -> None:
        """Stop the jobs under way, close the files of those not started, give the others ``STOP_GRACE``."""
        with self._changed:
            self._stop.set()
            dropped = list(self._waiting)
            self._waiting.clear()
        for job in dropped:
            job.close()
        with self._changed:
            self._changed.wait_for(lambda: self._running == 0, timeout=STOP_GRACE)

    def _take(self) -> Job | None:
        with self._changed:
            if self._stop.is_set() or not self._waiting:
                return None
            self._running += 1
            return self._waiting.popleft()

    def _work(self) -> None:
        while (job := self._take()) is not None:
            try:
                job.run(self._stop)
            except BaseException as exc:
                with self._changed:
                    if self._failure is None and not isinstance(exc, Stopped):
                        self._failure = exc
                    self._stop.set()
            finally:
                with self._changed:
                    self._running -= 1
                    self._changed.notify_all()
