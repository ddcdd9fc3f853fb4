"""`irface verify`: compare two face images."""

from irface.cli._stub import register_stub


def register(sub) -> None:
    register_stub(sub, "verify", "Compare two face images")
