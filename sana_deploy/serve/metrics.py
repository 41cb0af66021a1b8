"""Prometheus text-format metrics for one replica (no client library needed to scrape them)."""

from __future__ import annotations

import threading
from collections import Counter, deque

LATENCY_WINDOW = 1024  # quantiles over the last N completed requests
# Where a request was when its client went away: still sending its body; queued (dropped, never run); running
# (its pipeline call stops between denoising steps once no request sharing it is waiting); finished (images unsent).
DISCONNECT_STAGES = ("body", "queued", "running", "finished")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[int] = Counter()  # by HTTP status
        self.images = 0
        self.batches = 0
        self.batched_images = 0
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.disconnects: Counter[str] = Counter({stage: 0 for stage in DISCONNECT_STAGES})
        self.stopped_batches = 0  # pipeline calls stopped between denoising steps (every client had gone)
        self.queue_depth = lambda: 0

    def observe_request(self, status: int, seconds: float | None = None) -> None:
        with self._lock:
            self.requests[status] += 1
            if seconds is not None and status == 200:
                self.latencies.append(seconds)

    def observe_disconnect(self, stage: str) -> None:
        """A client went away before its answer was sent; never counted as a response status."""
        if stage not in DISCONNECT_STAGES:
            raise ValueError(f"unknown disconnect stage {stage!r}; one of {DISCONNECT_STAGES}")
        with self._lock:
            self.disconnects[stage] += 1

    def observe_stopped_batch(self) -> None:
        with self._lock:
            self.stopped_batches += 1

    def observe_batch(self, images: int) -> None:
        with self._lock:
            self.batches += 1
            self.batched_images += images
            self.images += images

    def quantile(self, q: float) -> float | None:
        with self._lock:
            values = sorted(self.latencies)
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]

    def render(self) -> str:
        lines = [
            "# HELP sana_requests_total Image generation requests by HTTP status.",
            "# TYPE sana_requests_total counter",
        ]
        with self._lock:
            statuses = dict(self.requests)
            images, batches, batched = self.images, self.batches, self.batched_images
            disconnects, stopped = dict(self.disconnects), self.stopped_batches
        lines += [f'sana_requests_total{{status="{s}"}} {n}' for s, n in sorted(statuses.items())]
        lines += [
            "# HELP sana_client_disconnects_total Requests whose client went away before the answer, by where the "
            "request was (body, queued: never run, running: stopped between steps when no one else waits, finished).",
            "# TYPE sana_client_disconnects_total counter",
        ]
        lines += [f'sana_client_disconnects_total{{stage="{s}"}} {disconnects[s]}' for s in DISCONNECT_STAGES]
        lines += [
            "# HELP sana_batches_stopped_total Pipeline calls stopped between denoising steps (every client had gone).",
            "# TYPE sana_batches_stopped_total counter",
            f"sana_batches_stopped_total {stopped}",
        ]
        lines += [
            "# HELP sana_images_total Images generated.",
            "# TYPE sana_images_total counter",
            f"sana_images_total {images}",
            "# HELP sana_batches_total Pipeline calls (each may serve several same-size requests).",
            "# TYPE sana_batches_total counter",
            f"sana_batches_total {batches}",
            "# HELP sana_queue_depth Requests waiting or running.",
            "# TYPE sana_queue_depth gauge",
            f"sana_queue_depth {self.queue_depth()}",
            "# HELP sana_request_latency_seconds Latency of successful requests (last 1024).",
            "# TYPE sana_request_latency_seconds summary",
        ]
        for q in (0.5, 0.9, 0.99):
            v = self.quantile(q)
            if v is not None:
                lines.append(f'sana_request_latency_seconds{{quantile="{q}"}} {v:.6f}')
        if batches:
            lines.append(f"# mean images per pipeline call: {batched / batches:.3f}")
        return "\n".join(lines) + "\n"
