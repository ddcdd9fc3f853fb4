"""`irface serve`: the REST API and the web page."""

from __future__ import annotations

import argparse
import logging
import os

from irface.cli._faces import add_detector_arguments, detector_from_args
from irface.cli._model import add_model_arguments, model_from_args

log = logging.getLogger(__name__)

API_KEY_ENV = "IRFACE_API_KEY"


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="Serve the model over HTTP: REST API, OpenAPI docs and a web page",
        description="Load the model once and answer POST /v1/detect, /v1/embed, /v1/verify, /v1/search, "
                    "/v1/gallery/enroll, DELETE /v1/gallery/{identity} and GET /v1/health; the page at / "
                    "compares two photos, searches the gallery and enrolls people. See docs/serve.md.")
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="checkpoint, run folder, .pth, .safetensors, .onnx or TorchScript")
    p.add_argument("--gallery", metavar="G", help="gallery to search and enroll into (created empty if new)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name clients may reach the server by (Host header), besides the --host address "
                        "(and loopback names on loopback); repeat for more. Others are refused (DNS rebinding)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"key that gallery changes must carry (header X-API-Key); default: ${API_KEY_ENV}")
    p.add_argument("--threshold", type=float, help="cosine similarity above which two faces are the same person "
                                                   "(default: the model's, else 0.28)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body in MB (default 20)")
    # Pixel defaults: irface.serve.Limits's (not imported here: it would load the model stack for every command).
    p.add_argument("--max-pixels", type=int,
                   help="largest image in pixels, checked before decoding (default 40,000,000)")
    p.add_argument("--max-request-pixels", type=int,
                   help="most pixels of all the images of one request together, checked before decoding "
                        "(default 200,000,000)")
    p.add_argument("--max-decoding-pixels", type=int,
                   help="most pixels the server holds decoded at once, all requests together; photos wait "
                        "their turn (default: twice --max-pixels)")
    add_model_arguments(p)
    add_detector_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from irface.errors import ConfigError
    from irface.serve import FaceService, Limits, create_app
    from irface.serve.hosts import AllowedHosts
    from irface.serve.http import server_config

    check_exposure(args.host, args.api_key, args.allowed_host)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: use 1..65535")
    given = {"max_pixels": args.max_pixels, "max_request_pixels": args.max_request_pixels,
             "max_decoding_pixels": args.max_decoding_pixels}
    limits = Limits(max_request_bytes=int(args.max_upload_mb * 1024 * 1024),
                    **{k: v for k, v in given.items() if v is not None})
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("irface serve needs the serve extra: pip install 'irface[serve]'") from None
    from irface.device import resolve_device

    detector = detector_from_args(args, device=resolve_device(args.device).type)
    service = FaceService.open(model_from_args(args), args.gallery, detector=detector, threshold=args.threshold)
    allowed = AllowedHosts(args.host, args.allowed_host)
    app = create_app(service, api_key=args.api_key or None, limits=limits, allowed_hosts=allowed)
    log.info("irface serve: http://%s:%d/ (API docs at /docs); answers to %s", args.host, args.port,
             allowed.describe())
    uvicorn.Server(server_config(app, args.host, args.port)).run()
    return 0


def check_exposure(host: str, api_key: str | None, allowed_hosts: list[str]) -> None:
    """Refuse to open the gallery to the network without a key; warn when only addresses may be used."""
    from irface.errors import ConfigError
    from irface.serve.hosts import WILDCARD_HOSTS, is_loopback

    if is_loopback(host):
        return
    if not api_key:
        raise ConfigError(f"--host {host}: listening beyond this machine without --api-key (or ${API_KEY_ENV}) "
                          "would let anyone who reaches the port enrol and remove people; set a key")
    if host in WILDCARD_HOSTS and not allowed_hosts:
        log.warning("listening on %s: clients must use the server's IP address; add --allowed-host NAME for "
                    "each name they reach it by (requests naming other hosts are refused)", host or "every address")
