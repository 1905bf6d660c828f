"""GRPO step time and memory: reprokit's GRPOModule against TRL's GRPOTrainer on the same model, batch and LoRA.

Builds Qwen2.5-Math-1.5B from its config with random weights (nothing is downloaded), quantizes the base to
NF4, adds LoRA (rank and targets from the preset: r 64 on every linear layer) and times whole GRPO steps of a
one-shot preset (presets/one_shot/<preset>.yaml: prompts per step, group size, response length, micro-batch,
generation batch, KL and entropy coefficients), split into

* generation (rollout sampling),
* score: the no-grad passes before the update (the KL reference; old log-probs when off-policy),
* fwd+bwd: the log-prob + entropy forward of the update with autograd and its backward (gradient-checkpointed
  decoder recomputed), over every micro-batch,
* other: rewards, advantages, gradient clipping, the AdamW step, bookkeeping.

reprokit's step goes through GRPOModule's public methods, each timed from outside: ``rollout`` (sampling,
rewards, advantages), ``score``, ``accumulate_gradients`` (forward + backward over the micro-batches into
``.grad``), then gradient clipping and an AdamW step on an optimizer built here from the trainable parameters
(what ``update`` does inside a Lightning Trainer). Nothing of the module is replaced.

The same model and settings then go through ``trl.GRPOTrainer`` (no vLLM; same LoRA, base precision, batch,
lengths, gradient checkpointing, KL beta, entropy coefficient, token-level "dapo" loss). Each system runs in
its own process so peak-memory figures do not mix. The table shows medians over the steps after warm-up and
each system's ratio to TRL. With ``--json`` every figure is written to a file, after each step of each system,
so a run that is cut off (a time limit) still leaves what it measured.

Random weights never emit an end-of-sequence token, so every response runs to the length limit: the figures
are the worst case of a real run, where many responses end early. Throughput is also given as a fraction of the
memory-bandwidth bound: every decode step must read the weights (4-bit base, LoRA, embedding / output head)
and the KV cache at the mean context length, so ``bandwidth / bytes per step`` is the fastest any decoder can
emit tokens per sequence.

``--world`` runs the comparison on a CPU instead, on the CPU world's pretrained base model (reprokit.worlds) in
full precision with the settings of the ``one_shot`` cpu preset and the world's reward, each system several
times in interleaved processes (``--repeats``), medians over all of them.

    python benchmarks/grpo_step.py --preset consumer-12gb              # on a CUDA GPU: reprokit and TRL
    python benchmarks/grpo_step.py --preset paper --steps 2 --warmup 1 # responses up to 3072 tokens
    python benchmarks/grpo_step.py --tiny                              # CPU smoke run, a tiny Qwen2 (~2 min)
    python benchmarks/grpo_step.py --world --threads 1 --repeats 5     # CPU world, full precision, vs TRL
    python benchmarks/grpo_step.py --proxy --compare-sampling          # generation variants, before / after

TRL is optional (``pip install 'reprokit[bench]'``); without it the TRL row is skipped with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"consumer-12gb": "consumer-12gb.yaml", "paper": "qwen2.5-math-1.5b.yaml", "cpu": "cpu.yaml"}
SYSTEMS = ("reprokit", "reprokit-merged", "trl")
# Peak memory bandwidth in GB/s of common GPUs, matched against torch.cuda.get_device_name (first match wins, so
# a name that contains another comes first: GH200 before H200).
BANDWIDTH_GBS = [
    ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350), ("GH200", 4000), ("H200", 4800),
    ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555), ("L40S", 864), ("L40", 864), ("L4", 300),
    ("A10G", 600), ("A10", 600), ("RTX 4090", 1008), ("RTX 4080", 717), ("RTX 3090", 936), ("RTX 3080", 760),
    ("RTX 3060", 360), ("RTX 4070", 504), ("RTX 4060 Ti", 288), ("T4", 320), ("V100", 900),
]
# Model shapes other than the real one. tiny: the CPU smoke model, Qwen2 layout and the real vocabulary, the rest
# tiny (the output head is 99% of its work). proxy: a CPU-sized model with the real model's balance, the output
# head ~15% of the multiply-adds per token as in Qwen2.5-Math-1.5B, for timing decode-loop changes on a CPU.
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "proxy": dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=2816),
}
TIMED_PHASES = ("generation", "score", "fwd_bwd")  # "other" = step - these


# ---------------------------------------------------------------------------------------------- options
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="one-shot preset whose batch, lengths and coefficients are used (default consumer-12gb; "
                             "cpu with --world)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per system and run, median reported (default 3; 2 with --tiny or --proxy; "
                             "5 with --world)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator, kernels, autotuning)")
    parser.add_argument("--warmup_tokens", type=int, default=None,
                        help="response length of the warm-up steps (default: the timed steps' length); a short "
                             "warm-up runs every kernel of a step in a fraction of its time")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke mode: a 2-layer Qwen2 with the real vocabulary, 2 prompts x 4 responses of 32 tokens")
    parser.add_argument("--proxy", action="store_true",
                        help="CPU timing mode: a 4-layer Qwen2 (hidden 256, vocab 2816) whose output head is as small "
                             "a share of the work as the real model's; 4 prompts x 8 responses of 256 tokens")
    parser.add_argument("--world", action="store_true",
                        help="CPU comparison mode: the CPU world's pretrained base model (reprokit.worlds, 1 M "
                             "parameters) in full precision, the one_shot cpu preset (its world, 8 prompts x 8 responses of up to "
                             "87 tokens, LoRA r 32), the world's reward and training example")
    parser.add_argument("--quantization", choices=("nf4", "none"), default=None,
                        help="base weights: nf4 (4-bit, the presets' QLoRA) or none (full precision); default nf4, "
                             "none with --world")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=None,
                        help="what to run (default: reprokit, reprokit-merged and trl; reprokit and trl with --world)")
    parser.add_argument("--no-trl", dest="no_trl", action="store_true", help="skip the TRL row")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run the systems this many times, interleaved (reprokit, trl, reprokit, trl, ...), each "
                             "run in its own process; medians over the timed steps of all runs, peak memory the "
                             "median over runs")
    parser.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    parser.add_argument("--bandwidth_gbs", type=float, default=None,
                        help="memory bandwidth for the bound (default: looked up from the GPU name; none on CPU)")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="override the preset's response length")
    parser.add_argument("--prompts_per_step", type=int, default=None, help="override the preset's prompts per step")
    parser.add_argument("--generation_batch_size", type=int, default=None, help="override the preset's value")
    parser.add_argument("--micro_batch_size", type=int, default=None, help="override the preset's value")
    parser.add_argument("--logprob_chunk_size", type=int, default=None, help="positions per log-prob / entropy chunk")
    parser.add_argument("--model_dir", default=None,
                        help="where the random-weight model is saved (reused when it exists; default: a temp dir)")
    parser.add_argument("--prepare-only", dest="prepare_only", action="store_true",
                        help="only save the random-weight model into --model_dir (for later runs to reuse), then exit")
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's choice)")
    parser.add_argument("--json", default=None,
                        help="write every figure here (per-step records, medians, memory), rewritten after each step "
                             "so a run that is cut off leaves what it measured")
    parser.add_argument("--markdown", default=None, help="also write the table (with its header) to this file")
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="print one table from results written by earlier --json runs (e.g. one per system); "
                             "with --json / --markdown also write the joined figures / table")
    parser.add_argument("--compare-sampling", dest="compare_sampling", action="store_true",
                        help="time generation alone: transformers' generate vs each saving of reprokit.sampling")
    parser.add_argument("--eos_rate", type=float, default=0.0,
                        help="with --compare-sampling: push the EOS logit so about this fraction of responses "
                             "end before the limit (random weights otherwise never stop)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one system in this process
    args = parser.parse_args(argv)
    if sum((args.tiny, args.proxy, args.world)) > 1:
        parser.error("--tiny, --proxy and --world are different models: pick one")
    if args.world:
        if args.preset not in (None, "cpu"):
            parser.error("--world runs the one_shot cpu preset (presets/one_shot/cpu.yaml): leave out --preset")
        if args.compare_sampling:
            parser.error("--compare-sampling times the random-weight models; use it with --tiny or --proxy")
        args.preset = "cpu"
    args.preset = args.preset or "consumer-12gb"
    if args.steps is None:
        args.steps = 5 if args.world else 2 if (args.tiny or args.proxy) else 3
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1 and --warmup >= 0")
    if args.warmup_tokens is not None and args.warmup_tokens < 1:
        parser.error("--warmup_tokens must be >= 1")
    if args.prepare_only and not args.model_dir:
        parser.error("--prepare-only saves the model for later runs: give --model_dir")
    if args.prepare_only and args.world:
        parser.error("--world uses the world's own base model: there is nothing to prepare")
    args.scale = "tiny" if args.tiny else "proxy" if args.proxy else "world" if args.world else "full"
    if args.quantization is None:
        args.quantization = "none" if args.world else "nf4"
    return args


def load_settings(args: argparse.Namespace) -> dict:
    """Batch, lengths, LoRA and loss settings from the preset YAML, with the command-line overrides."""
    import yaml

    from reprokit.cli import preset_values
    from reprokit.recipes import one_shot

    path = REPO / "presets" / "one_shot" / PRESETS[args.preset]
    preset = yaml.safe_load(path.read_text())
    v = preset_values(one_shot.RECIPE, path.stem)  # every setting, the defaults included
    settings = dict(
        preset=args.preset, quantization=args.quantization, lora_r=v["model.lora_r"], lora_alpha=v["model.lora_alpha"],
        gradient_checkpointing=v["model.gradient_checkpointing"], double_quant=v["model.double_quant"],
        group_size=v["rollout.group_size"], temperature=v["rollout.temperature"], top_p=v["rollout.top_p"],
        max_new_tokens=v["rollout.max_new_tokens"], micro_batch_size=v["train.micro_batch_size"],
        generation_batch_size=v["rollout.generation_batch_size"], lr=v["train.lr"], weight_decay=v["train.weight_decay"],
        max_grad_norm=v["train.max_grad_norm"], kl_coef=v["loss.kl_coef"], entropy_coef=v["loss.entropy_coef"],
        loss_agg=v["loss.loss_agg"], logprob_chunk_size=v["train.logprob_chunk_size"],
        prompts_per_step=v["data.prompts_per_step"], template=v["prompt.template"], cot_suffix=v["prompt.cot_suffix"],
        examples="pi1", reward="alternating", scale=args.scale, warmup_tokens=args.warmup_tokens,
    )
    if args.scale == "world":
        # The preset's world (its `world:` section names it), example, prompt format and reward; the base model is
        # the shipped or cached one.
        from reprokit import registry
        from reprokit.worlds import WorldConfig

        registry.configure("world", WorldConfig.from_dict(preset.get("world") or {}))
        settings.update(examples=v["data.examples"], reward=v["rollout.reward"])
    elif args.scale == "tiny":
        settings.update(prompts_per_step=2, group_size=4, max_new_tokens=32, micro_batch_size=4,
                        generation_batch_size=None, lora_r=8, lora_alpha=16, logprob_chunk_size=64)
    elif args.scale == "proxy":
        settings.update(prompts_per_step=4, group_size=8, max_new_tokens=256, micro_batch_size=8,
                        generation_batch_size=None, lora_r=16, lora_alpha=32, logprob_chunk_size=256)
    if args.scale != "world" and settings["template"] != "qwen25-math-cot":
        settings.update(template="qwen25-math-cot", cot_suffix=True)  # the random models' prompt is π1 as Qwen sees it
    for key in ("max_new_tokens", "prompts_per_step", "generation_batch_size", "micro_batch_size",
                "logprob_chunk_size"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if settings["loss_agg"] != "token-mean":
        raise SystemExit(f"{path}: loss_agg {settings['loss_agg']!r} has no TRL counterpart here; use token-mean")
    if settings["reward"] not in ("alternating", "world"):
        raise SystemExit(f"{path}: reward {settings['reward']!r}: the benchmark knows 'world' (with --world) only")
    n_responses = settings["prompts_per_step"] * settings["group_size"]
    if n_responses % settings["micro_batch_size"]:
        raise SystemExit(f"micro_batch_size {settings['micro_batch_size']} must divide the {n_responses} responses "
                         "of a step (TRL accumulates whole micro-batches)")
    return settings


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(run_case(json.loads(Path(args.case).read_text()))), flush=True)
        return
    if args.combine:
        header, results = "", []
        for path in args.combine:
            data = json.loads(Path(path).read_text())
            header = header or data.get("header", "")
            results.extend(data["results"])
        report(results, args, header)
        return

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = load_settings(args)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu (and --tiny, --proxy or --world)")
    if args.world and device != "cpu":
        raise SystemExit("--world is the CPU comparison: run it with --device cpu (the default without a GPU)")
    if device == "cpu" and args.scale == "full" and not args.prepare_only:
        print("note: the full-size model on CPU takes hours per step; --tiny is the CPU smoke mode", file=sys.stderr)

    with model_directory(args) as model_dir:
        if args.scale != "world":
            prepare_model(model_dir, scale=args.scale, device=device)
        if args.prepare_only:
            print(f"model ready in {model_dir}", file=sys.stderr)
            return
        if args.compare_sampling:
            compare_sampling(model_dir, settings, device, args)
            return
        systems = list(args.systems or (("reprokit", "trl") if args.world else SYSTEMS))
        if args.no_trl and "trl" in systems:
            systems.remove("trl")
        settings["prompt_tokens"] = prompt_length(model_dir, settings)
        header = describe(settings, device, model_dir)
        results: list[dict] = []
        for round_ in range(args.repeats):
            for system in systems:
                run = f", run {round_ + 1} of {args.repeats}" if args.repeats > 1 else ""
                print(f"running {system} ({args.warmup} warm-up + {args.steps} timed steps{run})", file=sys.stderr,
                      flush=True)
                case = dict(settings, system=system, run=round_, device=device, model_dir=str(model_dir),
                            steps=args.steps, warmup=args.warmup, threads=args.threads,
                            json_path=args.json, json_header=header, json_done=results)
                results.append(run_in_subprocess(case))
                if args.json:
                    write_json(args.json, header, results, args.bandwidth_gbs)
        report(results, args, header)


def report(results: list[dict], args: argparse.Namespace, header: str) -> None:
    """Print the table; write it (--markdown) and the figures (--json) too."""
    text = format_table(results, args.bandwidth_gbs, header=header)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json and args.combine:
        write_json(args.json, header, results, args.bandwidth_gbs)


def write_json(path: str, header: str, results: list[dict], bandwidth_gbs: float | None = None) -> None:
    """Every figure: the runs' per-step records and memory, and the medians of the table (written atomically)."""
    data = {"header": header, "results": results, "figures": figures(results, bandwidth_gbs)}
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, target)


