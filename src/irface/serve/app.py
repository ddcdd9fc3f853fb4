"""The FastAPI application: HTTP in front of `FaceService`, the web page, the request limits.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at run time,
and the types they name are imported inside `create_app` (FastAPI is an optional extra).
"""

import contextlib
import os
import secrets
from importlib import resources
from typing import Any, AsyncIterator, Callable, Optional
from urllib.parse import urlsplit

from irface.errors import GalleryError, UserError
from irface.serve.limits import BodySizeLimit, Limits, RequestError, decode_upload
from irface.serve.service import FaceService

_PAGE_HEADERS = {
    # The page is self-contained: nothing from elsewhere may load, nothing may frame it.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
}


def _fastapi_class():
    """FastAPI whose /docs page is served from the installed package (the machines have no internet)."""
    try:
        import fastapi  # noqa: F401
        from fastapi_offline import FastAPIOffline
    except ImportError:
        raise UserError("irface serve needs the serve extra: pip install 'irface[serve]'") from None
    return FastAPIOffline


def create_app(service: FaceService, *, api_key: Optional[str] = None, limits: Limits = Limits()) -> Any:
    """The ASGI app serving `service`; gallery changes need `api_key` (header X-API-Key or Bearer) when set."""
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
    async def user_error(_request: Request, exc: UserError) -> JSONResponse:
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

    def require_key(x_api_key: Optional[str] = Header(None),
                    authorization: Optional[str] = Header(None)) -> None:
        if api_key is None:
            return
        given = x_api_key
        if given is None and authorization and authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        if given is None or not secrets.compare_digest(given.encode(), api_key.encode()):
            raise RequestError("gallery changes need the server's API key (header X-API-Key)", 401)

    async def call(fn: Callable, uploads: list[UploadFile], *args: Any) -> Any:
        """Read the uploads, then decode them and run `fn(photos..., *args)` in the thread pool."""
        if len(uploads) > limits.max_files:
            raise RequestError(f"at most {limits.max_files} images per request, got {len(uploads)}", 413)
        named = [((u.filename or "upload")[:200], await u.read()) for u in uploads]

        def work() -> Any:
            photos = [(name, decode_upload(data, name, limits)) for name, data in named]
            return fn(photos, *args)

        return await run_in_threadpool(work)

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
        return await call(lambda p: service.detect(p[0][1], p[0][0]), [image])

    @app.post("/v1/embed")
    async def embed(image: UploadFile = File(...), all_faces: bool = Form(False)) -> dict:
        """L2-normalised embedding of the largest face (or of every face with all_faces)."""
        return await call(lambda p: service.embed(p[0][1], p[0][0], all_faces), [image])

    @app.post("/v1/verify")
    async def verify(a: UploadFile = File(...), b: UploadFile = File(...),
                     threshold: Optional[float] = Form(None)) -> dict:
        """Same person? Similarity of the two photos' faces, the threshold, the decision and both boxes."""
        return await call(lambda p: service.verify(p[0][1], p[0][0], p[1][1], p[1][0], threshold), [a, b])

    @app.post("/v1/search")
    async def search(image: UploadFile = File(...), top_k: int = Form(5),
                     threshold: Optional[float] = Form(None)) -> dict:
        """Who is this? The gallery's top_k (1..100) matches; identity "unknown" below the threshold."""
        return await call(lambda p: service.search(p[0][1], p[0][0], top_k, threshold), [image])

    @app.get("/v1/gallery")
    async def gallery() -> dict:
        """The gallery's size, model and identities."""
        return await run_in_threadpool(service.gallery_info)

    @app.post("/v1/gallery/enroll", dependencies=[Depends(require_key)])
    async def enroll(identity: str = Form(...), images: list[UploadFile] = File(...)) -> dict:
        """Add a person: the largest face of each photo; answered once the gallery on disk holds it."""
        return await call(lambda p: service.enroll(identity, p), images)

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

    return BodySizeLimit(app, limits.max_request_bytes)
