"""1:N face search: a gallery of enrolled faces (faiss index + metadata table), in one checked file or in
PostgreSQL (many processes); `open_gallery` / `create_gallery` take either a path or a `postgresql://` URL."""

from irface.errors import GalleryError, GalleryUnavailable
from irface.infer.fingerprint import model_fingerprint
from irface.gallery.gallery import UNKNOWN, Gallery, Match, decision, validate_identity
from irface.gallery.index import INDEX_KINDS
from irface.gallery.opener import copy_gallery, create_gallery, describe, open_gallery
from irface.gallery.pg import PgGallery, is_url

__all__ = ["INDEX_KINDS", "UNKNOWN", "Gallery", "GalleryError", "GalleryUnavailable", "Match", "PgGallery",
           "copy_gallery", "create_gallery", "decision", "describe", "is_url", "model_fingerprint", "open_gallery",
           "validate_identity"]
