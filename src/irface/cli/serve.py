"""`irface serve`: the REST API and the web page."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from irface.cli._faces import add_detector_arguments, detector_from_args
from irface.cli._model import add_model_argument, add_model_arguments, model_from_args
from irface.infer.settings import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)

API_KEY_ENV = "IRFACE_API_KEY"


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="Serve the model over HTTP: REST API, OpenAPI docs and a web page",
        description="Load the model once and answer POST /v1/detect, /v1/embed, /v1/verify, /v1/search, "
                    "/v1/gallery/enroll, DELETE /v1/gallery/{identity} and GET /v1/health; the page at / "
                    "compares two photos, searches the gallery and enrolls people. See docs/serve.md.")
    add_model_argument(p)
    p.add_argument("--gallery", metavar="G", help="gallery to search and enroll into (created empty if new)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"key that gallery changes must carry (header X-API-Key); default: ${API_KEY_ENV}")
    p.add_argument("--threshold", type=float, help="cosine similarity above which two faces are the same person "
                                                   f"(default: the model's, else {DEFAULT_THRESHOLD:g})")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body in MB (default 20)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="largest image in pixels, checked before decoding (default 40,000,000)")
    add_model_arguments(p)
    add_detector_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.errors import ConfigError
    from irface.serve import FaceService, Limits, create_app

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: use 1..65535")
    limits = Limits(max_request_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels)
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("irface serve needs the serve extra: pip install 'irface[serve]'") from None
    from irface.device import resolve_device

    detector = detector_from_args(args, device=resolve_device(args.device).type)
    service = FaceService.open(model_from_args(args), args.gallery, detector=detector, threshold=args.threshold)
    app = create_app(service, api_key=args.api_key or None, limits=limits)
    if not _is_loopback(args.host) and not args.api_key:
        log.warning("listening on %s without --api-key: anyone who reaches this port can change the gallery",
                    args.host)
    log.info("irface serve: http://%s:%d/ (API docs at /docs)", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