@contextlib.contextmanager
def model_directory(args: argparse.Namespace):
    if args.world:
        yield Path(world_base_model())
        return
    if args.model_dir:
        Path(args.model_dir).mkdir(parents=True, exist_ok=True)
        yield Path(args.model_dir)
        return
    with tempfile.TemporaryDirectory(prefix="grpo-step-bench-") as tmp:
        yield Path(tmp)


def world_base_model() -> str:
    """The CPU world's base model folder, shipped with the package or cached; never pretrained here."""
    from reprokit.worlds.base import default_cache_dir, existing_base
    from reprokit.worlds.names import current

    world, base = current()
    folder = existing_base(world, base)
    if folder is None:
        raise SystemExit(
            f"--world: the preset's world has no shipped base and none in the cache ({default_cache_dir()}). This "
            "benchmark does not pretrain it (about 5 minutes on two cores): run any recipe with "
            "`model.name_or_path: world` and the same --world settings once, or point $REPROKIT_CACHE at a cache "
            "that holds it"
        )
    return str(folder)


def prepare_model(model_dir: Path, *, scale: str, device: str) -> None:
    """Save the random-weight model (bfloat16, as published) and the benchmark tokenizer, unless already there."""
    marker = model_dir / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()).get("scale") == scale:
        return
    from transformers import AutoModelForCausalLM

    from reprokit.tiny import real_architecture_config

    tokenizer = build_tokenizer()
    config = real_architecture_config("Qwen/Qwen2.5-Math-1.5B")
    if scale != "full":
        values = {k: v for k, v in config.to_dict().items() if k != "layer_types"}  # rebuilt for fewer layers
        config = type(config)(**{**values, **SHAPES[scale]})
    # The character tokenizer's ids (a few hundred) are all valid in the real 151936-token vocabulary.
    config.eos_token_id = config.pad_token_id = tokenizer.eos_token_id
    config.bos_token_id = None
    build_device = device if device.startswith("cuda") else "cpu"
    start = time.perf_counter()
    with torch.device(build_device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model
    marker.write_text(json.dumps({"scale": scale}))
    print(f"saved a random-weight model to {model_dir} in {time.perf_counter() - start:.0f} s", file=sys.stderr)


def build_tokenizer():
    """A tokenizer for π1's prompt with about as many tokens as Qwen2.5's BPE gives it (166 vs ~150).

    The real tokenizer needs a download. A character tokenizer would turn the 560-character prompt into 509
    tokens, three times too many for the prefill and the log-prob passes, so the prompt's own words (with their
    leading space, as BPE merges them) are added as whole tokens.
    """
    from reprokit.data import get_embedded_examples, render_prompt
    from reprokit.tiny import build_tiny_tokenizer

    text = render_prompt(get_embedded_examples("pi1")[0].question, "qwen25-math-cot", build_tiny_tokenizer())
    words = sorted(set(re.findall(r" ?[A-Za-z]+| ?\d+", text)))
    return build_tiny_tokenizer(list(string.printable) + words)


def load_tokenizer(model_dir: str):
    from reprokit.policy import load_tokenizer as load

    tokenizer = load(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def step_examples(settings: dict) -> list:
    """The step's example: π1 for the random-weight models, the preset's own (a world problem) with --world."""
    if settings["examples"].startswith("world:"):
        from reprokit.worlds.names import examples

        found = examples(settings["examples"])
    else:
        from reprokit.data import get_embedded_examples

        found = get_embedded_examples(settings["examples"])
    if len(found) != 1:
        raise SystemExit(f"examples {settings['examples']!r}: the benchmark replicates ONE example, got {len(found)}")
    return found


def prompt_batch(tokenizer, settings: dict):
    """The example rendered with the preset's template, `prompts_per_step` copies, left-padded."""
    from reprokit.data import collate_prompts, tokenize_examples

    examples = step_examples(settings) * settings["prompts_per_step"]
    items = tokenize_examples(examples, tokenizer, template=settings["template"], cot_suffix=settings["cot_suffix"])
    return collate_prompts(items, tokenizer.pad_token_id)


def prompt_text(tokenizer, settings: dict) -> str:
    from reprokit.data import render_prompt

    return render_prompt(step_examples(settings)[0].question, settings["template"], tokenizer,
                         cot_suffix=settings["cot_suffix"])


def prompt_length(model_dir: Path, settings: dict) -> int:
    return prompt_batch(load_tokenizer(str(model_dir)), dict(settings, prompts_per_step=1)).input_ids.shape[1]


def alternating_reward(completions, *args, **kwargs) -> list[float]:
    """1, 0, 1, 0, ...: every group has a spread of rewards, so no step is skipped as uninformative."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def world_reward_for_trl(prompts, completions, answer, **kwargs) -> list[float]:
    """The world's reward (reprokit.worlds.task:reward) in TRL's form: the dataset's `answer` column as a keyword."""
    from reprokit.worlds.task import reward

    return reward(list(completions), list(answer))


def describe(settings: dict, device: str, model_dir: Path) -> str:
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
    if device == "cpu":
        name += f" ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"
    tokens = settings.get("prompt_tokens") or prompt_length(model_dir, settings)
    if settings["scale"] == "full":
        model = "Qwen2.5-Math-1.5B shapes, random weights"
    elif settings["scale"] == "world":
        config = json.loads((model_dir / "config.json").read_text())
        model = (f"the CPU world's pretrained base ({config.get('model_type')}, {config['num_hidden_layers']} layers, "
                 f"hidden {config['hidden_size']}, vocab {config['vocab_size']}; {model_dir.name}), example "
                 f"{settings['examples']}, reward {settings['reward']}")
    else:
        shape = {"vocab_size": 151936, **SHAPES[settings["scale"]]}
        model = (f"{settings['scale']} Qwen2 ({shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
                 f"vocab {shape['vocab_size']}), random weights")
    base = "NF4 base" if settings["quantization"] == "nf4" else "full-precision base"
    checkpointing = "gradient checkpointing" if settings["gradient_checkpointing"] else "no gradient checkpointing"
    gen_batch = settings["generation_batch_size"] or settings["prompts_per_step"] * settings["group_size"]
    warmup = f", warm-up steps of {settings['warmup_tokens']} tokens" if settings.get("warmup_tokens") else ""
    return (
        f"{model}, {base} + LoRA r={settings['lora_r']} alpha={settings['lora_alpha']} all-linear, {checkpointing}; "
        f"preset {settings['preset']}: {settings['prompts_per_step']} prompts x {settings['group_size']} responses "
        f"of up to {settings['max_new_tokens']} tokens (prompt {tokens} tokens){warmup}, micro-batch "
        f"{settings['micro_batch_size']}, generation batch {gen_batch}, temperature {settings['temperature']}, lr "
        f"{settings['lr']}, beta {settings['kl_coef']}, entropy coef {settings['entropy_coef']}, log-prob chunk "
        f"{settings['logprob_chunk_size']}; device {name}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, trl {trl_version}"
    )


# ---------------------------------------------------------------------------------------------- one system
def run_in_subprocess(case: dict) -> dict:
    """One system in a fresh process (clean peak-memory counters); its progress lines pass through to stderr."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               TRANSFORMERS_VERBOSITY="error", PYTHONUNBUFFERED="1")
    tag = case["system"] + (f" #{case['run'] + 1}" if case.get("run") else "")
    # The case (with the results so far, for the child's progress file) travels in a file, not on the command line.
    with tempfile.NamedTemporaryFile("w", prefix="grpo-step-case-", suffix=".json") as case_file:
        json.dump(case, case_file)
        case_file.flush()
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--case", case_file.name],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        stderr_tail: list[str] = []
        for line in proc.stderr:
            if not line.startswith(("Loading weights", "Writing model")):
                sys.stderr.write(f"  [{tag}] {line}")
                stderr_tail = (stderr_tail + [line.rstrip()])[-20:]
        stdout = proc.stdout.read()
        proc.wait()
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    last = next((line for line in reversed(stderr_tail) if line.strip()), f"exit code {proc.returncode}")
    print(f"{case['system']} failed (exit {proc.returncode}): {last}", file=sys.stderr)
    return {"system": case["system"], "run": case.get("run", 0), "error": last}


def run_case(case: dict) -> dict:
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    save_progress(case, {"system": case["system"], "run": case.get("run", 0), "partial": True,
                         "status": "while loading the model, before its first step",
                         "steps": []})
    if case["system"] == "trl":
        try:
            import trl  # noqa: F401
        except ImportError:
            return {"system": "trl", "run": case.get("run", 0),
                    "error": "trl is not installed (pip install 'reprokit[bench]' or pip install trl)"}
        return run_trl(case)
    return run_reprokit(case)


def save_progress(case: dict, result: dict) -> None:
    """The results so far, this system's unfinished one last, so a process killed mid-run leaves its steps."""
    if case.get("json_path"):
        write_json(case["json_path"], case.get("json_header", ""), list(case.get("json_done", [])) + [result])


class PhaseTimer:
    """Wall time per phase and step, synchronizing the GPU at each boundary so queued kernels are counted."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = {}
        self.tokens = 0
        self.decode_steps = 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds

    def wrap(self, name: str, fn, when=None):
        def timed(*args, **kwargs):
            if when is not None and not when():
                return fn(*args, **kwargs)
            with self.phase(name):
                return fn(*args, **kwargs)

        return timed

    def take(self) -> dict:
        out = dict(self.totals, tokens=self.tokens, decode_steps=self.decode_steps)
        self.totals, self.tokens, self.decode_steps = {}, 0, 0
        return out


class PeakMemory:
    """Peak memory of the timed steps: CUDA allocator statistics, or on CPU the process's peak resident set.

    On CPU the peak (VmHWM) is reset before the first step when Linux allows it (``/proc/self/clear_refs``), and
    the resident set after loading is kept, so ``peak - loaded`` is what the steps themselves add (activations,
    logits, optimizer state) whatever the imports of each system weigh. Without the reset the peak counts loading.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.loaded = None
        self.kind = "cuda" if device.type == "cuda" else "peak RSS"

    def start_of_steps(self) -> None:
        if self.device.type == "cuda":
            return
        self.loaded = _proc_status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = "peak RSS incl. loading"

    def start_of_timed_steps(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict:
        if self.device.type == "cuda":
            return dict(peak_allocated=torch.cuda.max_memory_allocated(self.device),
                        peak_reserved=torch.cuda.max_memory_reserved(self.device), memory_kind="cuda")
        peak = _proc_status_kib("VmHWM")
        if peak is None or self.kind != "peak RSS":
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return dict(peak_allocated=peak, peak_reserved=None, rss_loaded=self.loaded, memory_kind=self.kind)


def _proc_status_kib(field: str) -> int | None:
    """A /proc/self/status field (kB) in bytes, or None where there is no such file."""
    try:
        match = re.search(rf"^{field}:\s+(\d+)\s*kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def run_reprokit(case: dict) -> dict:
    """GRPOModule's own stages, each timed: the rollout, the no-grad log-prob passes, the gradients over
    micro-batches, then clipping and the optimizer that configure_optimizers builds."""
    from reprokit.policy import ModelConfig, count_parameters, load_policy
    from reprokit.training.grpo import GRPOConfig, GRPOModule, accumulate_gradients, logprob_passes, rollout

    device = torch.device(case["device"])
    model, tokenizer = load_policy(
        ModelConfig(
            name_or_path=case["model_dir"], quantization=case["quantization"], double_quant=case["double_quant"],
            lora_r=case["lora_r"], lora_alpha=case["lora_alpha"], lora_dropout=0.0, lora_target_modules="all-linear",
            gradient_checkpointing=case["gradient_checkpointing"],
        ),
        device=device,
    )
    batch = prompt_batch(tokenizer, case).to(device)
    cfg = GRPOConfig.of(
        group_size=case["group_size"], temperature=case["temperature"], top_p=case["top_p"],
        max_new_tokens=case["max_new_tokens"], generation_batch_size=case["generation_batch_size"],
        micro_batch_size=case["micro_batch_size"], lr=case["lr"], weight_decay=case["weight_decay"],
        max_grad_norm=case["max_grad_norm"], kl_coef=case["kl_coef"], entropy_coef=case["entropy_coef"],
        loss_agg=case["loss_agg"], logprob_chunk_size=case["logprob_chunk_size"], log_completions_every=0,
        merged_copy=case["system"] == "reprokit-merged",
        reward=case["reward"] if case["reward"] != "alternating" else "math",
    )
    reward = alternating_reward if case["reward"] == "alternating" else None  # None: the rollout section's by name
    module = GRPOModule(model, tokenizer, cfg, reward_fn=reward).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = module.configure_optimizers()["optimizer"]
    clip = cfg.train.max_grad_norm if cfg.train.max_grad_norm is not None else float("inf")
    timer = PhaseTimer(device)
    lengths_of = {"max_new_tokens": case["max_new_tokens"]}
    rows_per_call = ((cfg.rollout.generation_batch_size or batch.input_ids.shape[0] * cfg.rollout.group_size)
                     // cfg.rollout.group_size * cfg.rollout.group_size)

    def step(progress):
        policy = module.policy
        with timer.phase("rollout"):
            ro, rounds = rollout(policy, batch, module.sample_groups, lambda _: batch)
            timer.add("generation", sum(r.comps.seconds for r in rounds))
        lengths = ro.loss_mask.sum(-1)  # [N] response tokens (the mask ends at the first EOS)
        timer.tokens += int(lengths.sum())
        # Each generation call decodes until its own longest response ends.
        timer.decode_steps += sum(int(lengths[i : i + rows_per_call].max()) for i in range(0, lengths.numel(), rows_per_call))
        progress("rollout")
        with timer.phase("score"):
            ro = logprob_passes(policy, ro, behaviour=False)
        progress("score")
        opt.zero_grad(set_to_none=True)
        with timer.phase("fwd_bwd"):
            accumulate_gradients(policy, ro, lambda loss: loss.backward())
        progress("accumulate_gradients")
        with timer.phase("optimizer"):
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()

    def set_length(warmup: bool) -> None:
        lengths_of["max_new_tokens"] = case["warmup_tokens"] if warmup and case.get("warmup_tokens") else case["max_new_tokens"]
        rollout = replace(module.cfg.rollout, max_new_tokens=lengths_of["max_new_tokens"])
        module.policy = replace(module.policy, cfg=replace(module.policy.cfg, rollout=rollout))

    extra = dict(trainable_parameters=count_parameters(model)[0], adapter_dtype=str(params[0].dtype))
    return timed_steps(case, timer, step, model, set_length, extra)


def run_trl(case: dict) -> dict:
    """trl.GRPOTrainer on the same saved model, quantized and adapted the same way, timed per optimizer step."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reprokit.policy import resolve_compute_dtype

    device = torch.device(case["device"])
    dtype = resolve_compute_dtype("auto", device)
    tokenizer = load_tokenizer(case["model_dir"])
    quantization = None
    if case["quantization"] == "nf4":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=case["double_quant"],
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(case["model_dir"], dtype=dtype, device_map={"": str(device)},
                                                 quantization_config=quantization)
    prompt = prompt_text(tokenizer, case)
    total_steps = case["warmup"] + case["steps"]
    n_responses = case["prompts_per_step"] * case["group_size"]
    rows = case["prompts_per_step"] * total_steps
    columns = {"prompt": [prompt] * rows}
    if case["reward"] == "world":
        columns["answer"] = [step_examples(case)[0].answer] * rows
    reward = world_reward_for_trl if case["reward"] == "world" else alternating_reward
    dataset = datasets.Dataset.from_dict(columns)
    with tempfile.TemporaryDirectory(prefix="grpo-step-trl-") as out_dir:
        args = GRPOConfig(
            output_dir=out_dir, max_steps=total_steps, per_device_train_batch_size=case["micro_batch_size"],
            gradient_accumulation_steps=n_responses // case["micro_batch_size"],
            generation_batch_size=case["generation_batch_size"] or n_responses,
            num_generations=case["group_size"], max_completion_length=case["max_new_tokens"],
            temperature=case["temperature"], top_p=case["top_p"], top_k=0,
            beta=case["kl_coef"], entropy_coef=case["entropy_coef"], loss_type="dapo", scale_rewards="group",
            epsilon=0.2, num_iterations=1, learning_rate=case["lr"], weight_decay=case["weight_decay"],
            max_grad_norm=case["max_grad_norm"], lr_scheduler_type="constant", warmup_steps=0,
            gradient_checkpointing=case["gradient_checkpointing"],
            gradient_checkpointing_kwargs={"use_reentrant": False} if case["gradient_checkpointing"] else None,
            bf16=dtype == torch.bfloat16, use_cpu=device.type == "cpu", use_vllm=False,
            logging_steps=1, report_to="none", save_strategy="no", log_completions=False,
            disable_tqdm=True, dataloader_num_workers=0, seed=0, shuffle_dataset=False,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=reward, args=args, train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=case["lora_r"], lora_alpha=case["lora_alpha"], lora_dropout=0.0,
                                   target_modules="all-linear", bias="none", task_type="CAUSAL_LM"),
        )
        timer = PhaseTimer(device)
        memory = PeakMemory(device)
        generate_single_turn = trainer._generate_single_turn

        def timed_generation(*a, **kw):
            with timer.phase("generation"):
                response_ids, logprobs = generate_single_turn(*a, **kw)
            timer.tokens += sum(len(ids) for ids in response_ids)
            timer.decode_steps += max(len(ids) for ids in response_ids)
            return response_ids, logprobs

        # TRL's own methods are wrapped from outside to split its step into the same phases.
        trainer._generate_single_turn = timed_generation
        logps = trainer._get_per_token_logps_and_entropies
        trainer._get_per_token_logps_and_entropies = timer.wrap(
            "score", timer.wrap("fwd_bwd", logps, when=torch.is_grad_enabled),
            when=lambda: not torch.is_grad_enabled(),
        )
        backward = trainer.accelerator.backward
        trainer.accelerator.backward = timer.wrap("fwd_bwd", backward)

        def set_length(warmup: bool) -> None:
            length = case["warmup_tokens"] if warmup and case.get("warmup_tokens") else case["max_new_tokens"]
            trainer.generation_config.max_new_tokens = length
            trainer.generation_kwargs["max_new_tokens"] = length

        trainable = [p for p in trainer.model.parameters() if p.requires_grad]
        extra = dict(trainable_parameters=sum(p.numel() for p in trainable), adapter_dtype=str(trainable[0].dtype))
        steps: list[dict] = []

        class StepClock(TrainerCallback):
            def on_step_begin(self, *_, **__):
                i = len(steps)
                if i == 0:
                    memory.start_of_steps()
                if i == case["warmup"]:
                    memory.start_of_timed_steps()
                set_length(i < case["warmup"])
                timer.sync()
                self.start, self.cpu = time.perf_counter(), time.process_time()

            def on_step_end(self, *_, **__):
                timer.sync()
                i = len(steps)
                record = dict(timer.take(), step=time.perf_counter() - self.start, cpu=time.process_time() - self.cpu,
                              warmup=i < case["warmup"],
                              max_new_tokens=trainer.generation_config.max_new_tokens)
                steps.append(record)
                report_step(i, case, record)
                save_progress(case, summarize(case, steps, trainer.model, memory, extra, partial=True))

        trainer.add_callback(StepClock())
        trainer.train()
    return summarize(case, steps, trainer.model, memory, extra)


def timed_steps(case: dict, timer: PhaseTimer, step_fn, model, set_length, extra: dict) -> dict:
    device = timer.device
    memory = PeakMemory(device)
    memory.start_of_steps()
    steps: list[dict] = []
    for i in range(case["warmup"] + case["steps"]):
        if i == case["warmup"]:
            memory.start_of_timed_steps()
        set_length(i < case["warmup"])
        timer.sync()
        start, cpu = time.perf_counter(), time.process_time()
        # After each phase, the memory so far: a step cut off mid-way (a time limit) still tells its peak.
        step_fn(lambda phase, i=i: save_progress(case, summarize(case, steps, model, memory, extra, partial=True,
                                                                 where=f"in step {i}, after {phase}")))
        timer.sync()
        record = dict(timer.take(), step=time.perf_counter() - start, cpu=time.process_time() - cpu,
                      warmup=i < case["warmup"], max_new_tokens=case["warmup_tokens"] if i < case["warmup"] and
                      case.get("warmup_tokens") else case["max_new_tokens"])
        steps.append(record)
        report_step(i, case, record)
        save_progress(case, summarize(case, steps, model, memory, extra, partial=True))
    return summarize(case, steps, model, memory, extra)


def report_step(i: int, case: dict, record: dict) -> None:
    kind = "warm-up" if record["warmup"] else "timed"
    print(f"step {i} ({kind}): {record['step']:.2f} s, generation {record.get('generation', 0.0):.2f} s, "
          f"{record['tokens']} tokens", file=sys.stderr, flush=True)


def summarize(case: dict, steps: list[dict], model, memory: PeakMemory, extra: dict, partial: bool = False,
              where: str | None = None) -> dict:
    """Per-step records, peak memory, and the bytes a decode step of `model` (the one sampled from) must read."""
    out = dict(system=case["system"], run=case.get("run", 0), steps=list(steps), **memory.read(),
               **decode_bytes(model, case), **extra)
    if partial:
        timed = sum(not s["warmup"] for s in steps)
        done = f"{len(steps)} of {case['warmup'] + case['steps']} steps done ({timed} of {case['steps']} timed)"
        out.update(partial=True, status=f"{where}; {done}" if where else f"after {done}")
    return out


def decode_bytes(model, case: dict) -> dict:
    """Bytes one decode step must read at least: every weight once, and the KV cache at the mean context."""
    weight_bytes = 0
    for param in model.parameters():
        weight_bytes += param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        if state is not None:  # NF4 block scales (and their own scales under double quantization)
            for t in (state.absmax, getattr(getattr(state, "state2", None), "absmax", None)):
                weight_bytes += 0 if t is None else t.numel() * t.element_size()
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_dtype_bytes = 2 if case["device"].startswith("cuda") else 4
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * kv_dtype_bytes
    gen_batch = case["generation_batch_size"] or case["prompts_per_step"] * case["group_size"]
    mean_context = case["prompt_tokens"] + case["max_new_tokens"] / 2
    return dict(weight_bytes=weight_bytes, kv_bytes_per_step=per_token * gen_batch * mean_context,
                gen_batch=gen_batch)


# ---------------------------------------------------------------------------------------------- report
def timed_records(result: dict) -> list[dict]:
    return [s for s in result.get("steps", []) if not s.get("warmup")]


def medians(steps: list[dict]) -> dict:
    med = lambda values: statistics.median(list(values))  # noqa: E731
    out = {key: med(s.get(key, 0.0) for s in steps) for key in ("step", "cpu", *TIMED_PHASES)}
    out["other"] = med(s["step"] - sum(s.get(k, 0.0) for k in TIMED_PHASES) for s in steps)
    out["gen_tok_s"] = med(s["tokens"] / max(s.get("generation", 0.0), 1e-9) for s in steps)
    # Decode steps per second = tokens per second of one sequence (each step adds one token to every row).
    out["seq_tok_s"] = med(s["decode_steps"] / max(s.get("generation", 0.0), 1e-9) for s in steps)
    out["tokens"] = med(s["tokens"] for s in steps)
    return out


def merge_runs(results: list[dict]) -> list[dict]:
    """One entry per system (first-seen order): the timed steps of all its runs, memory medians over runs."""
    order: list[str] = []
    groups: dict[str, list[dict]] = {}
    for r in results:
        if r["system"] not in groups:
            order.append(r["system"])
            groups[r["system"]] = []
        groups[r["system"]].append(r)
    merged = []
    for system in order:
        runs = groups[system]
        ok = [r for r in runs if "error" not in r and timed_records(r)]
        problems = [r.get("error") or cut_off(r) for r in runs if r not in ok]
        if not ok:
            merged.append(dict(system=system, error="; ".join(dict.fromkeys(problems)) or "no run"))
            continue
        def peak(key: str, ok=ok):
            return statistics.median(r[key] for r in ok) if all(r.get(key) is not None for r in ok) else None

        first = ok[0]
        merged.append(dict(
            system=system, runs=len(ok), runs_failed=len(runs) - len(ok), problems=problems,
            partial=any(r.get("partial") for r in ok), status=first.get("status"),
            steps=[s for r in ok for s in timed_records(r)],
            peak_allocated=peak("peak_allocated"), peak_reserved=peak("peak_reserved"),
            rss_loaded=peak("rss_loaded"), memory_kind=first.get("memory_kind", "cuda"),
            weight_bytes=first["weight_bytes"], kv_bytes_per_step=first["kv_bytes_per_step"],
            gen_batch=first["gen_batch"], trainable_parameters=first.get("trainable_parameters"),
            adapter_dtype=first.get("adapter_dtype"),
            peak_allocated_runs=[r["peak_allocated"] for r in ok],
            step_s_runs=[statistics.median(s["step"] for s in timed_records(r)) for r in ok],
        ))
    return merged


def cut_off(result: dict) -> str:
    """What a run that ended before its first timed step measured: where it was, and its peak memory so far."""
    text = f"cut off {result.get('status', 'before a timed step')}"
    if result.get("peak_allocated"):
        kind = "peak RSS" if result.get("memory_kind", "cuda") != "cuda" else "peak allocated"
        text += f"; {kind} so far {result['peak_allocated'] / 2**30:.2f} GiB"
        if result.get("peak_reserved"):
            text += f", reserved {result['peak_reserved'] / 2**30:.2f} GiB"
    return text


def figures(results: list[dict], bandwidth_gbs: float | None = None) -> list[dict]:
    """The table's numbers, one dict per system, ratios to TRL included."""
    if bandwidth_gbs is None:
        bandwidth_gbs = lookup_bandwidth()
    merged = merge_runs(results)
    out = []
    for m in merged:
        if "error" in m:
            out.append(dict(system=m["system"], error=m["error"]))
            continue
        fig = dict(system=m["system"], runs=m["runs"], timed_steps=len(m["steps"]), partial=m["partial"],
                   **medians(m["steps"]), memory_kind=m["memory_kind"], peak_allocated=m["peak_allocated"],
                   peak_reserved=m["peak_reserved"], trainable_parameters=m["trainable_parameters"],
                   adapter_dtype=m["adapter_dtype"], step_s_runs=m["step_s_runs"],
                   peak_allocated_runs=m["peak_allocated_runs"])
        if m["rss_loaded"] is not None and m["peak_allocated"] is not None:
            fig["rss_loaded"] = m["rss_loaded"]
            fig["peak_over_loaded"] = m["peak_allocated"] - m["rss_loaded"]
        bytes_per_step = m["weight_bytes"] + m["kv_bytes_per_step"]
        fig.update(weight_bytes=m["weight_bytes"], kv_bytes_per_step=m["kv_bytes_per_step"], gen_batch=m["gen_batch"],
                   bandwidth_gbs=bandwidth_gbs)
        if bandwidth_gbs:
            fig["bound_seq_tok_s"] = bandwidth_gbs * 1e9 / bytes_per_step
            fig["of_bound"] = fig["seq_tok_s"] / fig["bound_seq_tok_s"]
        if m["problems"]:
            fig["problems"] = m["problems"]
        out.append(fig)
    trl = next((f for f in out if f["system"] == "trl" and "error" not in f), None)
    for f in out:
        if trl is None or "error" in f:
            continue
        for key in ("step", "cpu", "gen_tok_s", "peak_allocated", "peak_reserved", "peak_over_loaded"):
            if f.get(key) is not None and trl.get(key):
                f[f"{key}_x_trl"] = f[key] / trl[key]
    return out


def format_table(results: list[dict], bandwidth_gbs: float | None, header: str = "") -> str:
    """The markdown table (one row per system) with its header and notes, as printed."""
    figs = figures(results, bandwidth_gbs)
    ok = [f for f in figs if "error" not in f]
    bandwidth = next((f["bandwidth_gbs"] for f in ok), bandwidth_gbs)
    kind = next((f["memory_kind"] for f in ok), "cuda")
    on_cpu = kind != "cuda"
    many_runs = any(f["runs"] > 1 for f in ok)
    x = lambda f, key: f"{f[key + '_x_trl']:.2f}" if f.get(key + "_x_trl") is not None else "-"  # noqa: E731
    gib = lambda v: "-" if v is None else f"{v / 2**30:.2f}"  # noqa: E731
    columns = ["system"] + (["runs"] if many_runs else []) + ["step s", "x TRL"] + (["step CPU s"] if on_cpu else [])
    columns += ["gen s", "score s", "fwd+bwd s", "other s", "gen tok/s", "x TRL"]
    if on_cpu:
        columns += ["peak RSS GiB", "x TRL", "steps add MiB", "x TRL"]
    else:
        columns += ["decode tok/s/seq", "BW-bound tok/s/seq", "of bound", "peak alloc GiB", "x TRL",
                    "peak reserved GiB", "x TRL"]
    rows = []
    for f in figs:
        if "error" in f:
            text = f["error"] if f["error"].startswith("cut off") else "failed: " + f["error"]
            rows.append([f["system"], text] + [""] * (len(columns) - 2))
            continue
        name = f["system"] + (" (cut off: partial)" if f["partial"] else "")
        row = [name] + ([str(f["runs"])] if many_runs else []) + [f"{f['step']:.2f}", x(f, "step")]
        row += [f"{f['cpu']:.2f}"] if on_cpu else []
        row += [f"{f['generation']:.2f}", f"{f['score']:.2f}", f"{f['fwd_bwd']:.2f}", f"{f['other']:.2f}",
                f"{f['gen_tok_s']:.0f}", x(f, "gen_tok_s")]
        if on_cpu:
            over = f.get("peak_over_loaded")
            row += [gib(f["peak_allocated"]), x(f, "peak_allocated"),
                    "-" if over is None else f"{over / 2**20:.0f}", x(f, "peak_over_loaded")]
        else:
            bound = f.get("bound_seq_tok_s")
            row += [f"{f['seq_tok_s']:.1f}", f"{bound:.0f}" if bound else "-",
                    f"{f['of_bound']:.1%}" if bound else "-", gib(f["peak_allocated"]), x(f, "peak_allocated"),
                    gib(f["peak_reserved"]), x(f, "peak_reserved")]
        rows.append(row)
    lines = [header, ""] if header else []
    counts = sorted({f["timed_steps"] for f in ok})
    memory_note = {
        "cuda": "peak memory = torch.cuda.max_memory_allocated / max_memory_reserved over the timed steps",
        "peak RSS": "peak RSS = the process's peak resident set over the steps; 'steps add' = that peak minus the "
                    "resident set after loading",
        "peak RSS incl. loading": "peak RSS = the process's peak resident set, loading included (no reset here)",
    }.get(kind, kind)
    if not ok:
        lines.append("no system finished a timed step")
    else:
        bound = "" if on_cpu else f"; bound at {bandwidth:.0f} GB/s" if bandwidth else "; no bandwidth known (--bandwidth_gbs)"
        lines.append(
            f"median of {'/'.join(map(str, counts))} timed steps"
            + (" (all runs together; memory: median over runs)" if many_runs else "") + " after warm-up; 'x TRL' = "
            "this row / TRL's row; fwd+bwd = the update's log-prob forward and backward together; " + memory_note + bound
        )
    lines.append("")
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(columns)]
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    lines.append("|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|")
    for row in rows:
        lines.append("| " + " | ".join((c.rjust(w) if i else c.ljust(w)) for i, (c, w) in enumerate(zip(row, widths)))
                     + " |")
    for f in ok:
        per_step = (f["weight_bytes"] + f["kv_bytes_per_step"]) / 2**30
        lines.append("")
        lines.append(
            f"{f['system']}: {f['trainable_parameters']:,} trainable parameters ({f['adapter_dtype']}); bytes per "
            f"decode step >= {per_step:.3f} GiB = weights {f['weight_bytes'] / 2**30:.3f} GiB + KV cache "
            f"{f['kv_bytes_per_step'] / 2**30:.3f} GiB ({f['gen_batch']} sequences at the mean context)"
            + (f"; per run: step s {', '.join(f'{v:.2f}' for v in f['step_s_runs'])}" if f["runs"] > 1 else "")
            + (f"; problems: {'; '.join(f['problems'])}" if f.get("problems") else "")
        )
    return "\n".join(lines)


def lookup_bandwidth() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((gbs for key, gbs in BANDWIDTH_GBS if key in name), None)


# ---------------------------------------------------------------------------------------------- sampling variants
def compare_sampling(model_dir: Path, settings: dict, device: str, args: argparse.Namespace) -> None:
    """Generation alone on the policy of the benchmark: transformers' generate vs reprokit.sampling, and each
    saving switched off in turn, interleaved round by round so load changes hit every variant alike."""
    from reprokit.policy import ModelConfig, eos_token_ids, load_policy
    from reprokit.sampling import MergedCopy, _decode, _decode_with_hf_generate

    model, tokenizer = load_policy(
        ModelConfig(name_or_path=str(model_dir), quantization=settings["quantization"], lora_r=settings["lora_r"],
                    lora_alpha=settings["lora_alpha"], gradient_checkpointing=settings["gradient_checkpointing"]),
        device=device,
    )
    model.eval()
    eos_ids = eos_token_ids(tokenizer, model)
    gen_batch = settings["generation_batch_size"] or settings["prompts_per_step"] * settings["group_size"]
    batch = prompt_batch(tokenizer, dict(settings, prompts_per_step=gen_batch // settings["group_size"])).to(device)
    merged = MergedCopy(model)
    if args.eos_rate > 0:
        for policy in (model, merged.model):
            add_eos_push(policy, eos_ids[0], args.eos_rate, settings["max_new_tokens"], settings["temperature"])
    common = dict(n=settings["group_size"], max_new_tokens=settings["max_new_tokens"],
                  temperature=settings["temperature"], top_p=settings["top_p"], eos_ids=eos_ids,
                  pad_id=tokenizer.pad_token_id)
    ids, mask = batch.input_ids, batch.attention_mask
    variants = {
        "transformers generate (before)": lambda: _decode_with_hf_generate(model, ids, mask, **common),
        "decode loop, all savings (after)": lambda: _decode(model, ids, mask, **common),
        "  without prefill-once": lambda: _decode(model, ids, mask, **common, prefill_once=False),
        "  without preallocated cache": lambda: _decode(model, ids, mask, **common, preallocate=False),
        "  without dropping finished rows": lambda: _decode(model, ids, mask, **common, drop_finished=False),
        "  without inverse-CDF sampler": lambda: _decode(model, ids, mask, **common, inverse_cdf=False),
        "decode loop, no savings": lambda: _decode(model, ids, mask, **common, prefill_once=False,
                                                   preallocate=False, drop_finished=False, inverse_cdf=False),
        "merged copy + decode loop": lambda: (merged.sync(), _decode(merged.model, ids, mask, **common))[1],
    }
    if device.startswith("cuda"):
        # Not in reprokit.sampling (yet): a static cache lets transformers compile the decode step into CUDA graphs
        # (mode reduce-overhead), which removes the per-kernel launch cost that dominates a 1.5B decode step.
        variants["merged copy + generate, static cache, compiled"] = lambda: static_compiled_generate(
            merged.model, ids, mask, **common)
    on_cpu = not device.startswith("cuda")
    sync = (lambda: None) if on_cpu else (lambda: torch.cuda.synchronize())
    times = {name: [] for name in variants}
    cpu_times = {name: [] for name in variants}
    tokens = {name: [] for name in variants}
    for round_ in range(args.warmup + args.steps):
        for name, fn in variants.items():
            torch.manual_seed(round_)
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            out = fn()
            sync()
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - cpu_start)
                is_eos = torch.isin(out, torch.tensor(eos_ids, device=out.device))
                ends = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, out.shape[1])
                tokens[name].append(int(ends.sum()))
    # On a shared CPU the process's own CPU time is the steadier measure (wall time also counts waiting for a
    # core); on a GPU the wall time (synchronized) is what counts.
    key = cpu_times if on_cpu else times
    base = statistics.median(key["transformers generate (before)"])
    print(describe(settings, device, model_dir))
    print(f"\ngeneration only: {gen_batch} sequences ({gen_batch // settings['group_size']} prompts x "
          f"{settings['group_size']}), up to {settings['max_new_tokens']} tokens, eos_rate {args.eos_rate}; median "
          f"of {args.steps} interleaved rounds after {args.warmup} warm-up"
          + ("; 'vs generate' compares process CPU time" if on_cpu else "") + "\n")
    print("| variant | median wall s | median CPU s | tokens | tok/s (wall) | vs generate |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in variants:
        wall, cpu = statistics.median(times[name]), statistics.median(cpu_times[name])
        mean_tokens = statistics.mean(tokens[name])
        ratio = statistics.median(key[name]) / base
        print(f"| {name} | {wall:.3f} | {cpu:.3f} | {mean_tokens:.0f} | {mean_tokens / wall:.0f} | {ratio:.2f} |")


def static_compiled_generate(model, ids, mask, *, n, max_new_tokens, temperature, top_p, eos_ids, pad_id):
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
        top_p=top_p, top_k=0, num_return_sequences=n, eos_token_id=eos_ids, pad_token_id=pad_id,
        cache_implementation="static",
    )  # [p*n, L + t]
    return out[:, ids.shape[1]:]


def add_eos_push(model, eos_id: int, rate: float, max_new_tokens: int, temperature: float) -> None:
    """Raise the EOS logit so that about `rate` of the responses end before `max_new_tokens` (geometric lengths).

    A per-step stop probability q gives P(end within T) = 1 - (1 - q)^T. Random weights give nearly uniform
    logits, so p(eos) = exp(b / temperature) / (V - 1 + exp(b / temperature)) = q fixes the bonus b.
    """
    import math

    q = 1 - (1 - min(rate, 0.999)) ** (1 / max_new_tokens)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    bonus = temperature * math.log(q * (head.weight.shape[0] - 1) / (1 - q))

    def hook(module, inputs, logits):
        return logits.index_add(-1, torch.tensor([eos_id], device=logits.device),
                                torch.full((*logits.shape[:-1], 1), bonus, dtype=logits.dtype, device=logits.device))

    head.register_forward_hook(hook)


if __name__ == "__main__":
    main()
