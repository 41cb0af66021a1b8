"""OpenAI-compatible HTTP API: ``POST /v1/images/generations``, ``GET /health``, ``GET /metrics``.

The same ASGI app runs under uvicorn (``sana-deploy serve``) and inside each Ray Serve replica
(``sana-deploy serve --ray``). Every refusal is a 4xx/5xx JSON error in OpenAI's shape whose message never
carries server-side text (paths, exception messages: those go to the log); no request can take the worker down.
A body that does not arrive within ``body_timeout_s`` is a 408 and its connection is closed; a client that goes
away (while sending its body, queued or running) is counted in ``/metrics`` and its request abandoned.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import ClientDisconnect

from sana_deploy.serve.requests import ClientGone, RequestError, parse_body
from sana_deploy.serve.service import ImageService
from sana_deploy.serve.shared import png_bytes


def create_app(service: ImageService) -> FastAPI:
    settings, metrics = service.settings, service.metrics
    app = FastAPI(title="sana-deploy", docs_url=None, redoc_url=None)

    def refuse(err: RequestError) -> JSONResponse:
        metrics.observe_request(err.status)
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
        if err.status in (408, 413):  # the rest of the body may still be on its way: end the connection
            headers["Connection"] = "close"
        return JSONResponse(err.to_json(), status_code=err.status, headers=headers)

    @app.post("/v1/images/generations")
    async def generations(request: Request):
        started = time.perf_counter()
        try:
            _check_auth(request, settings.api_key)
            body = await _read_body(request, settings.body_limit, settings.body_timeout_s)
            req = parse_body(body, settings)
            images = await service.generate(req, client_gone=_disconnected(request))
        except RequestError as err:
            return refuse(err)
        except ClientGone as gone:  # nobody reads this answer; counted by stage, never as a status
            if gone.stage == "body":
                metrics.observe_disconnect("body")
            return Response(status_code=499)
        data = [{"b64_json": base64.b64encode(png_bytes(im)).decode(), "revised_prompt": req.prompt} for im in images]
        metrics.observe_request(200, time.perf_counter() - started)
        return {"created": int(time.time()), "data": data, "size": f"{req.width}x{req.height}"}

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": settings.model_name,
            "queue_depth": service.depth,
            "max_queue": settings.max_queue,
            "sizes": settings.size_names(),  # None: any size up to max_side (binned, resized back)
            "max_side": settings.max_side,
            "max_n": settings.max_n,
        }

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.exception_handler(404)
    async def not_found(request: Request, exc):  # OpenAI-shaped 404s too
        return JSONResponse(RequestError(404, f"No route {request.url.path}.").to_json(), status_code=404)

    @app.exception_handler(405)
    async def bad_method(request: Request, exc):
        err = RequestError(405, f"{request.method} is not allowed on {request.url.path}.")
        return JSONResponse(err.to_json(), status_code=405)

    return app


def _check_auth(request: Request, api_key: str | None) -> None:
    if not api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        raise RequestError(401, "Missing or wrong API key; send 'Authorization: Bearer <key>'.", code="invalid_api_key")


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` (declared or streamed), with 408 when all of it has
    not arrived within ``timeout_s``; :class:`ClientGone` when the client closes the connection part-way."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"Request body is {declared} bytes; the limit is {limit}.")

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11
        raise RequestError(
            408, f"The request body did not arrive within {timeout_s:g}s; send it whole.", code="body_timeout"
        ) from None
    except ClientDisconnect:
        raise ClientGone("body") from None


async def _disconnected(request: Request) -> None:
    """Returns when the client of ``request`` (whose body has been read) disconnects."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def serve_http(service: ImageService, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Blocking: serve the app with uvicorn (loopback unless ``host`` says otherwise)."""
    import uvicorn

    uvicorn.run(create_app(service), host=host, port=port, log_level=log_level, timeout_keep_alive=5)
