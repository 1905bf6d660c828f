"""Evaluation building blocks shared by the analysis recipes: load a model from one string, sample
responses into a resumable JSONL, grade (and re-grade) them, and score responses' perplexity under a model.

Model specs (:func:`load_model_spec`)::

    tiny, tiny:llama                          a random tiny model built in-process (tests, CPU smoke runs)
    Qwen/Qwen2.5-Math-1.5B                    a Hugging Face Hub id
    /models/qwen-math, runs/world/base        a local model folder (config.json, weights, tokenizer)
    runs/sft/adapter                          a peft adapter folder (adapter_config.json), loaded on its base
    runs/x/checkpoints/step-500.ckpt          a training checkpoint (LoRA tensors); ".ckpt" may be left out
    runs/x                                    a run folder: its checkpoints/last.ckpt

A checkpoint holds only the adapter: the base comes from the ``model`` section of the run's
``config.yaml`` (two folders above the checkpoint) and is loaded with :func:`reprokit.models.load_policy`.

Samples file: one JSON object per line and per response,
``{"model", "benchmark", "problem_id", "sample_index", "text", "correct", "n_tokens", "truncated"}``
(``correct`` is the reward, a float). Lines are appended as each batch is graded and flushed, so a killed
run loses at most the batch in flight; :func:`read_samples` drops a last line cut off by the kill, and
:func:`sample_to_jsonl` generates only the ``(model, problem_id, sample_index)`` keys that are missing.
"""

from __future__ import annotations

import gc
import json
import math
import os
import re
import tempfile
import time
import warnings
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from reprokit.data import Example, collate_prompts, tokenize_examples
from reprokit.data.batching import get_pad_token_id
from reprokit.data.templates import render_prompt, uses_chat_markup
from reprokit.models import WORLD_MODEL

__all__ = [
    "QUANTIZATION_CHOICES",
    "ModelSource",
    "ModelSpecError",
    "Sample",
    "SampleWriter",
    "SamplingReport",
    "correctness_by_problem",
    "grade",
    "load_model_spec",
    "model_device",
    "parse_models",
    "read_samples",
    "regrade_samples",
    "free_memory",
    "render_prompts",
    "resolve_model_spec",
    "response_perplexity",
    "sample_to_jsonl",
]

QUANTIZATION_CHOICES = ("auto", "none", "nf4")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelSpecError(ValueError):
    """A model spec that names nothing loadable; the message names the spec, what was tried and the fix."""


# ---------------------------------------------------------------------------------------------- model specs
def parse_models(items: Sequence[str]) -> dict[str, str]:
    """``["base=Qwen/Qwen2.5-Math-1.5B", "rl=runs/x/checkpoints/step-500"]`` -> ``{"base": ..., "rl": ...}``.

    Order is kept (the first model is the reference of the overlap and perplexity analyses unless the
    recipe is told otherwise). A bare spec without ``name=`` is named after its last path part.

    Raises:
        ModelSpecError: an empty list, an empty name or spec, a name with characters other than letters,
            digits and ``_.+-``, or a name given twice.
    """
    if isinstance(items, str):
        items = [items]
    if not items:
        raise ModelSpecError("no models given: pass --models NAME=SPEC [NAME=SPEC ...], e.g. --models base=tiny")
    models: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str):
            raise ModelSpecError(f"model entry {item!r} is not a string; write NAME=SPEC, e.g. rl=runs/x")
        name, sep, spec = item.partition("=")
        if not sep:
            spec = item
            name = Path(item.rstrip("/")).name.removesuffix(".ckpt") or item
        name, spec = name.strip(), spec.strip()
        if not spec:
            raise ModelSpecError(f"model entry {item!r} has no spec after '='; write NAME=SPEC, e.g. rl=runs/x")
        if not _NAME.match(name):
            raise ModelSpecError(
                f"model entry {item!r}: the name {name!r} must start with a letter or digit and hold only letters, "
                "digits and _.+- (it names rows of the CSV and lines of the plots); write NAME=SPEC"
            )
        if name in models:
            raise ModelSpecError(
                f"model name {name!r} is given twice ({models[name]!r} and {spec!r}); give each model its own name"
            )
        models[name] = spec
    return models


