"""The FastAPI application: HTTP in front of `FaceService`, the web page, the request limits.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time,
and the types they name are imported inside `create_app` (FastAPI is an optional extra).
"""

import contextlib
import hmac
import logging
import os
from importlib import resources
from typing import Any, AsyncIterator, Callable, Optional
from urllib.parse import urlsplit

from irface.errors import GalleryError, OutputError, UserError, import_extra
from irface.serve.hosts import AllowedHosts, HostCheck
from irface.serve.limits import (BodySizeLimit, Limits, PixelBudget, RequestError, check_request_pixels,
                                 decode_opened, open_upload)
from irface.serve.service import FaceService

log = logging.getLogger(__name__)

_PAGE_HEADERS = {
    # The page is self-contained: nothing from elsewhere may load, nothing may frame it.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
}


def _fastapi_class():
    """FastAPI whose /docs page is served from the installed package (the machines have no internet)."""
    return import_extra("fastapi_offline", "irface serve", "serve", UserError).FastAPIOffline


def create_app(service: FaceService, *, api_key: Optional[str] = None, limits: Limits = Limits(),
               allowed_hosts: Optional[AllowedHosts] = None) -> Any:
    """The ASGI app serving `service`; gallery changes need `api_key` (header X-API-Key or Bearer) when set.

    Requests are answered only when their Host is one of `allowed_hosts` (default `AllowedHosts()`: loopback names).
    """
    app_class = _fastapi_class()
    from fastapi import Depends, File, Form, Header, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool

    static = resources.files("irface.serve") / "static"
    worker = str(os.getpid())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.close()

    app = app_class(title="irface", version="1", lifespan=lifespan,
                    description="Face detection, embedding, verification (1:1) and gallery search (1:N).")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        if isinstance(exc, OutputError):
            # The server's disk, not the client's request (full, read-only): 507, and the line the
            # client sees names no path of this machine; the log keeps the whole story.
            log.error("%s %s: %s", request.method, request.url.path, exc)
            return JSONResponse({"detail": f"the server could not save the change ({exc.reason or 'storage error'}); "
                                           "nothing was changed"}, status_code=507)
        # A bad identity name or search argument is the gallery's to say (422); a bad image is 400.
        status = getattr(exc, "status", 422 if isinstance(exc, GalleryError) else 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def bad_fields(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer is a list of objects; ours is one line, like every other refusal.
        parts = [f"{err['loc'][-1] if err.get('loc') else 'request'}: {err.get('msg', 'invalid')}"
                 for err in exc.errors()]
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.middleware("http")
    async def same_origin_and_no_sniff(request: Request, call_next: Callable) -> Any:
        # A web page elsewhere may make the visitor's browser post a form here (no preflight for
        # multipart); browsers say where such a request comes from, and only this server's page may.
        origin = request.headers.get("origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin is not None \
                and urlsplit(origin).netloc != request.headers.get("host"):
            return JSONResponse({"detail": f"requests from the page of another site ({origin[:100]}) are refused"},
                                status_code=403)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Irface-Worker"] = worker  # which of `--workers N` processes answered
        return response

    # The key as the bytes a client sends: UTF-8 (headers reach us decoded as Latin-1, byte for byte).
    key_bytes = None if api_key is None else api_key.encode("utf-8", "surrogateescape")

    def require_key(request: Request, x_api_key: Optional[str] = Header(None),
                    authorization: Optional[str] = Header(None)) -> None:
        if key_bytes is None:
            return
        given = x_api_key
        if given is None and authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if given is None or not hmac.compare_digest(given.encode("latin-1"), key_bytes):
            # Who tried, never what they tried: a near-miss key in a log file is half a leak.
            client = request.client.host if request.client else "unknown client"
            log.warning("refused %s %s from %s: %s API key", request.method, request.url.path, client,
                        "no" if given is None else "wrong")
            raise RequestError("gallery changes need the server's API key (header X-API-Key)", 401)

    budget = PixelBudget(limits.decoding_budget())

    async def call(uploads: list[UploadFile], per_photo: Callable[[Any, str], Any],
                   finish: Optional[Callable[[list], Any]] = None) -> Any:
        """Check every upload's header, then decode the photos one at a time within the server's pixel
        budget, each reduced by `per_photo(photo, name)` (in the thread pool) before the next is decoded;
        `finish(results)` makes the answer (default: the first result)."""
        if len(uploads) > limits.max_files:
            raise RequestError(f"at most {limits.max_files} images per request, got {len(uploads)}", 413)
        named = [((u.filename or "upload")[:200], await u.read()) for u in uploads]
        opened = await run_in_threadpool(lambda: [(n, d, open_upload(d, n, limits)) for n, d in named])
        check_request_pixels([(n, img) for n, _, img in opened], limits)

        def reduce(name: str, data: bytes, img: Any) -> Any:
            return per_photo(decode_opened(img, data, name, limits), name)

        results = []
        for name, data, img in opened:
            async with budget.hold(img.width * img.height):
                results.append(await run_in_threadpool(reduce, name, data, img))
        return results[0] if finish is None else await run_in_threadpool(finish, results)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static / "index.html"), headers=_PAGE_HEADERS)

    @app.get("/v1/health")
    async def health() -> dict:
        """Model, threshold and gallery the server runs with."""
        return await run_in_threadpool(service.health)

    @app.post("/v1/detect")
    async def detect(image: UploadFile = File(...)) -> dict:
        """Every face in the photo: box (x1, y1, x2, y2), score and 5 landmarks, in pixels."""
        return await call([image], lambda photo, name: service.detect(photo, name))

    @app.post("/v1/embed")
    async def embed(image: UploadFile = File(...), all_faces: bool = Form(False)) -> dict:
        """L2-normalised embedding of the largest face (or of every face with all_faces)."""
        return await call([image], lambda photo, name: service.embed(photo, name, all_faces))

    @app.post("/v1/verify")
    async def verify(a: UploadFile = File(...), b: UploadFile = File(...),
                     threshold: Optional[float] = Form(None)) -> dict:
        """Same person? Similarity of the two photos' faces, the threshold, the decision and both boxes."""
        return await call([a, b], service.largest_face, lambda found: service.verify_faces(found[0], found[1], threshold))

    @app.post("/v1/search")
    async def search(image: UploadFile = File(...), top_k: int = Form(5),
                     threshold: Optional[float] = Form(None)) -> dict:
        """Who is this? The gallery's top_k (1..100) matches; identity "unknown" below the threshold."""
        return await call([image], lambda photo, name: service.search(photo, name, top_k, threshold))

    @app.get("/v1/gallery")
    async def gallery() -> dict:
        """The gallery's size, model and identities."""
        return await run_in_threadpool(service.gallery_info)

    @app.post("/v1/gallery/enroll", dependencies=[Depends(require_key)])
    async def enroll(identity: str = Form(...), images: list[UploadFile] = File(...)) -> dict:
        """Add a person: the largest face of each photo; answered once the gallery on disk holds it."""
        name = await run_in_threadpool(service.enrolment_name, identity)  # a bad name costs no decoding
        return await call(images, service.enrolment_face, lambda found: service.enroll_faces(name, found))

    @app.delete("/v1/gallery/{identity}", dependencies=[Depends(require_key)])
    async def remove(identity: str) -> dict:
        """Remove every face of a person."""
        return await run_in_threadpool(service.remove, identity)

    @app.get("/v1/gallery/thumbnail/{key}", include_in_schema=False)
    async def thumbnail(key: str) -> Response:
        data = await run_in_threadpool(service.thumbnail, key)
        if data is None:
            return JSONResponse({"detail": "no such picture"}, status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    return HostCheck(BodySizeLimit(app, limits.max_request_bytes), allowed_hosts or AllowedHosts())
