"""The same OpenAI app on Ray Serve: N replicas, each loading the engines once, Ray routing and restarting them.

Each replica builds one :class:`ImageService` (bounded queue, batching within a size bucket, timeouts) around a
pipeline it loads in its constructor, and serves :func:`create_app` through ``serve.ingress``. Ray Serve replaces
a replica that dies; its health check calls :meth:`SanaReplica.check_health`.
"""

from __future__ import annotations

from collections.abc import Callable

from sana_deploy.serve.settings import ServeSettings
from sana_deploy.serve.shared import ImagePipeline

PipelineFactory = Callable[[], ImagePipeline]  # must be picklable (a module-level function or a partial of one)


def build_deployment(
    factory: PipelineFactory,
    settings: ServeSettings,
    replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
):
    """A bound Ray Serve application: ``serve.run(build_deployment(...), route_prefix="/")``."""
    from ray import serve

    @serve.deployment(
        name="sana",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        # Our own queue answers 429 first; Ray's limit only bounds what reaches a replica.
        max_ongoing_requests=settings.max_queue + 8,
        health_check_period_s=2,
        health_check_timeout_s=30,
    )
    @serve.ingress()
    class SanaReplica:
        def __init__(self, factory: PipelineFactory, settings: ServeSettings) -> None:
            from sana_deploy.serve.service import ImageService

            self.service = ImageService(factory(), settings)  # engines loaded once per replica

        def __serve_build_asgi_app__(self):
            from sana_deploy.serve.http import create_app

            return create_app(self.service)

        def check_health(self) -> None:
            if not self.service._worker.is_alive():
                raise RuntimeError("the pipeline worker thread died")

        def pid(self) -> int:
            import os

            return os.getpid()

    return SanaReplica.bind(factory, settings)


def serve_ray(
    factory: PipelineFactory,
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    num_gpus: float = 0.0,
    blocking: bool = True,
) -> None:
    """Start (or join) a local Ray cluster and run the app on ``host:port``."""
    import time

    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(include_dashboard=False, configure_logging=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_deployment(factory, settings, replicas, num_gpus=num_gpus), name="sana", route_prefix="/")
    while blocking:
        time.sleep(3600)
