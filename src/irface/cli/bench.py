"""`irface bench`: measure training, inference, data and eval speed."""

from irface.cli._stub import register_stub


def register(sub) -> None:
    register_stub(sub, "bench", "Measure training, inference, data and eval speed")
