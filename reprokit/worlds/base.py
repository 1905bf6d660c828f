"""The world's base model: built from a :class:`~reprokit.worlds.config.BaseConfig`, pretrained on CPU from
scratch on the writers' corpus, cached by config hash, and measured (pass@k on the test split and hard slice).

``pretrain_base(world, base)`` trains a small Llama-architecture model (same module names as the kit's Qwen2.5
base models, so LoRA targets carry over) from random init, saves it with its tokenizer under
``<cache_dir>/<config hash>/`` and measures pass@k on the test split and the hard slice. Later calls with equal
configs only return the path.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from reprokit.metrics.functional import mean_pass_at_k, powers_of_two
from reprokit.training.sft import CausalLMModule, SFTDataModule
from reprokit.worlds.config import BaseConfig, WorldConfig, config_hash
from reprokit.worlds.task import (
    Problem,
    build_tokenizer,
    export_splits,
    make_splits,
    parse_question,
    render_prompt,
)
from reprokit.worlds.task import reward as task_reward
from reprokit.worlds.teacher import build_corpus, max_response_chars

__all__ = [
    "SHIPPED_DIR",
    "build_model",
    "default_cache_dir",
    "existing_base",
    "evaluate_pass_at_k",
    "load_base",
    "load_world_config",
    "pretrain_base",
    "ship_bases",
    "shipped_base",
]

SHIPPED_DIR = Path(__file__).resolve().parent / "bases"
"""The pretrained bases of the study's worlds, one folder per world name (rebuilt by ``python -m reprokit.worlds.base``)."""
_SHIPPED_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
    "world.json", "base_metrics.json",
)


def default_cache_dir() -> Path:
    """``$REPROKIT_CACHE/worlds`` if set, else ``~/.cache/reprokit/worlds``."""
    root = os.environ.get("REPROKIT_CACHE")
    return Path(root) / "worlds" if root else Path.home() / ".cache" / "reprokit" / "worlds"


