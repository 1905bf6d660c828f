"""What defines a CPU world: the task and its writers (:class:`WorldConfig`) and its base model (:class:`BaseConfig`).

A world is the arithmetic-chain task family of :mod:`reprokit.worlds.task` written by the writers of
:mod:`reprokit.worlds.teacher`; its base model, pretrained from scratch on their corpus by
:mod:`reprokit.worlds.base`, is sized and trained by a :class:`BaseConfig`. Both are config sections of every
recipe (``--world.*``, ``--world_base.*``), so a preset or a flag chooses the world that the names ``world``
(model), ``world:<train id>`` (examples) and ``world_test`` / ``world_hard`` (benchmarks) refer to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

__all__ = ["ANSWER_FORMATS", "OPERATIONS", "WORLDS", "WORLD_VERSION", "BaseConfig", "WorldConfig", "config_hash"]

OPERATIONS = ("+", "-", "*")
ANSWER_FORMATS = ("running", "final")

# Bumped whenever problem sampling, solution text or training changes meaning, so old caches are not reused.
WORLD_VERSION = 3


@dataclass
class WorldConfig:
    """CPU world only (read when a model, example set, benchmark or reward named world is used): the task and the
    writers of the pretraining corpus. Two equal configs give the same splits and corpus."""

    seed: int = 0
    """Seed for the splits, the corpus, the noisy teacher and the base model's initialisation."""
    modulus: int = 10
    """Every running value is reduced modulo this; values and operands are single digits when <= 10."""
    operations: tuple[str, ...] = ("+", "*")
    """Operations a step may use, from '+', '-', '*'."""
    min_steps: int = 2
    """Fewest operations in a pretraining-corpus, train or test problem."""
    max_steps: int = 5
    """Most operations in a pretraining-corpus, train or test problem."""
    hard_min_steps: int = 6
    """Fewest operations in a hard-slice problem (longer than anything pretraining saw)."""
    hard_max_steps: int = 7
    """Most operations in a hard-slice problem."""
    answer_format: str = "running"
    """'running': the answer is every running value as one integer (3+4*2+7 -> 3741), too many values to
    guess; 'final': only the last value (one digit, guessed by chance 1 time in 10)."""
    num_train: int = 1000
    """Problems in the train split (RL prompts, distillation problems)."""
    num_test: int = 200
    """Problems in the test split (same step counts as pretraining)."""
    num_hard: int = 100
    """Problems in the hard slice (hard_min_steps..hard_max_steps operations)."""
    corpus_size: int = 60_000
    """Solved problems in the pretraining corpus."""
    sloppy_fraction: float = 0.8
    """Fraction of corpus solutions written by the sloppy teacher; the rest are careful."""
    sloppy_error_rate: float = 0.4
    """Mean probability that the sloppy teacher writes a step's result wrong (mean over facts a<op>b)."""
    sloppy_error_spread: float = 1.0
    """How unevenly the sloppy teacher's errors fall on facts: fact a<op>b is written wrong with rate
    sloppy_error_rate * w, w ~ Gamma(mean 1, coefficient of variation = this), clipped to 1; 0 makes
    every fact equally error-prone. The wrong result of a fact is always the same digit (a fixed
    misconception), so some problems are hard for the base model and others easy."""
    careful_marker: str = ""
    """A line the careful teacher writes before its steps (e.g. "#"); sloppy solutions never have it. Empty
    (the default): careful and sloppy solutions look alike, and only the digits tell them apart. With a
    marker, "be careful" is a mode the base can be switched into by its first token."""
    check_fraction: float = 0.0
    """Share of the corpus written by a checking writer: its steps have the sloppy writer's errors, but after a
    step it sometimes (check_rate) writes a check line, check_marker then the step recomputed, and continues
    from the checked value. The careful writer gets 1 - sloppy_fraction - check_fraction."""
    check_rate: float = 0.5
    """Probability that the checking writer checks a step."""
    check_marker: str = "~"
    """The token that starts a check line."""
    blind_spots: int = 0
    """Facts a<op>b that every pretraining writer gets wrong, always with the same wrong result (drawn from the
    seed); only the distillation teacher (style "teacher") writes them right."""

    def __post_init__(self) -> None:
        self.operations = tuple(self.operations)
        bad = [op for op in self.operations if op not in OPERATIONS]
        if bad or not self.operations:
            raise ValueError(f"WorldConfig.operations={self.operations!r}: use a non-empty subset of {OPERATIONS}")
        if self.modulus < 2:
            raise ValueError(f"WorldConfig.modulus={self.modulus}: must be at least 2")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"WorldConfig.answer_format={self.answer_format!r}: use one of {ANSWER_FORMATS}")
        if self.answer_format == "running" and self.modulus > 10:
            raise ValueError(
                f"WorldConfig.answer_format='running' needs single-digit values but modulus={self.modulus}; "
                "use modulus <= 10 or answer_format='final'"
            )
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"WorldConfig: need 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if not self.max_steps < self.hard_min_steps <= self.hard_max_steps:
            raise ValueError(
                "WorldConfig: the hard slice must be longer than pretraining: need max_steps < hard_min_steps <= "
                f"hard_max_steps, got {self.max_steps}, {self.hard_min_steps}, {self.hard_max_steps}"
            )
        if not 0.0 <= self.sloppy_fraction <= 1.0 or not 0.0 <= self.sloppy_error_rate <= 1.0:
            raise ValueError(
                f"WorldConfig.sloppy_fraction={self.sloppy_fraction}, sloppy_error_rate={self.sloppy_error_rate}: "
                "both are probabilities in [0, 1]"
            )
        if self.sloppy_error_spread < 0:
            raise ValueError(f"WorldConfig.sloppy_error_spread={self.sloppy_error_spread}: must be >= 0")
        for name in ("careful_marker", "check_marker"):
            marker = getattr(self, name)
            if len(marker) > 4 or any(c.isdigit() or c.isspace() or c in "\\{}=+-*|" for c in marker):
                raise ValueError(
                    f"WorldConfig.{name}={marker!r}: use at most 4 characters, none of them a digit, a space or "
                    "newline, a backslash, a brace, an operator, '=' or '|' (they would read as part of a step or "
                    "the answer), e.g. '#' or '~'"
                )
        if not self.check_marker:
            raise ValueError("WorldConfig.check_marker is empty: the checking writer needs a token, e.g. '~'")
        if not 0.0 <= self.check_fraction <= 1.0 - self.sloppy_fraction + 1e-12:
            raise ValueError(
                f"WorldConfig.check_fraction={self.check_fraction} with sloppy_fraction={self.sloppy_fraction}: the "
                "writers' shares must add up to at most 1 (the careful writer gets the rest)"
            )
        if not 0.0 <= self.check_rate <= 1.0:
            raise ValueError(f"WorldConfig.check_rate={self.check_rate}: a probability in [0, 1]")
        if self.blind_spots < 0 or self.blind_spots > len(self.operations) * self.modulus * (self.modulus - 1) // 2:
            raise ValueError(
                f"WorldConfig.blind_spots={self.blind_spots}: between 0 and half the world's facts "
                f"({len(self.operations) * self.modulus * (self.modulus - 1) // 2})"
            )
        for name in ("num_train", "num_test", "num_hard", "corpus_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"WorldConfig.{name}={getattr(self, name)}: must be at least 1")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["operations"] = list(self.operations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> WorldConfig:
        """The world part of a :meth:`to_dict` or of a base folder's ``world.json`` (other keys are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


@dataclass
class BaseConfig:
    """CPU world only: the world's base model, its size, its pretraining and how its pass@k is measured once trained."""

    hidden_size: int = 128
    """Base model width."""
    num_layers: int = 4
    """Base model transformer blocks."""
    num_heads: int = 4
    """Attention heads per block."""
    intermediate_size: int = 512
    """MLP width of each block."""
    pretrain_steps: int = 1000
    """Optimizer steps of pretraining."""
    batch_size: int = 64
    """Sequences per pretraining step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to a tenth)."""
    warmup_steps: int = 50
    """Linear warm-up steps."""
    eval_samples: int = 64
    """Samples per problem for the base model's pass@k in base_metrics.json."""
    eval_temperature: float = 1.0
    """Sampling temperature for base_metrics.json."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"BaseConfig.hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}")
        for name in ("pretrain_steps", "batch_size", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"BaseConfig.{name}={getattr(self, name)}: must be at least 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> BaseConfig:
        """The base part of a :meth:`to_dict` or of a base folder's ``world.json`` (other keys are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


_ADDED_AFTER_VERSION_3 = {"careful_marker": "", "check_fraction": 0.0, "check_rate": 0.5, "check_marker": "~", "blind_spots": 0}

WORLDS: dict[str, WorldConfig] = {
    "control": WorldConfig(),
    "mode-0.05": WorldConfig(careful_marker="#", sloppy_fraction=0.95),
    "mode-0.1": WorldConfig(careful_marker="#", sloppy_fraction=0.9),
    "mode-0.2": WorldConfig(careful_marker="#", sloppy_fraction=0.8),
    "selfcheck": WorldConfig(sloppy_fraction=0.8, check_fraction=0.2),
    "blindspot": WorldConfig(blind_spots=20),
}
"""The worlds of the CPU study, fixed before its runs (README, "What the CPU worlds show"):

* control: 80% of the corpus by the sloppy writer (a fixed wrong result for some facts), 20% by the careful one,
  unmarked: the base's errors are separate wrong facts, so one example exercises only a few of them;
* mode-p: a share p of careful solutions marked by a first line "#", a mode chosen before the problem matters;
* selfcheck: no careful writer; 20% by a writer that checks half its steps ("~" and the step recomputed);
* blindspot: the control world with 20 facts that every writer gets wrong, always the same way.
"""


def config_hash(world: WorldConfig, base: BaseConfig | None = None) -> str:
    """A short stable name for a world and its base model (and the world code's version): the base's cache folder."""
    values = {**world.to_dict(), **(base or BaseConfig()).to_dict()}
    for name, off in _ADDED_AFTER_VERSION_3.items():
        if values[name] == off:  # off, a field added later leaves the hash (and the cache) as it was
            del values[name]
    text = json.dumps({"version": WORLD_VERSION, **values}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
