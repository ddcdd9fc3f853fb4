"""`irface serve`: the REST API and the web page."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from irface.cli._faces import add_detector_arguments, detector_from_args
from irface.cli._model import add_model_argument, add_model_arguments, model_from_args
from irface.infer.settings import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)

API_KEY_ENV = "IRFACE_API_KEY"
# `--workers N`: where each worker process finds the server's settings (a file only this user can read:
# the gallery URL may hold a password, and a command line is visible to every user of the machine).
SETTINGS_ENV = "IRFACE_SERVE_SETTINGS"


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="Serve the model over HTTP: REST API, OpenAPI docs and a web page",
        description="Load the model once and answer POST /v1/detect, /v1/embed, /v1/verify, /v1/search, "
                    "/v1/gallery/enroll, DELETE /v1/gallery/{identity} and GET /v1/health; the page at / "
                    "compares two photos, searches the gallery and enrolls people. See docs/serve.md.")
    add_model_argument(p)
    p.add_argument("--gallery", metavar="G", help="gallery to search and enroll into (created empty if new): a file, "
                                                  "or a PostgreSQL database postgresql://USER@HOST/DB (docs/gallery.md)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes behind the port (default 1); more than one needs a PostgreSQL gallery")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name clients may reach the server by (Host header), besides the --host address "
                        "(and loopback names on loopback); repeat for more. Others are refused (DNS rebinding)")
    p.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"key that gallery changes must carry (header X-API-Key); default: ${API_KEY_ENV}")
    p.add_argument("--threshold", type=float, help="cosine similarity above which two faces are the same person "
                                                   f"(default: the model's, else {DEFAULT_THRESHOLD:g})")
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


def limits_from_args(args: argparse.Namespace):
    """The request limits the flags give (a pixel flag left out keeps `Limits`' default)."""
    from irface.serve import Limits

    given = {"max_pixels": args.max_pixels, "max_request_pixels": args.max_request_pixels,
             "max_decoding_pixels": args.max_decoding_pixels}
    return Limits(max_request_bytes=int(args.max_upload_mb * 1024 * 1024),
                  **{k: v for k, v in given.items() if v is not None})


def build_app(args: argparse.Namespace):
    """The app for these arguments: model, detector, gallery, limits and hosts (one per worker process)."""
    from irface.device import resolve_device
    from irface.serve import FaceService, create_app
    from irface.serve.hosts import AllowedHosts

    limits = limits_from_args(args)
    detector = detector_from_args(args, device=resolve_device(args.device).type)
    service = FaceService.open(model_from_args(args), args.gallery, detector=detector, threshold=args.threshold)
    return create_app(service, api_key=args.api_key or None, limits=limits,
                      allowed_hosts=AllowedHosts(args.host, args.allowed_host))


def worker_app():
    """uvicorn's app factory in each `--workers` process: the settings the parent wrote, its own app."""
    with open(os.environ[SETTINGS_ENV], encoding="utf-8") as f:
        return build_app(argparse.Namespace(**json.load(f)))


def _check_before_workers(args: argparse.Namespace) -> None:
    """Refuse what every worker would refuse, once, in one line, before any worker starts; make a new
    gallery's tables now (workers starting together on an empty database would race to)."""
    from irface.errors import ConfigError
    from irface.gallery import is_url, model_fingerprint
    from irface.gallery.pg import PgGallery

    if args.gallery is not None and not is_url(args.gallery):
        raise ConfigError(f"--workers {args.workers}: a gallery file is served by one process (each worker would "
                          "hold its own copy); use a PostgreSQL gallery (--gallery postgresql://...) or --workers 1")
    limits_from_args(args)  # bad limits: one line here, not one per worker
    if args.gallery is not None:
        embedder = model_from_args(args)
        fingerprint = model_fingerprint(embedder)
        PgGallery.open(args.gallery, fingerprint=fingerprint, load=False,
                       create={"fingerprint": fingerprint, "embedding_size": embedder.embedding_size,
                               "model": embedder.info.get("path")}).close()


def run(args: argparse.Namespace) -> int:
    from irface.errors import ConfigError, import_extra
    from irface.serve.hosts import AllowedHosts
    from irface.serve.http import HEADER_DEADLINE_PROTOCOL, server_config

    check_exposure(args.host, args.api_key, args.allowed_host)
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: use 1..65535")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: use 1 or more")
    uvicorn = import_extra("uvicorn", "irface serve", "serve")
    if args.workers > 1:
        _check_before_workers(args)
    else:
        app = build_app(args)
    log.info("irface serve: http://%s:%d/ (API docs at /docs, %d worker%s); answers to %s", args.host, args.port,
             args.workers, "s" if args.workers > 1 else "", AllowedHosts(args.host, args.allowed_host).describe())
    if args.workers == 1:
        uvicorn.Server(server_config(app, args.host, args.port)).run()
        return 0
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    fd, path = tempfile.mkstemp(prefix="irface-serve-", suffix=".json")  # 0600: this user only
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(settings, f)
        os.environ[SETTINGS_ENV] = path
        # Workers are spawned processes: the header-deadline protocol goes by its import path.
        uvicorn.run("irface.cli.serve:worker_app", factory=True, workers=args.workers, host=args.host,
                    port=args.port, log_level="warning", http=HEADER_DEADLINE_PROTOCOL)
    finally:
        os.environ.pop(SETTINGS_ENV, None)
        with contextlib.suppress(OSError):
            Path(path).unlink()
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