@dataclass(frozen=True)
class ModelSource:
    """What a spec resolved to: ``kind`` in tiny / local / adapter / checkpoint / hub, and the path or id."""

    kind: str
    location: str


def resolve_model_spec(spec: str) -> ModelSource:
    """Decide what ``spec`` names without loading anything (see the module docstring for the forms).

    Raises:
        ModelSpecError: nothing matches; the message lists every place that was tried.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(f"model spec {spec!r} is empty: give a Hub id, a model folder, a checkpoint or 'tiny'")
    spec = spec.strip()
    if spec == "tiny" or spec.startswith("tiny:"):
        return ModelSource("tiny", spec)
    if spec == WORLD_MODEL and not Path(spec).exists():
        return ModelSource("local", spec)  # the CPU world's base: its folder is found (or built) when loading
    path = Path(spec).expanduser()
    tried: list[str] = []
    if path.is_file():
        if path.suffix == ".ckpt":
            return ModelSource("checkpoint", str(path))
        raise ModelSpecError(
            f"model spec {spec!r} is a file but not a training checkpoint (*.ckpt); pass a checkpoint, a model "
            "folder (config.json, weights, tokenizer), a peft adapter folder or a run folder"
        )
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            return ModelSource("adapter", str(path))
        if (path / "config.json").is_file():
            return ModelSource("local", str(path))
        for candidate in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
            if candidate.is_file():
                return ModelSource("checkpoint", str(candidate))
        raise ModelSpecError(
            f"model spec {spec!r}: the folder {path} holds no model: tried {path / 'adapter_config.json'} "
            f"(peft adapter), {path / 'config.json'} (model folder), {path / 'checkpoints' / 'last.ckpt'} "
            f"(run folder) and {path / 'last.ckpt'}. Point at one of these."
        )
    tried.append(f"{path} (no such file or folder)")
    with_suffix = path.with_name(path.name + ".ckpt")
    if with_suffix.is_file():
        return ModelSource("checkpoint", str(with_suffix))
    tried.append(f"{with_suffix} (no such checkpoint)")
    if _HUB_ID.match(spec) and ".." not in spec:
        return ModelSource("hub", spec)
    raise ModelSpecError(
        f"model spec {spec!r} names nothing loadable: tried {'; '.join(tried)}; and it is not a Hub id "
        "(owner/name). Give a Hub id, an existing model, adapter or run folder, a checkpoint path, or 'tiny'."
    )


def load_model_spec(
    spec: str,
    *,
    quantization: str = "auto",
    device: torch.device | str | int | None = None,
    compute_dtype: str = "auto",
):
    """Load the model a spec names, ready for evaluation (eval mode, no gradients, left padding).

    Args:
        spec: a Hub id, a local model folder (a CPU-world base, a ``save_tiny`` folder), a peft adapter folder
            (loaded on top of its ``base_model_name_or_path``), a training checkpoint ``.../step-500.ckpt``
            (with or without ``.ckpt``), a run folder (its ``checkpoints/last.ckpt``), ``tiny`` / ``tiny:llama``, or
            ``world`` (the CPU world's base model).
        quantization: ``nf4`` (4-bit base through bitsandbytes), ``none`` (full precision), or ``auto``: a
            checkpoint's base as it was trained (its config's ``model.quantization``), anything else ``none``.
        device: where to load; None = the current CUDA device when there is one, else the CPU.
        compute_dtype: ``auto`` (bfloat16 on a capable GPU, else float32), ``bfloat16``, ``float16``, ``float32``.

    Returns:
        ``(model, tokenizer)``; the tokenizer pads on the left and the model's ``generation_config`` lists every
        end-of-response id.

    Raises:
        ModelSpecError: the spec names nothing loadable, a checkpoint has no readable config.yaml beside its
            run, or its tensors do not fit the base; the message names the spec and what was tried.
    """
    from reprokit.models import ModelConfigError, ModelLoadError, resolve_device

    if quantization not in QUANTIZATION_CHOICES:
        raise ModelSpecError(
            f"quantization={quantization!r} for model spec {spec!r}: use one of {', '.join(QUANTIZATION_CHOICES)}"
        )
    source = resolve_model_spec(spec)
    device = resolve_device(device)
    try:
        if source.kind == "checkpoint":
            model, tokenizer = _load_checkpoint(spec, Path(source.location), quantization, device, compute_dtype)
        elif source.kind == "adapter":
            model, tokenizer = _load_adapter(spec, Path(source.location), quantization, device, compute_dtype)
        else:
            model, tokenizer = _load_plain(source, quantization, device, compute_dtype)
    except (ModelLoadError, ModelConfigError) as err:
        raise ModelSpecError(f"model spec {spec!r} ({source.kind} {source.location}): {err}") from err
    return _ready_for_eval(model, tokenizer)


def _plain_config(name_or_path: str, quantization: str, compute_dtype: str):
    from reprokit.models import ModelConfig

    return ModelConfig(
        name_or_path=name_or_path,
        quantization="none" if quantization == "auto" else quantization,
        compute_dtype=compute_dtype,
        gradient_checkpointing=False,
    )


def _load_plain(source: ModelSource, quantization: str, device: torch.device, compute_dtype: str):
    """A model without adapters: tiny, a local folder or a Hub id."""
    from reprokit.models import _load_model, _load_tiny, _load_tokenizer, _resolve_source, resolve_compute_dtype

    cfg = _plain_config(source.location, quantization, compute_dtype)
    dtype = resolve_compute_dtype(cfg.compute_dtype, device)
    if source.kind == "tiny":
        model, tokenizer = _load_tiny(cfg, device, dtype)
        return model, tokenizer
    location = _resolve_source(source.location)
    return _load_model(location, cfg, device, dtype), _load_tokenizer(location, cfg)


def _load_adapter(spec: str, folder: Path, quantization: str, device: torch.device, compute_dtype: str):
    """A peft adapter folder on top of the base its adapter_config.json names."""
    from peft import PeftModel

    from reprokit.models import _load_tokenizer

    try:
        base_name = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise ModelSpecError(f"model spec {spec!r}: cannot read {folder / 'adapter_config.json'} ({err})") from err
    if not base_name:
        raise ModelSpecError(
            f"model spec {spec!r}: {folder / 'adapter_config.json'} names no base_model_name_or_path; "
            "set it to the base model's Hub id or folder"
        )
    base_source = resolve_model_spec(base_name)
    if base_source.kind not in ("local", "hub", "tiny"):
        raise ModelSpecError(
            f"model spec {spec!r}: the adapter's base {base_name!r} is a {base_source.kind}, not a model; "
            "base_model_name_or_path must name a model folder or Hub id"
        )
    model, tokenizer = _load_plain(base_source, quantization, device, compute_dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = _load_tokenizer(str(folder), _plain_config(str(folder), "none", "auto"))
    return model, tokenizer


def _load_checkpoint(spec: str, ckpt: Path, quantization: str, device: torch.device, compute_dtype: str):
    """A Lightning checkpoint of a training recipe: the run's base (config.yaml) plus the saved LoRA tensors."""
    import yaml

    from reprokit.models import ModelConfig, load_policy, load_trainable_state_dict

    run_dir = ckpt.parent.parent
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ModelSpecError(
            f"model spec {spec!r}: checkpoint {ckpt} has no {config_path} (the run's saved config, two folders above "
            "the checkpoint, whose `model` section names the base). Keep checkpoints inside their run folder "
            "(<run>/checkpoints/step-N.ckpt)."
        )
    try:
        section = (yaml.safe_load(config_path.read_text()) or {}).get("model")
    except yaml.YAMLError as err:
        raise ModelSpecError(f"model spec {spec!r}: cannot parse {config_path} ({err})") from err
    if not isinstance(section, Mapping) or "name_or_path" not in section:
        raise ModelSpecError(
            f"model spec {spec!r}: {config_path} has no `model` section with name_or_path; it must be the config.yaml "
            "a training recipe saved"
        )
    known = {f.name for f in fields(ModelConfig)}
    options = {k: v for k, v in section.items() if k in known}
    if quantization != "auto":
        options["quantization"] = quantization
    if compute_dtype != "auto":
        options["compute_dtype"] = compute_dtype
    options["gradient_checkpointing"] = False
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # a torn or foreign file: say which one
        raise ModelSpecError(
            f"model spec {spec!r}: cannot read checkpoint {ckpt} ({type(err).__name__}: {err})"
        ) from err
    tensors = state.get("state_dict") if isinstance(state, Mapping) else None
    if not isinstance(tensors, Mapping) or not tensors:
        raise ModelSpecError(f"model spec {spec!r}: checkpoint {ckpt} has no state_dict of adapter tensors")
    adapter = {k.removeprefix("model."): v for k, v in tensors.items()}
    model, tokenizer = load_policy(ModelConfig(**options), device=device)
    try:
        load_trainable_state_dict(model, adapter)
    except (KeyError, ValueError) as err:
        raise ModelSpecError(
            f"model spec {spec!r}: checkpoint {ckpt} does not fit the base of {config_path} "
            f"({section.get('name_or_path')!r}): {err}"
        ) from err
    return model, tokenizer


