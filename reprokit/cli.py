"""The one command-line parser of every recipe: typed sections, presets, ``--config``, ``--resume`` and short flags.

A recipe describes its command line once, as a :class:`Recipe` (its name, its sections as dataclasses whose
field docstrings are the ``--help`` texts), and :func:`parse` does the rest the same way for all of them:

* precedence: defaults < ``--preset NAME`` (``presets/<recipe>/NAME.yaml``; without one, the recipe's default,
  ``cpu`` where there is no CUDA device) < ``--config FILE.yaml`` < flags;
* ``--resume`` (training recipes) starts from the run directory's saved ``config.yaml``; later flags such as
  ``--max_steps`` still win;
* every field whose name is unique across the sections may be written without its section: ``--max_steps 3``
  is ``--run.max_steps 3``, ``--models a=b c=d`` is ``--eval.models '["a=b", "c=d"]'``, a bare boolean flag
  (``--regrade``) is true;
* the config sections of :mod:`reprokit.registry` (the CPU world's ``--world.*`` and ``--world_base.*``) are
  in every recipe, and their parsed values are handed to the registry for the names that read them;
* a key that moved to another section fails with a message naming its new place.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace, set_parsing_settings

from reprokit import registry

set_parsing_settings(docstring_parse_attribute_docstrings=True)

__all__ = [
    "PAPER_PRESET",
    "PRESETS_DIR",
    "Parsed",
    "Recipe",
    "gpu_preset",
    "parse",
    "preset_departures",
    "preset_names",
    "preset_path",
    "preset_values",
    "render_value",
]

PRESETS_DIR = Path(os.environ.get("REPROKIT_PRESETS_DIR", Path(__file__).resolve().parents[1] / "presets"))

_GONE = {"grpo.accuracy_file": "every GRPO run writes <run_dir>/example_accuracy.json"}
"""Options that went, and what replaced them."""


@cache
def _moved_keys() -> dict[str, str]:
    """Option spellings that moved, and where to: the GRPO options' single `grpo` section became the rollout, loss
    and train sections (its validation settings went to eval); the prompt options of every recipe's data section
    became the shared prompt section; the CPU world's model settings went to world_base. An old spelling fails
    with a message naming the new one."""
    from reprokit.training.grpo import LossConfig, RolloutConfig, TrainConfig

    moved = {f"grpo.{f.name}": f"{section}.{f.name}" for section, cls in
             (("rollout", RolloutConfig), ("loss", LossConfig), ("train", TrainConfig)) for f in fields(cls)}
    moved |= {f"grpo.val_{name}": f"eval.{name}" for name in ("n", "temperature", "top_p", "max_new_tokens", "reward")}
    moved |= {f"data.{name}": f"prompt.{name}" for name in ("template", "cot_suffix", "max_prompt_length", "drop_long_prompts")}
    moved["grpo.top_entropy_quantile"] = "loss.focal_fraction"
    moved |= {f"world.{name}": f"world_base.{name}" for name in (  # the world's model settings have a section of their own
        "hidden_size", "num_layers", "num_heads", "intermediate_size", "pretrain_steps", "batch_size", "lr",
        "warmup_steps", "eval_samples", "eval_temperature",
    )}
    return moved


def gpu_preset() -> tuple[str, str]:
    """The training recipes' default preset and why: ``cpu`` without CUDA, else by the GPU's memory."""
    if not torch.cuda.is_available():
        return "cpu", "no CUDA device found"
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    if gib >= 20:
        return "qwen2.5-math-1.5b", f"CUDA device with {gib:.0f} GiB"
    return "consumer-12gb", f"CUDA device with {gib:.0f} GiB (< 20 GiB)"


def cpu_preset() -> tuple[str, str] | None:
    """``cpu`` when there is no CUDA device, else no preset (the recipe's own defaults)."""
    return None if torch.cuda.is_available() else ("cpu", "no CUDA device found")


@dataclass
class Recipe:
    """How one recipe's command line looks."""

    name: str
    """The module under reprokit.recipes and the folder of its presets under recipes/."""
    description: str
    """The first paragraph of --help."""
    sections: dict[str, type]
    """Section name -> dataclass; the name "" adds the dataclass's fields without a prefix (--model, --n)."""
    run_dir_key: str = "run.run_dir"
    """Where the run directory is (for --resume and its saved config)."""
    resumable: bool = False
    """Whether --resume continues a run from its saved config.yaml."""
    default_preset: Callable[[], tuple[str, str] | None] | None = None
    """Returns (preset, why) when no --preset / --config is given, or None for the recipe's own defaults."""
    aliases: dict[str, list[str]] = field(default_factory=dict)
    """Flags that stand for others: {"--quick": ["--preset", "quick"]}."""
    no_short_flags: tuple[str, ...] = ()
    """Field names that keep their section prefix (too vague alone, e.g. path)."""
    registry_sections: bool = True
    """Add the registry's config sections (--world.*, --world_base.*)."""


@dataclass
class Parsed:
    """A parsed command line: the namespace, the instantiated sections, what was decided and how."""

    recipe: Recipe
    parser: ArgumentParser
    cfg: Namespace
    init: Namespace
    notes: list[str]

    def section(self, name: str) -> Any:
        """The instantiated dataclass of a section ("" = the flat one)."""
        if name:
            return self.init[name]
        cls = self.recipe.sections[""]
        return cls(**{f.name: self.init[f.name] for f in fields(cls)})

    @property
    def resume(self) -> bool:
        return bool(self.cfg.get("resume"))

    def save(self, run_dir: Path) -> Path:
        """Write the resolved config (every option, defaults included) to ``run_dir/config.yaml``."""
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "config.yaml"
        clean = self.cfg.clone()
        for key in ("config", "resume", "preset"):
            if key in clean:
                del clean[key]
        path.write_text(self.parser.dump(clean, skip_unset=False, skip_validation=True))
        return path

    def print_notes(self) -> None:
        for note in self.notes:
            print(f"[reprokit] {note}")


def preset_names(recipe: str) -> list[str]:
    folder = PRESETS_DIR / recipe
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def preset_path(recipe: str, name: str) -> Path:
    path = PRESETS_DIR / recipe / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(preset_names(recipe)) or "none found"
        raise SystemExit(f"--preset {name}: no file {path}. Presets of {recipe}: {names}; or pass --config FILE.yaml")
    return path


PAPER_PRESET = "paper"
"""The preset holding a paper's own settings (presets/<recipe>/paper.yaml); the others' departures are diffs from it."""

_NOT_SETTINGS = ("run.run_dir", "run.description")


def preset_values(recipe: Recipe, preset: str) -> dict[str, Any]:
    """Every setting of ``preset`` (defaults included) as ``{"section.field": value}``, for the recipe's own sections."""
    parser = build_parser(recipe)
    cfg = parser.parse_args(["--config", str(preset_path(recipe.name, preset))])
    values = {}
    for section, cls in recipe.sections.items():
        for f in fields(cls):
            key = f"{section}.{f.name}" if section else f.name
            if key not in _NOT_SETTINGS:
                values[key] = cfg[key]
    return values


def preset_departures(recipe: Recipe, preset: str, reference: str = PAPER_PRESET) -> list[tuple[str, Any, Any]]:
    """``(setting, the paper's value, the preset's value)`` for every setting in which ``preset`` differs from the
    ``reference`` preset, in the recipe's section order."""
    paper, mine = preset_values(recipe, reference), preset_values(recipe, preset)
    return [(key, paper[key], mine[key]) for key in paper if paper[key] != mine[key]]


def render_value(value: Any) -> str:
    """A setting as its YAML preset writes it (2.0e-05, null, [math500, aime24])."""
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("...").strip()


def _print_departures(recipe: Recipe, preset: str) -> None:
    rows = preset_departures(recipe, preset)
    print(f"{preset} against {PAPER_PRESET} ({preset_path(recipe.name, PAPER_PRESET)}): {len(rows)} settings differ")
    width = max((len(key) for key, _, _ in rows), default=7)
    for key, paper, mine in rows:
        print(f"  {key:<{width}}  {render_value(paper):>14}  ->  {render_value(mine)}")
    print("README.md gives each one's reason and expected effect.")


def build_parser(recipe: Recipe) -> ArgumentParser:
    parser = ArgumentParser(
        prog=f"python -m reprokit.recipes.{recipe.name}",
        usage=f"python -m reprokit.recipes.{recipe.name} [--preset NAME] [--config FILE.yaml] [--SECTION.OPTION VALUE ...]",
        description=recipe.description,
        epilog=(
            "An option whose name is unique may be written without its section (--max_steps 3 for --run.max_steps 3); "
            "list options take space-separated values (--benchmarks math500 aime24). Precedence: defaults < --preset "
            "< --config < flags."
        ),
        default_env=False,
    )
    presets = preset_names(recipe.name)
    if presets:
        parser.add_argument("--preset", type=str | None, default=None, help=f"Preset from presets/{recipe.name}/ ({', '.join(presets)})")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (a copied and edited preset); later flags override it")
    if recipe.resumable:
        parser.add_argument("--resume", action=ActionYesNo, default=False, help="Continue the run in its run directory from its last checkpoint, with its saved config")
    if PAPER_PRESET in presets:
        parser.add_argument("--departures", action=ActionYesNo, default=False, help=f"Print the settings in which --preset differs from the paper's own ({PAPER_PRESET}) and exit")
    for name, cls in _sections(recipe).items():
        if name:
            parser.add_class_arguments(cls, name, as_group=True)
        else:
            parser.add_class_arguments(cls, as_group=True)
    return parser


def parse(recipe: Recipe, argv: list[str] | None = None) -> Parsed:
    """Parse the command line of ``recipe``: defaults < preset < --config files < flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for alias, meaning in recipe.aliases.items():
        argv = [part for a in argv for part in (meaning if a == alias else [a])]
    argv = expand_short_flags(recipe, argv)
    _refuse_renamed(argv, recipe)
    if "--departures" in argv:
        chosen = _flag_value(argv, "--preset") or (recipe.default_preset() or (None, ""))[0] if recipe.default_preset else _flag_value(argv, "--preset")
        if PAPER_PRESET not in preset_names(recipe.name) or not chosen:
            raise SystemExit(f"--departures compares a preset with presets/{recipe.name}/{PAPER_PRESET}.yaml: give --preset NAME")
        _print_departures(recipe, chosen)
        raise SystemExit(0)
    parser = build_parser(recipe)
    notes: list[str] = []
    preset = _flag_value(argv, "--preset")
    resume = recipe.resumable and "--resume" in argv
    has_config = any(a == "--config" or a.startswith("--config=") for a in argv)
    if resume:
        run_dir = _flag_value(argv, "--" + recipe.run_dir_key)
        saved = Path(run_dir) / "config.yaml" if run_dir else None
        if saved is None or not saved.is_file():
            short = recipe.run_dir_key.rpartition(".")[2]
            raise SystemExit(f"--resume needs --{short} pointing at an earlier run (no config.yaml in {run_dir})")
        saved = _with_moved_keys_translated(saved, recipe, notes)
        argv = ["--config", str(saved)] + _drop_flag(argv, "--preset")
        notes.append(f"resuming {run_dir} with its saved config")
        preset = None
    elif preset is None and not has_config and recipe.default_preset is not None:
        chosen = recipe.default_preset()
        if chosen is not None:
            preset, why = chosen
            notes.append(f"no --preset given: using preset '{preset}' ({why})")
    if preset is not None:
        path = preset_path(recipe.name, preset)
        argv = ["--config", str(path)] + ([] if "--preset" in argv else ["--preset", preset]) + argv
        if not notes:
            notes.append(f"preset '{preset}'")
    for i, arg in enumerate(argv):
        if i and argv[i - 1] == "--config":
            _refuse_renamed_in_file(Path(arg), recipe)
    cfg = parser.parse_args(argv)
    init = parser.instantiate(cfg)
    if recipe.registry_sections:
        for name in registry.names("section"):
            registry.configure(name, init[name])
    return Parsed(recipe=recipe, parser=parser, cfg=cfg, init=init, notes=notes)


def _sections(recipe: Recipe) -> dict[str, type]:
    sections = dict(recipe.sections)
    if recipe.registry_sections:
        for name in registry.names("section"):
            if name not in sections:
                sections[name] = registry.resolve("section", name)
    return sections


def short_flags(recipe: Recipe) -> dict[str, tuple[str, Any]]:
    """``--field`` -> (``--section.field``, its type) for every field whose name is unique across the recipe's own
    sections (``--max_steps`` is the run's); a field of a registry section (``--world.*``) gets one only when no
    other section has that name."""
    def table(sections: dict[str, type]) -> dict[str, list[tuple[str, Any]]]:
        seen: dict[str, list[tuple[str, Any]]] = {}
        for section, cls in sections.items():
            for f in fields(cls) if section else ():
                seen.setdefault(f.name, []).append((f"--{section}.{f.name}", f.type))
        return seen

    own = table(recipe.sections)
    every = table(_sections(recipe))
    names = set(_sections(recipe))
    out = {}
    for name, targets in every.items():
        if name in names or name in recipe.no_short_flags:
            continue
        if len(own.get(name, ())) == 1:
            out[f"--{name}"] = own[name][0]
        elif name not in own and len(targets) == 1:
            out[f"--{name}"] = targets[0]
    return out


def expand_short_flags(recipe: Recipe, argv: list[str]) -> list[str]:
    """``--models a=b c=d`` -> ``--eval.models=["a=b","c=d"]``; a bare boolean flag (``--regrade``) means true."""
    table = short_flags(recipe)
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag not in table:
            out.append(arg)
            i += 1
            continue
        full, kind = table[flag]
        if eq:
            out.append(f"{full}={value}")
            i += 1
            continue
        values = []
        j = i + 1
        while j < len(argv) and not argv[j].startswith("--"):
            values.append(argv[j])
            j += 1
        if "list[" in str(kind) and not (len(values) == 1 and values[0].lstrip().startswith("[")):
            out.append(f"{full}={json.dumps(values)}")
        elif kind in (bool, "bool") and not values:
            out.extend([full, "true"])
        else:
            out.extend([full, *values])
        i = j
    return out


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _drop_flag(argv: list[str], flag: str) -> list[str]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def _has(recipe: Recipe, key: str) -> bool:
    """Whether ``section.field`` is an option of the recipe."""
    section, _, name = key.partition(".")
    return section in recipe.sections and name in {f.name for f in fields(recipe.sections[section])}


def _new_spelling(key: str, recipe: Recipe) -> str | None:
    """Where an option that moved now lives (``section.field``), ``""`` for one that went, None for a current one."""
    if key in _GONE:
        return ""
    moved = _moved_keys().get(key)
    return moved if moved is not None and not _has(recipe, key) else None


def _old_spellings(data, recipe: Recipe) -> dict[str, str]:
    """The moved or gone options of a config's sections: ``section.field`` -> its new place (``""``: gone)."""
    found = {}
    for section, values in data.items() if isinstance(data, dict) else ():
        for key in values if isinstance(values, dict) else ():
            new = _new_spelling(f"{section}.{key}", recipe)
            if new is not None:
                found[f"{section}.{key}"] = new
    return found


def _refuse_renamed(argv: list[str], recipe: Recipe) -> None:
    for arg in argv:
        key = arg.partition("=")[0].removeprefix("--")
        new = _new_spelling(key, recipe)
        if new:
            raise SystemExit(f"--{key} has moved: write --{new}")
        if new == "":
            raise SystemExit(f"--{key} is gone: {_GONE[key]}")


def _with_moved_keys_translated(saved: Path, recipe: Recipe, notes: list[str]) -> Path:
    """A run's saved config as --resume reads it. One saved before options moved sections has them read in their
    new sections (a copy beside it; the run then saves its config in the new layout): a run is resumable whatever
    version of the kit started it, while a config a user writes with an old spelling is refused with the fix."""
    import yaml

    data = yaml.safe_load(saved.read_text()) or {}
    changes = _old_spellings(data, recipe)
    if not changes:
        return saved
    out: dict = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            out[section] = values
            continue
        for key, value in values.items():
            new = changes.get(f"{section}.{key}", f"{section}.{key}")
            if new:
                to_section, _, to_key = new.partition(".")
                out.setdefault(to_section, {})[to_key] = value
    copy = saved.with_name("config.moved-keys.yaml")
    copy.write_text(yaml.safe_dump(out, sort_keys=False))
    notes.append(f"{saved} was saved before {len(changes)} options moved or went: read in their new sections ({copy.name})")
    return copy


def _refuse_renamed_in_file(path: Path, recipe: Recipe) -> None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return  # the parser reports an unreadable file itself
    changes = _old_spellings(data, recipe)
    gone = [f"{old.replace('.', ': ', 1)} ({_GONE[old]})" for old, new in changes.items() if not new]
    moved = [f"{old.replace('.', ': ', 1)} -> {new.replace('.', ': ', 1)}" for old, new in changes.items() if new]
    if moved:
        raise SystemExit(f"{path}: these options have moved to other sections; write them as: {'; '.join(moved)}")
    if gone:
        raise SystemExit(f"{path}: these options are gone: {'; '.join(gone)}")
