"""Rebuild the pretrained bases shipped with the package: ``python -m reprokit.worlds [world names]``.

Each study world of :data:`reprokit.worlds.config.WORLDS` is pretrained from scratch (about 5 minutes each on
two idle cores; cached bases are reused) and copied into ``reprokit/worlds/bases/<name>/``.
"""

import argparse

from reprokit.worlds.base import ship_bases
from reprokit.worlds.config import WORLDS

parser = argparse.ArgumentParser(prog="python -m reprokit.worlds", description=__doc__.splitlines()[0])
parser.add_argument("names", nargs="*", help=f"world names (default: all of {', '.join(WORLDS)})")
parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the idle cores)")
args = parser.parse_args()
ship_bases(args.names, threads=args.threads)
