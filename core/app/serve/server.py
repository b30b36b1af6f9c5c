"""The explorer's web application (Starlette): pages, the computation API, uploads, pictures.

Pages: ``/`` the layers, ``/layer/NAME``, ``/unit/NAME/U``, ``/image`` (upload or pick),
``/image/ID``. API: ``POST /api/ask/KIND?...`` answers from the cache or starts the job,
``GET /api/job/ID`` its progress (and result), ``POST /api/job/ID/cancel``;
``POST /upload`` takes an image's raw bytes (``Content-Type: image/*``), at most
``max_upload`` bytes, read in chunks. A bad request gets an error page (or JSON under
``/api``) with a 4xx status, never a traceback.
"""
from __future__ import annotations

import io
from pathlib import Path

from ...render.image import png_bytes, to_rgb
from . import pages
from .cache import request_key
from .compute import KINDS, BadRequest

__all__ = ["make_app", "serve", "free_port", "MAX_UPLOAD"]

#: the largest upload taken, in bytes (a 24-megapixel JPEG is about 8 MB)
MAX_UPLOAD = 16 * 2 ** 20
#: the largest image taken, in pixels (a decompression bomb is refused before it is decoded)
MAX_PIXELS = 64 * 2 ** 20
STATIC = Path(__file__).parent / "static"


