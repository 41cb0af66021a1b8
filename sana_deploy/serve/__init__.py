"""Serving: embedding API, OpenAI-compatible HTTP (uvicorn / Ray Serve), Triton model repository."""

from sana_deploy.serve.requests import ImageRequest, RequestError
from sana_deploy.serve.service import ImageService
from sana_deploy.serve.settings import ServeSettings, default_settings
from sana_deploy.serve.shared import ImagePipeline, SharedPipeline, generate_batch, load_pipeline

__all__ = [
    "ImagePipeline",
    "ImageRequest",
    "ImageService",
    "RequestError",
    "ServeSettings",
    "SharedPipeline",
    "default_settings",
    "generate_batch",
    "load_pipeline",
]