def _idle_cores() -> int:
    """Cores this process may use minus those other jobs keep busy right now (at least 1).

    "Right now" is the number of runnable tasks other than this one (``/proc/loadavg``, median of a few looks
    over half a second), not the 1-minute load average, which counts this very process's own recent work:
    a test session that has kept one core busy would otherwise train on one thread of an idle machine.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        looks = []
        for _ in range(5):
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            looks.append(running - 1)  # the reading thread itself is runnable
            time.sleep(0.1)
        busy = sorted(looks)[len(looks) // 2]
    except (OSError, ValueError, IndexError):  # no /proc: fall back on the load average
        try:
            busy = round(os.getloadavg()[0])
        except OSError:
            busy = 0
    return max(1, cores - busy)


def build_model(base: BaseConfig, tokenizer: Any, seed: int = 0):
    """A randomly initialised Llama causal LM sized by ``base`` (seeded by ``seed``, the world's).

    Llama rather than Qwen2: for a folder whose config says ``qwen2``, ``AutoTokenizer`` replaces the
    saved character tokenizer with ``Qwen2Tokenizer``, which silently drops the newline character.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=base.hidden_size,
        num_hidden_layers=base.num_layers,
        num_attention_heads=base.num_heads,
        num_key_value_heads=base.num_heads,
        intermediate_size=base.intermediate_size,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def load_base(path: str | Path):
    """(model, tokenizer) saved by :func:`pretrain_base`; the model in eval mode."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from reprokit.policy import quiet_small_load

    with quiet_small_load(path):
        model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return model, PreTrainedTokenizerFast.from_pretrained(path)


def load_world_config(path: str | Path) -> tuple[WorldConfig, BaseConfig]:
    """The configs a base-model folder was built from (its ``world.json``)."""
    values = json.loads((Path(path) / "world.json").read_text())
    return WorldConfig.from_dict(values), BaseConfig.from_dict(values)


def evaluate_pass_at_k(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    n: int,
    ks: Sequence[int],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
    batch_size: int = 512,
    seed: int = 0,
    modulus: int | None = None,
) -> dict:
    """Sample ``n`` solutions per problem (prompt = question + PROMPT_SEPARATOR) and grade them.

    Returns ``{"pass@k": mean unbiased pass@k, ..., "n", "temperature", "top_p", "num_problems",
    "num_correct": [c per problem], "ids": [...], "steps": [...]}``; ks above n are left out.
    ``problems`` may be any objects with ``question`` and ``answer`` (``id``/``steps`` if present).
    ``max_new_tokens`` defaults to the longest solution of the longest problem (values below ``modulus``,
    default 10) plus a margin, so a model that never stops is cut off soon after. Sampling goes through the kit's
    decode loop (:func:`reprokit.sampling.generate`) with a generator seeded by ``seed``.
    """
    from reprokit.sampling import sample_and_grade
    from reprokit.sampling import seeded_generator

    if max_new_tokens is None:
        longest = max(len(parse_question(p.question)[1]) for p in problems)
        max_new_tokens = max_response_chars(longest, 10 if modulus is None else modulus) + 8
    device = next(model.parameters()).device
    prompts_per_call = max(1, batch_size // n)
    correct: list[int] = []
    for begin in range(0, len(problems), prompts_per_call):
        chunk = problems[begin : begin + prompts_per_call]
        enc = tokenizer([render_prompt(p.question) for p in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        graded = sample_and_grade(
            model, tokenizer, enc["input_ids"].to(device), enc["attention_mask"].to(device), [p.answer for p in chunk],
            [{}] * len(chunk), n=n, reward_fn=task_reward, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, generator=seeded_generator(device, seed, "world-pass@k", begin),
        )
        correct += graded.correct()
    ks = [k for k in ks if k <= n]
    out: dict = {f"pass@{k}": value for k, value in (mean_pass_at_k(n, correct, ks) if ks else {}).items()}
    out.update(
        n=n,
        temperature=temperature,
        top_p=top_p,
        num_problems=len(problems),
        num_correct=correct,
        ids=[getattr(p, "id", str(i)) for i, p in enumerate(problems)],
        steps=[getattr(p, "steps", None) for p in problems],
    )
    return out


def pretrain_base(
    cfg: WorldConfig,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    threads: int | None = None,
    base: BaseConfig | None = None,
) -> Path:
    """Pretrain the world's base model (or reuse the shipped or cached one) and return its folder.

    The bases of the study's worlds (:data:`~reprokit.worlds.config.WORLDS`) ship inside the package
    (:func:`shipped_base`), so they are used as they are unless ``cache_dir`` is given; any other config is
    pretrained on first use.

    The folder ``<cache_dir>/<config_hash(cfg, base)>/`` holds the model and tokenizer (``save_pretrained``;
    load with :func:`load_base`), ``world.json`` (the config), ``base_metrics.json`` (parameter count,
    training time, tokens/s, pass@k on test and hard, correct samples per problem out of
    ``base.eval_samples``), ``train/test/hard.jsonl`` and the TensorBoard
    logs. It appears only once complete, so an interrupted run leaves no half-written cache.
    ``threads`` sets ``torch.set_num_threads``; by default it is the number of cores this process may
    use minus those other jobs are using (at least 1), because on a machine shared with other jobs
    busy-waiting OpenMP threads stall each other (measured on 2 busy cores: 1 thread ~4 500 tokens/s,
    2 threads 300-1 200; on 2 idle cores 2 threads ~9 500).
    """
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    base = base or BaseConfig()
    found = existing_base(cfg, base, cache_dir)
    if found is not None:
        if found.parent != SHIPPED_DIR:
            print(f"[reprokit.worlds] base model cached at {found}")
        return found
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    out = cache_dir / config_hash(cfg, base)

    threads = _idle_cores() if threads is None else threads
    torch.set_num_threads(threads)
    print(f"[reprokit.worlds] pretraining the base model into {out} ({threads} CPU threads)")
    tmp = cache_dir / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    splits = make_splits(cfg)
    corpus = build_corpus(cfg, splits)
    tokenizer = build_tokenizer(cfg)
    model = build_model(base, tokenizer, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    L.seed_everything(cfg.seed, verbose=False)
    data = SFTDataModule(corpus, tokenizer, batch_size=base.batch_size, max_length=1024, seed=cfg.seed)
    module = CausalLMModule(model, lr=base.lr, weight_decay=0.1, warmup_steps=base.warmup_steps, lr_schedule="cosine")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=base.pretrain_steps,
        logger=TensorBoardLogger(str(tmp), name="logs", version="pretrain"),
        default_root_dir=str(tmp),
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=10,
        gradient_clip_val=1.0,
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    train_s = time.perf_counter() - started
    final_loss = float(trainer.callback_metrics.get("train/loss", float("nan")))

    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "world.json").write_text(json.dumps({"config_hash": out.name, **cfg.to_dict(), **base.to_dict()}, indent=2) + "\n")
    export_splits(cfg, tmp, splits)

    # Measure what was saved, not the in-memory object, so base_metrics.json describes the cache.
    model, tokenizer = load_base(tmp)
    metrics = {
        "parameters": n_params,
        "train_seconds": round(train_s, 1),
        "train_tokens": module.tokens_seen,
        "tokens_per_s": round(module.tokens_seen / train_s, 1),
        "threads": threads,
        "final_train_loss": final_loss,
    }
    for name, problems in (("test", splits.test), ("hard", splits.hard)):
        metrics[name] = _split_metrics(model, tokenizer, problems, cfg, base)
        print(f"[reprokit.worlds] base {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics[name].items() if k.startswith("pass@")))
    (tmp / "base_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    if out.exists():  # a concurrent run finished first; keep its result
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    print(f"[reprokit.worlds] base model saved at {out}")
    return out


def _split_metrics(model, tokenizer, problems, cfg: WorldConfig, base: BaseConfig) -> dict:
    """pass@k of a freshly pretrained base on one split, per step count, and each problem's correct count (later
    studies compare solved sets with the base without sampling it again)."""
    started = time.perf_counter()
    ks = list(powers_of_two(base.eval_samples))
    result = evaluate_pass_at_k(model, tokenizer, problems, n=base.eval_samples, ks=ks, temperature=base.eval_temperature, seed=cfg.seed)
    out = {k: v for k, v in result.items() if k.startswith("pass@")}
    out.update(by_steps=_by_steps(result, ks), num_correct=dict(zip(result["ids"], result["num_correct"])), n=base.eval_samples,
               eval_seconds=round(time.perf_counter() - started, 1))
    return out


def _by_steps(result: dict, ks: Sequence[int]) -> dict:
    """pass@k per step count: {steps: {"pass@1": ..., "pass@<n>": ...}}."""
    groups: dict[int, list[int]] = {}
    for s, c in zip(result["steps"], result["num_correct"]):
        groups.setdefault(s, []).append(c)
    n = result["n"]
    return {
        str(s): {f"pass@{k}": v for k, v in mean_pass_at_k(n, cs, sorted({ks[0], ks[len(ks) // 2], ks[-1]})).items()}
        for s, cs in sorted(groups.items())
    }


def existing_base(cfg: WorldConfig, base: BaseConfig | None = None, cache_dir: str | Path | None = None) -> Path | None:
    """The folder of a finished base for these configs without pretraining: the shipped one (unless ``cache_dir``
    is given), else the one in the cache; None when there is neither."""
    base = base or BaseConfig()
    shipped = shipped_base(cfg, base)
    if shipped is not None and cache_dir is None:
        return shipped
    folder = (default_cache_dir() if cache_dir is None else Path(cache_dir)) / config_hash(cfg, base)
    return folder if (folder / "base_metrics.json").is_file() else None


def shipped_base(cfg: WorldConfig, base: BaseConfig | None = None) -> Path | None:
    """The folder of the shipped base pretrained from exactly these configs (same config hash), or None."""
    want = config_hash(cfg, base)
    for folder in sorted(SHIPPED_DIR.glob("*/")):
        try:
            saved = json.loads((folder / "world.json").read_text())
        except (OSError, ValueError):
            continue
        if saved.get("config_hash") == want and (folder / "base_metrics.json").is_file():
            return folder
    return None


def ship_bases(names: Sequence[str] | None = None, *, cache_dir: str | Path | None = None, threads: int | None = None) -> list[Path]:
    """Pretrain the bases of the named study worlds (all by default) and copy them into :data:`SHIPPED_DIR`."""
    from reprokit.worlds.config import WORLDS

    names = list(WORLDS) if not names else list(names)
    unknown = [n for n in names if n not in WORLDS]
    if unknown:
        raise SystemExit(f"unknown world(s) {unknown}; the study's worlds are {', '.join(WORLDS)}")
    out = []
    for name in names:
        built = pretrain_base(WORLDS[name], cache_dir or default_cache_dir(), threads=threads)
        target = SHIPPED_DIR / name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for file in _SHIPPED_FILES:
            if (built / file).is_file():
                shutil.copy2(built / file, target / file)
        print(f"[reprokit.worlds] shipped {name} ({config_hash(WORLDS[name])}) to {target}")
        out.append(target)
    return out

