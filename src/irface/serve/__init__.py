"""`irface serve`: the REST API and web page over the inference pipeline and the gallery.

FastAPI and uvicorn come with the `serve` extra; they are imported only when an app is made.
"""

from irface.serve.app import create_app
from irface.serve.limits import Limits, RequestError, decode_upload
from irface.serve.service import FaceService

__all__ = ["FaceService", "Limits", "RequestError", "create_app", "decode_upload"]
