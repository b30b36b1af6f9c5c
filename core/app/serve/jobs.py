"""Long computations of the explorer server: a job per request, its progress, and cancelling it.

A job is named by the cache key of what it computes, so two tabs asking for the same thing
share one job (single flight) and its result. A job runs on a worker thread; the library's
loops report every batch or step through :func:`convscope._progress.observed`, and the
observer raises :class:`Cancelled` there once the job is cancelled, so a scan or an
optimisation stops between two batches.
"""
from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

from ..._progress import observed

__all__ = ["Cancelled", "Job", "Jobs"]


class Cancelled(Exception):
    """Raised inside a cancelled job's loop, between two batches."""


class Job:
    """One computation: ``state`` is "running", "done", "error" or "cancelled"; ``done``/``total``
    count the steps of the loop running now (``step`` names it); ``result`` when done."""

    def __init__(self, key: str, what: str):
        self.key, self.what = key, what
        self.state, self.step, self.done, self.total = "running", "", 0, None
        self.result, self.error = None, None
        self.cancel_flag = threading.Event()
        self.finished = threading.Event()
        self.started = time.perf_counter()
        self.seconds = None

    def check(self, done=0, total=None, desc=None):
        """The progress observer: records the step, raises :class:`Cancelled` once cancelled."""
        if self.cancel_flag.is_set():
            raise Cancelled(f"{self.what} was cancelled")
        if desc is not None:
            self.step = str(desc)
        self.done, self.total = done, total

    def status(self) -> dict:
        return {"job": self.key, "what": self.what, "state": self.state, "step": self.step, "done": self.done,
                "total": self.total, "error": self.error,
                "seconds": round(self.seconds if self.seconds is not None else time.perf_counter() - self.started, 3)}


class Jobs:
    """The jobs of one server: started once per key, polled, cancelled.

    ``run(key, what, fn)`` starts ``fn(job)`` unless a job of that key is running (then that
    job is returned: single flight). A finished job is forgotten once its result is cached
    (the caller's ``fn`` writes it), so a cancelled or failed request can be asked again.
    """

    def __init__(self, workers: int = 2):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convscope-job")
        self._lock = threading.Lock()
        self._jobs: dict = {}
        self.started = 0  # how many computations were started (the tests count them)

    def run(self, key: str, what: str, fn) -> Job:
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state == "running":
                return job
            job = self._jobs[key] = Job(key, what)
            self.started += 1
        self._pool.submit(self._work, job, fn)
        return job

    def get(self, key: str):
        with self._lock:
            return self._jobs.get(key)

    def cancel(self, key: str):
        job = self.get(key)
        if job is not None and job.state == "running":
            job.cancel_flag.set()
        return job

    def _work(self, job: Job, fn):
        try:
            with observed(job.check):
                job.check()
                job.result = fn(job)
            job.state = "done"
        except Cancelled:
            job.state = "cancelled"
        except Exception as err:  # shown on the page in one line; the traceback goes to the server's log only
            job.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            job.state = "error"
            traceback.print_exc()
        finally:
            job.seconds = time.perf_counter() - job.started
            job.finished.set()

    def cancel_all(self):
        with self._lock:
            running = [job for job in self._jobs.values() if job.state == "running"]
        for job in running:
            job.cancel_flag.set()

    def shutdown(self):
        self.cancel_all()
        self._pool.shutdown(wait=True, cancel_futures=True)
