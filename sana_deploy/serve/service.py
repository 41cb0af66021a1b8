"""One replica's request queue: bounded, batched within a size bucket, one pipeline call at a time.

A single worker thread owns the pipeline (engines run one call at a time). Requests wait in a bounded queue
(full -> 429); the worker takes the oldest request and, for ``batch_wait_s``, lets queued requests of the same
batch key (the pipeline's aspect-ratio bucket of the size, steps, guidance, negative prompt) join it up to
``max_batch_images``. Each request has a timeout (504); a request that
times out before it starts is dropped, so one slow client cannot pile work up behind the others.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from sana_deploy.errors import SanaDeployError, ShapeError
from sana_deploy.serve.metrics import Metrics
from sana_deploy.serve.requests import ImageRequest, RequestError
from sana_deploy.serve.settings import ServeSettings
from sana_deploy.serve.shared import ImagePipeline, batch_key, generate_batch, size_bucket

log = logging.getLogger("sana_deploy.serve")


@dataclass
class _Job:
    request: ImageRequest
    future: Future = field(default_factory=Future)


class ImageService:
    def __init__(self, pipe: ImagePipeline, settings: ServeSettings, metrics: Metrics | None = None) -> None:
        self.pipe, self.settings = pipe, settings
        self.metrics = metrics or Metrics()
        self.bucket = size_bucket(pipe)
        self.metrics.queue_depth = lambda: self.depth
        self._queue: deque[_Job] = deque()
        self._cv = threading.Condition()
        self._in_flight = 0  # queued + running
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="sana-serve-worker", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        return self._in_flight

    # --- callers --------------------------------------------------------------------------------------------
    def submit(self, request: ImageRequest) -> Future:
        """Queue a request; the future resolves to its PIL images (or a :class:`RequestError`)."""
        with self._cv:
            if self._closed:
                raise RequestError(503, "The server is shutting down; retry on another replica.")
            if self._in_flight >= self.settings.max_queue:
                raise RequestError(429, f"Too many requests in flight ({self.settings.max_queue}); retry shortly.")
            job = _Job(request)
            self._in_flight += 1
            job.future.add_done_callback(self._done)
            self._queue.append(job)
            self._cv.notify()
        return job.future

    async def generate(self, request: ImageRequest) -> list[Image.Image]:
        """Async API for servers: waits up to ``request_timeout_s`` (then 504, and the request is dropped)."""
        future = self.submit(request)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            future.cancel()  # no-op if already running; a queued request is dropped
            raise RequestError(504, f"Request timed out after {self.settings.request_timeout_s:g}s.") from None
        except asyncio.CancelledError:  # the client went away
            future.cancel()
            raise

    def close(self) -> None:
        with self._cv:
            self._closed = True
            for job in self._queue:
                job.future.cancel()
            self._queue.clear()
            self._cv.notify_all()
        self._worker.join(timeout=30)

    def _done(self, _: Future) -> None:
        with self._cv:
            self._in_flight -= 1

    # --- worker ---------------------------------------------------------------------------------------------
    def _next_batch(self) -> list[_Job]:
        with self._cv:
            while not self._queue and not self._closed:
                self._cv.wait()
            if self._closed:
                return []
            first = self._queue.popleft()
        if self.settings.batch_wait_s > 0:
            time.sleep(self.settings.batch_wait_s)
        batch, images = [first], first.request.n
        key = batch_key(first.request, self.bucket)
        with self._cv:
            for job in list(self._queue):
                if (
                    batch_key(job.request, self.bucket) == key
                    and images + job.request.n <= self.settings.max_batch_images
                ):
                    self._queue.remove(job)
                    batch.append(job)
                    images += job.request.n
        return [j for j in batch if j.future.set_running_or_notify_cancel()]  # drop timed-out requests

    def _run(self) -> None:
        while not self._closed:
            batch = self._next_batch()
            if not batch:
                continue
            try:
                results = generate_batch(self.pipe, [j.request for j in batch], self.bucket)
            except Exception as exc:  # a failed call must never take the worker down
                error = _as_request_error(exc)
                for job in batch:
                    job.future.set_exception(error)
                continue
            self.metrics.observe_batch(sum(len(r) for r in results))
            for job, images in zip(batch, results, strict=True):
                job.future.set_result(images)


def _as_request_error(exc: Exception) -> RequestError:
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, ShapeError):
        return RequestError(400, str(exc), "size")
    if isinstance(exc, SanaDeployError):  # e.g. the runtime's miss policy "error": no engine for this size yet
        return RequestError(503, str(exc), code="engine_unavailable")
    log.exception("pipeline call failed")
    return RequestError(500, f"Image generation failed ({type(exc).__name__}); see the server log.")