def make_app(ws, *, max_upload: int = MAX_UPLOAD):
    """The Starlette application serving the workspace ``ws`` (a :class:`~.compute.Workspace`)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def is_api(request):
        return request.url.path.startswith("/api/") or request.url.path == "/upload"

    def refuse(request, status, message):
        if is_api(request):
            return JSONResponse({"error": message}, status_code=status)
        return HTMLResponse(pages.error_page(status, message), status_code=status)

    async def bad_request(request, err):
        return refuse(request, err.status, str(err))

    async def http_error(request, err):
        return refuse(request, err.status_code, err.detail if err.status_code != 404 else
                      f"no page at {request.url.path[:120]}")

    async def server_error(request, err):
        import traceback

        traceback.print_exception(err)  # the server's log; the page says one line
        return refuse(request, 500, f"the computation failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")

    def html(text):
        return HTMLResponse(text)

    async def layers(request):
        return html(pages.layers_page(ws))

    async def layer(request):
        return html(pages.layer_page(ws, ws.check_layer(request.path_params["layer"], spatial=False)))

    async def unit(request):
        name = ws.check_layer(request.path_params["layer"])
        return html(pages.unit_page(ws, name, ws.check_unit(name, request.path_params["unit"])))

    async def images(request):
        return html(pages.images_page(ws))

    async def image(request):
        from starlette.concurrency import run_in_threadpool

        image_id = ws.check_image(request.path_params["image"])
        numbers, _ = await run_in_threadpool(ws.now, "predict", {"image": image_id})
        return html(pages.image_page(ws, image_id, dict(numbers, key=request_key("predict", {"image": image_id}))))

    async def data_image(request):
        text = request.path_params["index"]
        if ws.images is None or not text.isdigit() or int(text) >= len(ws.images):
            raise BadRequest(404, f"no data image {text[:20]!r}")
        return Response(png_bytes(to_rgb(ws.images[int(text)])), media_type="image/png")

    async def ask(request):
        kind = request.path_params["kind"]
        job_id, found, job = ws.ask(kind, dict(request.query_params))
        if found is not None:
            return JSONResponse(_entry(job_id, found))
        return _status_or_entry(job_id, kind, job_id.partition("-")[2], job, 202)

    def job_of(request):
        job_id = request.path_params["job"]
        kind, _, key = job_id.partition("-")
        if kind not in KINDS or len(key) != 32:
            raise BadRequest(404, f"unknown job {job_id[:60]!r}")
        return job_id, kind, key

    async def job_status(request):
        job_id, kind, key = job_of(request)
        return _status_or_entry(job_id, kind, key, ws.jobs.get(job_id), 200)

    def _status_or_entry(job_id, kind, key, job, code):
        """The cached entry, else the job's status. The status is read first: a job stores its entry
        before it says done, so a job done by then is found in the cache (never a bare "done")."""
        status = job.status() if job is not None else None
        found = ws.cache.load(kind, key)
        if found is not None:
            return JSONResponse(_entry(job_id, found))
        if status is None:
            raise BadRequest(404, f"no job {job_id!r} (finished jobs are in the cache; ask again)")
        return JSONResponse(status, status_code=code)

    async def cancel(request):
        job_id, _, _ = job_of(request)
        job = ws.jobs.cancel(job_id)
        if job is None:
            raise BadRequest(404, f"no job {job_id!r}")
        return JSONResponse(job.status())

    async def picture(request):
        kind, key, name = (request.path_params[k] for k in ("kind", "key", "name"))
        data = ws.cache.picture(kind, key, name) if kind in KINDS and key.isalnum() and len(key) == 32 else None
        if data is None:
            raise BadRequest(404, f"no picture {name[:40]!r}")
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    async def upload(request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not kind.startswith("image/"):
            raise BadRequest(415, f"an upload is an image's bytes with Content-Type image/*; got {kind or 'none'!r}")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_upload:
            raise BadRequest(413, f"the upload is {int(declared)} bytes; the limit is {max_upload}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_upload:
                raise BadRequest(413, f"the upload is over the limit of {max_upload} bytes")
        png = _reencode(bytes(body))
        image_id = ws.cache.save_image(png)
        return JSONResponse({"image": image_id, "url": f"/image/{image_id}"})

    routes = [Route("/", layers), Route("/layer/{layer:path}", layer), Route("/unit/{layer:path}/{unit}", unit),
              Route("/image", images), Route("/image/{image}", image), Route("/data/{index}.png", data_image),
              Route("/api/ask/{kind}", ask, methods=["POST"]), Route("/api/job/{job}", job_status),
              Route("/api/job/{job}/cancel", cancel, methods=["POST"]),
              Route("/picture/{kind}/{key}/{name}.png", picture), Route("/upload", upload, methods=["POST"]),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    app = Starlette(routes=routes, exception_handlers={BadRequest: bad_request, HTTPException: http_error,
                                                       Exception: server_error},
                    lifespan=_lifespan(ws))
    app.state.workspace = ws
    return app


def _lifespan(ws):
    import contextlib

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        ws.jobs.cancel_all()  # running jobs stop between two batches; the workspace may serve another app

    return lifespan


def _entry(job_id, found) -> dict:
    numbers, names = found
    kind, _, key = job_id.partition("-")
    return {"job": job_id, "state": "done", "numbers": numbers,
            "pictures": {n: f"/picture/{kind}/{key}/{n}.png" for n in names}}


def _reencode(data: bytes) -> bytes:
    """The upload decoded (any format PIL reads) and written again as PNG; 400 when it is no image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise BadRequest(413, f"the image is {img.width}x{img.height} pixels; the limit is {MAX_PIXELS}")
            img.load()
            rgb = img.convert("RGBA") if img.mode in ("RGBA", "LA", "P") else img.convert("RGB")
            out = io.BytesIO()
            rgb.save(out, format="PNG")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise BadRequest(400, f"the upload is not an image that can be read: {str(err).splitlines()[0][:120]}") from None
    return out.getvalue()


def serve(ws, *, host: str = "127.0.0.1", port: int = 8000, log=print):
    """Run the server until interrupted (uvicorn); says its address first."""
    import uvicorn

    if port == 0:
        port = free_port(host)
    server = uvicorn.Server(uvicorn.Config(make_app(ws), host=host, port=port, log_level="warning"))
    log(f"convscope serve: http://{host}:{port}/ (Ctrl-C stops)")
    try:
        server.run()
    finally:
        ws.jobs.shutdown()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
