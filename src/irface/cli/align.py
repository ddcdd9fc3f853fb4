"""`irface align`: align a face to the 112x112 template from 5 landmarks."""

from irface.cli._stub import register_stub


def register(sub) -> None:
    register_stub(sub, "align", "Align a face to the 112x112 template from 5 landmarks")
