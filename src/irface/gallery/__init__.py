"""1:N face search: a gallery of enrolled faces (faiss index + metadata table, one checked file)."""

from irface.errors import GalleryError
from irface.gallery.fingerprint import model_fingerprint
from irface.gallery.gallery import UNKNOWN, Gallery, Match, decision, validate_identity
from irface.gallery.index import INDEX_KINDS

__all__ = ["INDEX_KINDS", "UNKNOWN", "Gallery", "GalleryError", "Match", "decision", "model_fingerprint",
           "validate_identity"]
