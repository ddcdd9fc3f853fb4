"""`irface train`: train a backbone and head (one process or under torchrun)."""

from irface.cli._stub import register_stub


def register(sub) -> None:
    register_stub(sub, "train", "Train a backbone and head (one process or under torchrun)")
