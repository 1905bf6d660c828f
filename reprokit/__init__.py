"""reprokit: reproduce and adapt RL-with-verifiable-rewards findings on one GPU."""

__version__ = "0.1.0"