def _ready_for_eval(model, tokenizer):
    from reprokit.models import _configure_padding

    _configure_padding(tokenizer, model)
    for param in model.parameters():
        param.requires_grad_(False)
    model.eval()
    return model, tokenizer


def free_memory() -> None:
    """Return a dropped model's memory: call after ``del model`` (the last reference)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def model_device(model) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------- samples file
@dataclass
class Sample:
    """One graded response, one line of the samples file."""

    model: str
    benchmark: str
    problem_id: str
    sample_index: int
    text: str
    correct: float
    """The reward; a sample counts as solving its problem when this is >= 1."""
    n_tokens: int
    truncated: bool
    """No end-of-response token within max_new_tokens."""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.model, self.problem_id, self.sample_index)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


_SAMPLE_FIELDS = tuple(f.name for f in fields(Sample))


def _sample_from_row(row: object, where: str) -> Sample:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [name for name in _SAMPLE_FIELDS if name not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}")
    return Sample(
        model=str(row["model"]),
        benchmark=str(row["benchmark"]),
        problem_id=str(row["problem_id"]),
        sample_index=int(row["sample_index"]),
        text=str(row["text"]),
        correct=float(row["correct"]),
        n_tokens=int(row["n_tokens"]),
        truncated=bool(row["truncated"]),
    )


def read_samples(path: str | Path, *, repair: bool = False) -> list[Sample]:
    """Every sample in a samples file, in file order; a missing file reads as no samples.

    A last line without its newline is what a killed run leaves: it is reported (a warning) and ignored, and
    with ``repair=True`` cut from the file, so that the next append starts on a fresh line. A key
    ``(model, problem_id, sample_index)`` that occurs twice keeps its first line (reported).

    Raises:
        ValueError: a complete line in the middle of the file is not a sample (the message names the line).
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes up to and including the last complete line
    if end < len(data):
        warnings.warn(
            f"{path}: the last line ({len(data) - end} bytes) was cut off (a killed run?); ignoring it"
            + (" and removing it from the file" if repair else ""),
            stacklevel=2,
        )
        if repair:
            with path.open("r+b") as f:
                f.truncate(end)
    samples: list[Sample] = []
    seen: set[tuple[str, str, int]] = set()
    duplicates = 0
    for number, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            sample = _sample_from_row(json.loads(line), f"{path} line {number}")
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{path} line {number} is not a sample ({err}); delete that line (its sample is generated again) "
                "or use another run folder"
            ) from None
        if sample.key in seen:
            duplicates += 1
            continue
        seen.add(sample.key)
        samples.append(sample)
    if duplicates:
        warnings.warn(
            f"{path}: {duplicates} repeated (model, problem_id, sample_index) line(s); kept the first", stacklevel=2
        )
    return samples


