"""Identity names as people read them: one spelling per person, whatever the keyboard or the script.

`validate_identity` (gallery.py) says what a name may contain. Here: the same name typed differently
is one name. A name is NFKC-normalised (full-width `ｏｂａｍａ`, ligatures and compatibility forms
become `obama`); two names that differ only in case are the same person (`identity_key`); and a word
that mixes Latin, Cyrillic and Greek letters (`оbama` with a Cyrillic `о`) is refused, since it reads
as one name and is stored as another.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Mapping, Optional

from irface.errors import GalleryError

# Scripts whose letters look alike (a, e, o, p, c, x, ... exist in all three).
_LOOKALIKE_SCRIPTS = ("LATIN", "CYRILLIC", "GREEK")
_WORD = re.compile(r"\w+")


def normalize_identity(name: str) -> str:
    """NFKC form of `name` (compatibility characters folded: full-width, ligatures, superscripts)."""
    return unicodedata.normalize("NFKC", name) if isinstance(name, str) else name


def identity_key(name: str) -> str:
    """What two names must share to be the same person: NFKC, then case-folded."""
    return normalize_identity(name).casefold()


def _script(ch: str) -> Optional[str]:
    if not ch.isalpha():
        return None
    first = unicodedata.name(ch, "").split(" ", 1)[0]
    return first if first in _LOOKALIKE_SCRIPTS else None


def check_lookalikes(name: str) -> str:
    """Refuse (GalleryError) a name with a word mixing Latin, Cyrillic and Greek letters; returns `name`."""
    for word in _WORD.findall(name):
        scripts = sorted({s for s in map(_script, word) if s})
        if len(scripts) > 1:
            raise GalleryError(f"identity name {name!r}: the word {word!r} mixes {' and '.join(s.title() for s in scripts)} "
                               "letters (look-alike characters?); write it in one script")
    return name


class NameTaken(GalleryError):
    """A new identity that is an enrolled one spelled differently (case, NFKC form): refused, 409 in a server."""

    status = 409


def check_spellings(names: Iterable[str], spellings: Mapping[str, set[str]]) -> None:
    """Refuse (NameTaken) a name that is not enrolled itself but whose `identity_key` an enrolled name (in
    `spellings`: key -> names with faces) or an earlier name of `names` already has: one spelling per person.
    The stores call it inside their change (file: the write lock; PostgreSQL: the change's transaction), so
    two processes cannot enrol "Bob" and "bob" at once."""
    first: dict[str, str] = {}
    for name in dict.fromkeys(names):
        key = identity_key(name)
        taken = spellings.get(key, set()) | ({first[key]} if key in first else set())
        if taken and name not in taken:
            raise name_taken(name, min(taken))
        first.setdefault(key, name)


def name_taken(name: str, other: str) -> NameTaken:
    return NameTaken(f"identity {name!r} already exists as {other!r} (names are compared ignoring case and "
                     "character forms); enrol under that name")
