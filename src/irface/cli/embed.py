"""`irface embed`: embed aligned face images into L2-normalised vectors."""

from irface.cli._stub import register_stub


def register(sub) -> None:
    register_stub(sub, "embed", "Embed aligned face images into L2-normalised vectors")
