"""Serving fixtures: a fake pipeline with the runtime's call signature, and servers bound to 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image


class FakePipeline:
    """Deterministic per-generator images; records every call (to check batching) and can be slow."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[dict] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(
        self,
        prompt,
        *,
        negative_prompt="",
        height,
        width,
        num_inference_steps,
        guidance_scale,
        generator=None,
        num_images_per_prompt=1,
    ):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            self.calls.append({"prompts": prompts, "height": height, "width": width, "steps": num_inference_steps})
            time.sleep(self.delay_s)
            gens = generator if isinstance(generator, list) else [generator] * len(prompts)
            images = []
            for p, g in zip(prompts, gens, strict=True):
                noise = torch.rand(3, 8, 8, generator=g)
                value = (noise * 255).to(torch.uint8).permute(1, 2, 0).numpy()
                image = np.resize(value, (height, width, 3)).astype(np.uint8)
                image[0, 0, 0] = len(p) % 256
                images.append(Image.fromarray(image))
            return images
        finally:
            with self._lock:
                self.active -= 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """uvicorn in a background thread on 127.0.0.1 (stopped by :meth:`stop`)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("uvicorn did not start in 20 s")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def fake_pipe():
    return FakePipeline()
