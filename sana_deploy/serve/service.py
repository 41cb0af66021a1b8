"""One replica's request queue: bounded, batched within a size bucket, one pipeline call at a time.

A single worker thread owns the pipeline (engines run one call at a time). Requests wait in a bounded queue
(full -> 429); the worker takes the oldest request and, for ``batch_wait_s``, lets queued requests of the same
batch key (the pipeline's aspect-ratio bucket of the size, steps, guidance, negative prompt, LoRA set, input images
and img2img / ControlNet / PAG options) join it up to
``max_batch_images``. Each request has a timeout (504).

A request nobody waits for any more (it timed out, or its client went away) is abandoned: when still queued it is
dropped and never runs; when running, its pipeline call is stopped between denoising steps once no request sharing
that call is still waiting (for a pipeline that takes a step ``callback``, as ``SanaDeployPipeline`` does). So one
slow or vanished client cannot pile work up behind the others.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable
from concurrent.futures import Future
from dataclasses import dataclass, field

from PIL import Image

from sana_deploy.errors import SanaDeployError, ShapeError
from sana_deploy.runtime.img2img import ImageInputError
from sana_deploy.runtime.variants import VariantError
from sana_deploy.serve.metrics import Metrics
from sana_deploy.serve.requests import ClientGone, ImageRequest, RequestError, request_words
from sana_deploy.serve.settings import ServeSettings
from sana_deploy.serve.shared import (
    ImagePipeline,
    SharedPipeline,
    batch_key,
    generate_batch,
    size_bucket,
    takes_step_callback,
)

log = logging.getLogger("sana_deploy.serve")


@dataclass
class _Job:
    request: ImageRequest
    future: Future = field(default_factory=Future)
    abandoned: threading.Event = field(default_factory=threading.Event)  # nobody waits for the answer any more


class _Stopped(Exception):
    """Raised from the step callback: every request of the running call was abandoned."""


class ImageService:
    def __init__(self, pipe: ImagePipeline, settings: ServeSettings, metrics: Metrics | None = None) -> None:
        self.pipe, self.settings = pipe, settings_for(pipe, settings)
        self.metrics = metrics or Metrics()
        self.bucket = size_bucket(pipe)
        self.stoppable = takes_step_callback(pipe)  # running calls can stop between denoising steps
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
        return self._enqueue(request).future

    def _enqueue(self, request: ImageRequest) -> _Job:
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
        return job

    async def generate(self, request: ImageRequest, client_gone: Awaitable[object] | None = None) -> list[Image.Image]:
        """Async API for servers: waits up to ``request_timeout_s`` (then 504, and the request is abandoned).

        ``client_gone``: an awaitable that completes when the client disconnects; the request is then abandoned,
        counted in the metrics by where it was, and :class:`ClientGone` raised.
        """
        job = self._enqueue(request)
        result = asyncio.wrap_future(job.future)
        watch = asyncio.ensure_future(client_gone) if client_gone is not None else None
        waiting = {result} if watch is None else {result, watch}
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=self.settings.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:  # the server cancelled the handler (Ray Serve does when the client goes)
            self.metrics.observe_disconnect(self._abandon(job, result))
            raise
        finally:
            if watch is not None:
                watch.cancel()
        if watch is not None and watch in done:
            stage = self._abandon(job, result)
            self.metrics.observe_disconnect(stage)
            raise ClientGone(stage)
        if result in done:
            return result.result()
        self._abandon(job, result)
        raise RequestError(504, f"Request timed out after {self.settings.request_timeout_s:g}s.")

    def _abandon(self, job: _Job, result: asyncio.Future) -> str:
        """Nobody waits for ``job`` any more: drop it if queued, let the worker stop it if running. Returns where it
        was: "queued", "running" or "finished"."""
        job.abandoned.set()
        finished = job.future.done()
        dropped = job.future.cancel()  # only succeeds while queued; the worker then skips it
        result.cancel()  # nobody reads the result: no "exception never retrieved" later
        if dropped:
            with self._cv:
                if job in self._queue:
                    self._queue.remove(job)
            return "queued"
        return "finished" if finished else "running"

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
        return [j for j in batch if j.future.set_running_or_notify_cancel()]  # drop abandoned requests

    def _run(self) -> None:
        while not self._closed:
            batch = self._next_batch()
            if not batch:
                continue
            try:
                results = generate_batch(
                    self.pipe, [j.request for j in batch], self.bucket, self._stopper(batch) if self.stoppable else None
                )
            except _Stopped:
                self.metrics.observe_stopped_batch()
                for job in batch:
                    job.future.set_exception(ClientGone("running"))
                continue
            except Exception as exc:  # a failed call must never take the worker down
                error = _as_request_error(exc, batch[0].request)
                for job in batch:
                    job.future.set_exception(error)
                continue
            self.metrics.observe_batch(sum(len(r) for r in results))
            for job, images in zip(batch, results, strict=True):
                job.future.set_result(images)

    @staticmethod
    def _stopper(batch: list[_Job]):
        def stop_when_abandoned(step: int, timestep: float, latents) -> None:
            if all(job.abandoned.is_set() for job in batch):
                raise _Stopped(f"every request of this call was abandoned at step {step}")

        return stop_when_abandoned


def settings_for(pipe: ImagePipeline, settings: ServeSettings) -> ServeSettings:
    """``settings`` with what the loaded pipeline says about its model: Sana-Sprint or not, its depth (PAG blocks)
    and whether it has a ControlNet (requests are checked against these before queueing). A pipeline without a
    ``preset`` (a stand-in) leaves the settings as given."""
    target = pipe.pipe if isinstance(pipe, SharedPipeline) else pipe
    preset = getattr(target, "preset", None)
    if preset is None or not hasattr(preset, "transformer"):
        return settings
    controlnet = bool(getattr(getattr(target, "provider", None), "controlnet_layers", 0))
    return settings.with_(sprint=preset.sprint, num_layers=preset.transformer.num_layers, controlnet=controlnet)


def _as_request_error(exc: Exception, request: ImageRequest) -> RequestError:
    """The client's view of a failed pipeline call. The request was validated before it was queued, so what is left
    is the server's side; the client never sees the exception's text (it can name server paths), the log does."""
    if isinstance(exc, RequestError):
        return exc
    size = f"{request.width}x{request.height}"
    if isinstance(exc, VariantError | ImageInputError):  # the request's own options (e.g. PAG layers of a model
        log.info("refused a %s request: %s", size, exc)  # whose depth the server learns only when it runs)
        return RequestError(400, request_words(str(exc)))
    if isinstance(exc, ShapeError):  # the runtime's miss policy "error": no engine covers this size
        log.warning("no engine for a %s request: %s", size, exc)
        return RequestError(
            503,
            f"No engine on this server covers {size} and it does not build missing ones; the operator can build "
            "it (`sana-deploy build`; the server log names the profile) or serve with another miss policy.",
            code="engine_unavailable",
        )
    if isinstance(exc, SanaDeployError):  # e.g. an engine that failed to build or load
        log.warning("engines could not serve a %s request: %s", size, exc)
        return RequestError(
            503,
            f"The server's engines could not serve {size} ({type(exc).__name__}); the server log has the details.",
            code="engine_unavailable",
        )
    log.exception("pipeline call failed")
    return RequestError(500, f"Image generation failed ({type(exc).__name__}); see the server log.")
