"""`irface demo`: generate data, train, evaluate, export and verify end to end."""

from irface.cli._stub import register_stub


def register(sub) -> None:
    register_stub(sub, "demo", "Generate data, train, evaluate, export and verify end to end")
