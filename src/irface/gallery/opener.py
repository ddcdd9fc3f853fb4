"""One way in: a gallery argument is a file path or a `postgresql://` URL; these pick the store.

Every caller (the CLI, the server, `irface.gallery.photos`) opens and creates galleries through
`open_gallery` / `create_gallery`, so a new store is one more branch here, not in every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from irface.errors import GalleryError
from irface.gallery.gallery import Gallery
from irface.gallery.pg import PgGallery, is_url, redact


def describe(spec: Any) -> str:
    """How messages name a gallery argument: the file, or the URL without its password."""
    return redact(spec) if is_url(spec) else str(spec)


def open_gallery(spec: str | Path, *, fingerprint: Optional[str] = None,
                 create: Optional[dict[str, Any]] = None) -> Gallery:
    """Open the gallery `spec` names (checked whole; with `fingerprint`, refused if made by another model).

    `create`: the settings of `create_gallery` for a gallery that does not exist yet (a missing file, an
    empty database): it is made empty and stored at once (`irface serve --gallery` on a new name).
    """
    if is_url(spec):
        return PgGallery.open(str(spec), fingerprint=fingerprint, create=create)
    path = Path(spec)
    if create is not None and not path.exists():
        gallery = Gallery.create(path, **create)
        gallery.save()
        return gallery
    return Gallery.open(path, fingerprint=fingerprint)


def create_gallery(spec: str | Path, **settings: Any) -> Gallery:
    """A new, empty gallery (`Gallery.create`'s settings) in a file or an empty database; `save()` stores it."""
    if is_url(spec):
        return PgGallery.create(str(spec), **settings)
    return Gallery.create(spec, **settings)


def copy_gallery(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Copy a gallery between stores (file <-> PostgreSQL, or file to file), exactly: the same face ids, rows,
    embeddings (bit for bit), pictures, templates and index settings. DST must not hold a gallery yet."""
    if not is_url(dst) and Path(dst).exists():
        raise GalleryError(f"{dst}: exists; copy writes a new gallery (remove it first, or give another name)")
    source = open_gallery(src)
    try:
        s = source.settings()
        target = create_gallery(dst, fingerprint=s["fingerprint"], embedding_size=s["embedding_size"],
                                index=s["index"], templates=s["templates"], model=s["model"], params=s["params"])
        try:
            target.created = s["created"]
            target.import_all(source)
            if not is_url(dst):
                target.save()
            faces, identities = len(target), len(target.identities())
        finally:
            target.close()
    finally:
        source.close()
    return {"source": describe(src), "destination": describe(dst), "faces": faces, "identities": identities}
