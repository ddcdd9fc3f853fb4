"""`irface eval`: verification accuracy on .bin sets (LFW, CFP-FP, AgeDB-30, ...)."""

from irface.cli._stub import register_stub


def register(sub) -> None:
    register_stub(sub, "eval", "Verification accuracy on .bin sets (LFW, CFP-FP, AgeDB-30, ...)")
