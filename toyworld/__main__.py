"""``python -m toyworld [--force] [--root DIR] [--phrased]``: build (or reuse) the toy world and print its accuracy matrix."""

from __future__ import annotations

import argparse
from pathlib import Path

from toyworld.build import build_toy_world, format_matrix
from toyworld.model import ToyConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toyworld", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if a finished build exists")
    parser.add_argument("--root", type=Path, default=None, help="build directory (default: the content-hash cache)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--phrased",
        action="store_true",
        help="the phrased world (ToyConfig.phrased(): questions in several phrasings, two held out for test)",
    )
    args = parser.parse_args(argv)
    config = ToyConfig.phrased() if args.phrased else None
    world = build_toy_world(args.root, force=args.force, progress=not args.quiet, config=config)
    print(f"root: {world.root}\nspec: {world.spec_path}")
    print(format_matrix(world.accuracy, world.chain_accuracy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
