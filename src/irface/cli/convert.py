"""`irface convert`: convert foreign checkpoints (MindSpore .ckpt) to irface."""

from irface.cli._stub import register_stub


def register(sub) -> None:
    register_stub(sub, "convert", "Convert foreign checkpoints (MindSpore .ckpt) to irface")