class SampleWriter:
    """Appends samples to a samples file; every :meth:`write` ends flushed and synced to disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, samples: Iterable[Sample]) -> None:
        self._file.write("".join(s.to_json() + "\n" for s in samples))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_samples_atomically(path: Path, samples: Iterable[Sample]) -> None:
    """Replace the file in one rename, so an interrupted rewrite leaves the old file intact."""
    tmp = tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False)
    with tmp as f:
        for sample in samples:
            f.write(sample.to_json() + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


# ---------------------------------------------------------------------------------------------- sampling
@dataclass
class SamplingReport:
    """What one :func:`sample_to_jsonl` call did."""

    generated: int
    """Responses generated (and appended)."""
    problems: int
    """Problems that needed at least one response."""
    skipped: int
    """Responses already in the file, not generated again."""
    seconds: float
    tokens: int


def _row_keywords(rows: Sequence[Mapping], repeat: Sequence[int]) -> dict[str, list]:
    """Dataset-row fields as reward keyword lists aligned with the responses (row i repeated repeat[i] times)."""
    keys = sorted(set().union(*(r.keys() for r in rows))) if rows else []
    out = {k: [r.get(k) for r, times in zip(rows, repeat) for _ in range(times)] for k in keys}
    out.pop("answer", None)  # the label travels as the `answers` argument
    return out


def grade(
    reward_fn: Callable[..., list[float]], texts: list[str], examples: Sequence[Example], counts: Sequence[int]
) -> list[float]:
    """Rewards of ``texts``, where example i owns the next ``counts[i]`` texts."""
    answers = [ex.answer for ex, times in zip(examples, counts) for _ in range(times)]
    rewards = reward_fn(texts, answers, **_row_keywords([ex.fields for ex in examples], counts))
    rewards = list(rewards)
    if len(rewards) != len(texts):
        raise ValueError(
            f"the reward returned {len(rewards)} values for {len(texts)} responses; a reward must return one float "
            "per completion"
        )
    return [float(r) for r in rewards]


def _batch_seed(seed: int, model_name: str, problem_ids: Sequence[str], indices: Sequence[int]) -> int:
    """A seed fixed by what the batch generates, so a resumed run draws what an uninterrupted one would."""
    text = f"{seed}|{model_name}|{','.join(problem_ids)}|{','.join(map(str, indices))}"
    return zlib.crc32(text.encode())


def sample_to_jsonl(
    model,
    tokenizer,
    examples: Sequence[Example],
    path: str | Path,
    *,
    model_name: str,
    n: int,
    reward_fn: Callable[..., list[float]],
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 3072,
    batch_problems: int = 1,
    max_batch_sequences: int | None = None,
    template: str = "qwen25-math-cot",
    cot_suffix: bool = True,
    max_prompt_length: int = 4096,
    seed: int = 0,
    existing: Iterable[tuple[str, str, int]] | None = None,
    progress: bool = True,
) -> SamplingReport:
    """Sample the indices ``0..n-1`` of every example that the samples file lacks, grade them, append them.

    Problems whose missing responses number the same are batched ``batch_problems`` at a time (one
    ``reprokit.sampling.generate`` call of ``batch_problems x missing`` sequences, at most ``max_batch_sequences``;
    a problem missing more than that is split over several calls); each batch is graded with
    ``reward_fn`` and appended (flushed) before the next starts. Each batch's sampling seed is fixed by
    ``seed``, the model name, its problems and sample indices.

    Args:
        existing: keys ``(model, problem_id, sample_index)`` already present; None reads them from ``path``.
        examples: problems with ``fields["benchmark"]`` set (as ``load_benchmark`` does).

    Returns:
        A :class:`SamplingReport`.
    """
    from tqdm.auto import tqdm

    from reprokit.models import eos_token_ids
    from reprokit.sampling import generate

    if n < 1 or batch_problems < 1:
        raise ValueError(f"sample_to_jsonl: n={n} and batch_problems={batch_problems} must be >= 1")
    path = Path(path)
    if existing is None:
        existing = (s.key for s in read_samples(path, repair=True))
    done = set(existing)
    cap = max_batch_sequences or n
    # Work units (problem, sample indices) of at most `cap` indices, grouped by size so that one generate call
    # draws the same number of responses for every prompt in it.
    units: dict[int, list[tuple[Example, list[int]]]] = defaultdict(list)
    missing_of: dict[str, int] = {}
    skipped = 0
    for ex in examples:
        missing = [i for i in range(n) if (model_name, ex.id, i) not in done]
        skipped += n - len(missing)
        if missing:
            missing_of[ex.id] = len(missing)
            for begin in range(0, len(missing), cap):
                part = missing[begin : begin + cap]
                units[len(part)].append((ex, part))
    report = SamplingReport(generated=0, problems=len(missing_of), skipped=skipped, seconds=0.0, tokens=0)
    if not missing_of:
        return report

    # Tokenize everything first: an over-long prompt fails now, not hours into the run.
    need = list({ex.id: ex for group in units.values() for ex, _ in group}.values())
    items = {
        item.example_id: item
        for item in tokenize_examples(
            need, tokenizer, template=template, cot_suffix=cot_suffix, max_prompt_length=max_prompt_length
        )
    }
    pad_id = get_pad_token_id(tokenizer)
    eos_ids = eos_token_ids(tokenizer, model)
    device = model_device(model)
    start = time.perf_counter()
    bar = tqdm(
        total=len(missing_of), unit="problem", desc=f"sampling {model_name}", disable=not progress, dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n:.4g}/{total} [{elapsed}<{remaining}{postfix}]",
    )
    with SampleWriter(path) as writer:
        for count, group in units.items():
            per_call = max(1, min(batch_problems, cap // count))
            for begin in range(0, len(group), per_call):
                chunk = group[begin : begin + per_call]
                batch = collate_prompts([items[ex.id] for ex, _ in chunk], pad_id)
                problem_ids = [ex.id for ex, _ in chunk]
                torch.manual_seed(_batch_seed(seed, model_name, problem_ids, [i for _, part in chunk for i in part]))
                comps = generate(
                    model,
                    tokenizer,
                    batch.input_ids.to(device),
                    batch.attention_mask.to(device),
                    n=count,
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p if temperature > 0 else 1.0,
                    eos_ids=eos_ids,
                )
                rewards = grade(reward_fn, comps.texts, [ex for ex, _ in chunk], [count] * len(chunk))
                lengths = comps.lengths.tolist()
                truncated = comps.truncated.tolist()
                rows = []
                for p, (ex, indices) in enumerate(chunk):
                    for j, index in enumerate(indices):
                        r = p * count + j  # generate() is group-contiguous
                        rows.append(
                            Sample(
                                model=model_name,
                                benchmark=str(ex.fields.get("benchmark", "")),
                                problem_id=ex.id,
                                sample_index=index,
                                text=comps.texts[r],
                                correct=rewards[r],
                                n_tokens=int(lengths[r]),
                                truncated=bool(truncated[r]),
                            )
                        )
                writer.write(rows)
                report.generated += len(rows)
                report.tokens += comps.num_tokens
                elapsed = time.perf_counter() - start
                # A problem split over several calls advances the bar by its share per call.
                bar.update(sum(len(indices) / missing_of[ex.id] for ex, indices in chunk))
                bar.set_postfix(samples_per_s=f"{report.generated / max(elapsed, 1e-9):.1f}", tokens=report.tokens)
    bar.close()
    report.seconds = time.perf_counter() - start
    return report


def regrade_samples(
    path: str | Path,
    examples: Mapping[str, Example] | Sequence[Example],
    reward_fn: Callable[..., list[float]],
    *,
    chunk_size: int = 2048,
    progress: bool = True,
) -> dict[str, int]:
    """Grade every sample in the file again with ``reward_fn`` and rewrite the file (atomically); no sampling.

    Samples of problems not in ``examples`` keep their grade (counted as ``unknown``).

    Returns:
        ``{"samples", "regraded", "changed", "unknown"}`` counts.
    """
    from tqdm.auto import tqdm

    path = Path(path)
    if not isinstance(examples, Mapping):
        examples = {ex.id: ex for ex in examples}
    samples = read_samples(path, repair=True)
    known = [s for s in samples if s.problem_id in examples]
    changed = 0
    bar = tqdm(total=len(known), unit="sample", desc="regrading", disable=not progress, dynamic_ncols=True)
    for begin in range(0, len(known), chunk_size):
        part = known[begin : begin + chunk_size]
        rewards = grade(reward_fn, [s.text for s in part], [examples[s.problem_id] for s in part], [1] * len(part))
        for sample, reward in zip(part, rewards):
            changed += reward != sample.correct
            sample.correct = reward
        bar.update(len(part))
    bar.close()
    _write_samples_atomically(path, samples)
    return {"samples": len(samples), "regraded": len(known), "changed": changed, "unknown": len(samples) - len(known)}


def correctness_by_problem(
    samples: Iterable[Sample], model: str, examples: Sequence[Example], n: int | None = None
) -> dict[str, list[float]]:
    """``{problem_id: [reward of sample 0, 1, ...]}`` of one model over ``examples`` (sample indices < n).

    Problems without samples map to an empty list.
    """
    table: dict[str, dict[int, float]] = {ex.id: {} for ex in examples}
    for s in samples:
        if s.model == model and s.problem_id in table and (n is None or s.sample_index < n):
            table[s.problem_id][s.sample_index] = s.correct
    return {pid: [by_index[i] for i in sorted(by_index)] for pid, by_index in table.items()}


# ---------------------------------------------------------------------------------------------- perplexity
def _decoder_and_head(model):
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return base.get_decoder(), base.get_output_embeddings()


@torch.no_grad()
def response_perplexity(
    model,
    tokenizer,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    add_special_tokens: bool = False,
    batch_size: int = 8,
    chunk_size: int = 1024,
    progress: bool = False,
) -> list[float | None]:
    """PPL_model(y | x) = exp(-mean_t log p(y_t | x, y_<t)) of each response given its prompt.

    Prompts and responses are tokenized separately with ``tokenizer`` (the scoring model's own), so responses
    of a model with another vocabulary are scored as text. Log-probs come from the last hidden states through
    :func:`reprokit.algorithms.token_logprobs_and_entropy` (chunked, no ``[B, T, V]`` logits), at temperature 1.

    Args:
        prompts: rendered prompt texts (template applied).
        responses: response texts, one per prompt.
        add_special_tokens: tokenizer flag for the prompts (False for chat-template text that holds its markers).
        batch_size: sequences per forward pass.
        chunk_size: positions per chunk of the output-head pass.

    Returns:
        One perplexity per pair; None for an empty response (nothing to score).
    """
    from tqdm.auto import tqdm

    from reprokit.algorithms import token_logprobs_and_entropy

    if len(prompts) != len(responses):
        raise ValueError(f"response_perplexity: {len(prompts)} prompts but {len(responses)} responses")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    response_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"] if responses else []
    pad_id = get_pad_token_id(tokenizer)
    decoder, head = _decoder_and_head(model)
    device = model_device(model)
    was_training = model.training
    model.eval()
    out: list[float | None] = [None] * len(prompts)
    # Similar lengths share a batch: less padding.
    scorable = [i for i in range(len(prompts)) if response_ids[i]]
    order = sorted(scorable, key=lambda i: len(prompt_ids[i]) + len(response_ids[i]))
    bar = tqdm(total=len(order), unit="response", desc="perplexity", disable=not progress, dynamic_ncols=True)
    try:
        for begin in range(0, len(order), batch_size):
            rows = order[begin : begin + batch_size]
            lengths = [len(prompt_ids[i]) + len(response_ids[i]) for i in rows]
            width = max(lengths)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # [B, L]
            mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, L]
            labels = torch.full((len(rows), width - 1), -100, dtype=torch.long)  # [B, L-1]
            for b, i in enumerate(rows):
                p, r = len(prompt_ids[i]), len(response_ids[i])
                # Right padding keeps every real token at its natural position id.
                ids[b, : p + r] = torch.tensor(prompt_ids[i] + response_ids[i])  # [p + r]
                mask[b, : p + r] = 1
                labels[b, p - 1 : p + r - 1] = ids[b, p : p + r]  # position t predicts token t + 1
            first = min(len(prompt_ids[i]) for i in rows) - 1  # no response token is predicted before this
            hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state  # [B, L, H]
            hidden = hidden[:, first:-1]  # [B, L-1-first, H]
            target = labels[:, first:].to(device)  # [B, L-1-first]
            logp, _ = token_logprobs_and_entropy(
                hidden, head, target, chunk_size=chunk_size, with_entropy=False
            )  # [B, T]
            scored = (target != -100).float()  # [B, T]
            mean_logp = (logp.float() * scored).sum(-1) / scored.sum(-1)  # [B]
            for b, i in enumerate(rows):
                out[i] = math.exp(-float(mean_logp[b]))
            bar.update(len(rows))
    finally:
        bar.close()
        model.train(was_training)
    return out


def render_prompts(
    examples: Sequence[Example], tokenizer, *, template: str, cot_suffix: bool
) -> tuple[list[str], bool]:
    """Prompt texts as sampling renders them, and the ``add_special_tokens`` flag to tokenize them with."""
    prompts = [render_prompt(ex.question, template, tokenizer, cot_suffix=cot_suffix) for ex in examples]
    return prompts, not uses_chat_markup(template)
