"""`irface data`: inspect, pack, unpack and synthesise datasets."""

from irface.cli._stub import register_stub


def register(sub) -> None:
    register_stub(sub, "data", "Inspect, pack, unpack and synthesise datasets")
