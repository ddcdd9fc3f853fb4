"""Options shared by the commands that run the photo pipeline on Ray Data (`irface embed --ray`, `irface gallery
build --ray`): declared once here, read back by `ray_options`. Building the parser imports no ray and no torch."""

from __future__ import annotations

import argparse
from typing import Any, Optional, Sequence

from irface.cli._faces import DETECTOR_DEFAULTS, detector_options
from irface.errors import ConfigError

LOCAL = "local"  # --ray without an address
# Photos per shard when --shard-size is not given (declared here: building the parser imports no irface.infer).
DEFAULT_SHARD_SIZE = 1000
RAY_GROUP = "many photos on Ray Data (needs the ray extra: pip install 'irface[ray]'; docs/scaling.md)"
# The options of the group besides --ray itself: `args` attribute -> its default (given when it differs).
_TUNING = {"shard_size": None, "actors": 0, "ray_cpus": None}


def add_ray_arguments(p: argparse.ArgumentParser, ray_help: str) -> argparse._ArgumentGroup:
    """--ray [ADDRESS] (`ray_help`: what the command does with it), --shard-size, --actors, --ray-cpus; returns
    the group, for a command's own Ray options."""
    r = p.add_argument_group(RAY_GROUP)
    r.add_argument("--ray", nargs="?", const=LOCAL, default=None, metavar="ADDRESS",
                   help=ray_help + ". ADDRESS: a Ray cluster's head (host:6379); without it a local Ray on this "
                                   "machine's CPUs")
    r.add_argument("--shard-size", type=int, default=None, metavar="N",
                   help=f"photos per shard: the unit of work, of output file and of resuming (default {DEFAULT_SHARD_SIZE})")
    r.add_argument("--actors", type=int, default=0, metavar="N",
                   help="model actors (default: one per GPU; on CPUs only, a quarter of the cluster's CPUs)")
    r.add_argument("--ray-cpus", type=int, default=None, metavar="N",
                   help="CPUs of the local Ray (default: this machine's); ignored with ADDRESS")
    return r


def refuse_without_ray(args: argparse.Namespace, also: Sequence[str] = ()) -> None:
    """ConfigError when an option of the Ray group (or one of `also`, a command's own: --shards) is given
    without --ray."""
    defaults = {**{a: None for a in also}, **_TUNING}
    if args.ray is None and any(getattr(args, a) != default for a, default in defaults.items()):
        names = [f"--{a.replace('_', '-')}" for a in defaults]
        raise ConfigError(f"{', '.join(names[:-1])} and {names[-1]} go with --ray")


def ray_options(args: argparse.Namespace) -> dict[str, Any]:
    """`irface.infer.ray_embed.embed_to_shards`' keyword arguments from the group above and the face options
    (`irface.cli._faces`): where Ray runs, the shards, the actors, the detector's settings."""
    options = detector_options(args)
    detector: Optional[dict[str, Any]] = None if options == {k: DETECTOR_DEFAULTS[k] for k in options} else options
    return {"address": None if args.ray == LOCAL else args.ray, "num_cpus": args.ray_cpus,
            "shard_size": args.shard_size or DEFAULT_SHARD_SIZE, "actors": args.actors,
            "batch_size": args.batch_size, "mode": args.face_mode, "detector": detector,
            "progress": args.progress, "verbose": args.verbose}
