"""GRPO step time and memory: reprokit's GRPOModule against TRL's GRPOTrainer on the same 4-bit + LoRA model.

Builds Qwen2.5-Math-1.5B from its config with random weights (nothing is downloaded), quantizes the base to
NF4, adds LoRA (rank and targets from the preset: r 64 on every linear layer) and times whole GRPO steps of a
one-shot preset (recipes/one_shot/<preset>.yaml: prompts per step, group size, response length, micro-batch,
generation batch, KL and entropy coefficients), split into

* generation (rollout sampling),
* score: the no-grad passes before the update (the KL reference; old log-probs when off-policy),
* log-prob fwd: the log-prob + entropy forward of the update, with autograd,
* backward (gradient-checkpointed decoder recomputed), and other (optimizer step, rewards, bookkeeping).

The same model and settings then go through ``trl.GRPOTrainer`` (no vLLM; same LoRA, 4-bit base, batch,
lengths, gradient checkpointing, KL beta, entropy coefficient, token-level "dapo" loss). Each system runs in
its own process so peak-memory figures do not mix. The table shows medians over the steps after warm-up and
each system's ratio to TRL.

Random weights never emit an end-of-sequence token, so every response runs to the length limit: the figures
are the worst case of a real run, where many responses end early. Throughput is also given as a fraction of the
memory-bandwidth bound: every decode step must read the weights (4-bit base, LoRA, embedding / output head)
and the KV cache at the mean context length, so ``bandwidth / bytes per step`` is the fastest any decoder can
emit tokens per sequence.

    python benchmarks/grpo_step.py --preset consumer-12gb              # on a CUDA GPU: reprokit and TRL
    python benchmarks/grpo_step.py --preset paper --steps 2 --warmup 1 # responses up to 3072 tokens
    python benchmarks/grpo_step.py --tiny                              # CPU smoke run, a tiny Qwen2 (~2 min)
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
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"consumer-12gb": "consumer-12gb.yaml", "paper": "qwen2.5-math-1.5b.yaml", "cpu": "cpu.yaml"}
SYSTEMS = ("reprokit", "reprokit-merged", "trl")
# Peak memory bandwidth in GB/s of common GPUs, matched against torch.cuda.get_device_name (first match wins).
BANDWIDTH_GBS = [
    ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350), ("H200", 4800), ("GH200", 4000),
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


# ---------------------------------------------------------------------------------------------- options
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="consumer-12gb", choices=sorted(PRESETS),
                        help="one-shot preset whose batch, lengths and coefficients are used")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per system, median reported (default 3; 2 with --tiny or --proxy)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator, kernels, autotuning)")
    parser.add_argument("--tiny", action="store_true",
                        help="CPU smoke mode: a 2-layer Qwen2 with the real vocabulary, 2 prompts x 4 responses of 32 tokens")
    parser.add_argument("--proxy", action="store_true",
                        help="CPU timing mode: a 4-layer Qwen2 (hidden 256, vocab 2816) whose output head is as small "
                             "a share of the work as the real model's; 4 prompts x 8 responses of 256 tokens")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=None,
                        help="what to run (default: reprokit, reprokit-merged and trl)")
    parser.add_argument("--no-trl", dest="no_trl", action="store_true", help="skip the TRL row")
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
    parser.add_argument("--threads", type=int, default=None, help="torch threads on CPU (default: torch's choice)")
    parser.add_argument("--json", default=None, help="also write the per-step results here")
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="print one table from results written by earlier --json runs (e.g. one per system)")
    parser.add_argument("--compare-sampling", dest="compare_sampling", action="store_true",
                        help="time generation alone: transformers' generate vs each saving of reprokit.sampling")
    parser.add_argument("--eos_rate", type=float, default=0.0,
                        help="with --compare-sampling: push the EOS logit so about this fraction of responses "
                             "end before the limit (random weights otherwise never stop)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one system in this process
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 2 if (args.tiny or args.proxy) else 3
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.tiny and args.proxy:
        parser.error("--tiny and --proxy are two different models: pick one")
    args.scale = "tiny" if args.tiny else "proxy" if args.proxy else "full"
    return args


def load_settings(args: argparse.Namespace) -> dict:
    """Batch, lengths, LoRA and loss settings from the preset YAML, with the command-line overrides."""
    import yaml

    path = REPO / "recipes" / "one_shot" / PRESETS[args.preset]
    preset = yaml.safe_load(path.read_text())
    model, grpo, data = preset["model"], preset["grpo"], preset["data"]
    settings = dict(
        preset=args.preset,
        lora_r=model.get("lora_r", 64), lora_alpha=model.get("lora_alpha", 128),
        gradient_checkpointing=model.get("gradient_checkpointing", True),
        double_quant=model.get("double_quant", True),
        group_size=grpo["group_size"], temperature=grpo.get("temperature", 0.6), top_p=grpo.get("top_p", 1.0),
        max_new_tokens=grpo["max_new_tokens"], micro_batch_size=grpo["micro_batch_size"],
        generation_batch_size=grpo.get("generation_batch_size"), lr=grpo.get("lr", 2e-5),
        weight_decay=grpo.get("weight_decay", 0.01), max_grad_norm=grpo.get("max_grad_norm", 1.0),
        kl_coef=grpo.get("kl_coef", 0.001), entropy_coef=grpo.get("entropy_coef", 0.001),
        loss_agg=grpo.get("loss_agg", "token-mean"), logprob_chunk_size=grpo.get("logprob_chunk_size", 1024),
        prompts_per_step=data["prompts_per_step"], template=data.get("template", "qwen25-math-cot"),
        scale=args.scale,
    )
    if args.scale == "tiny":
        settings.update(prompts_per_step=2, group_size=4, max_new_tokens=32, micro_batch_size=4,
                        generation_batch_size=None, lora_r=8, lora_alpha=16, logprob_chunk_size=64)
    elif args.scale == "proxy":
        settings.update(prompts_per_step=4, group_size=8, max_new_tokens=256, micro_batch_size=8,
                        generation_batch_size=None, lora_r=16, lora_alpha=32, logprob_chunk_size=256)
    for key in ("max_new_tokens", "prompts_per_step", "generation_batch_size", "micro_batch_size",
                "logprob_chunk_size"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if settings["loss_agg"] != "token-mean":
        raise SystemExit(f"{path}: loss_agg {settings['loss_agg']!r} has no TRL counterpart here; use token-mean")
    return settings


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> None:
    args = parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(run_case(json.loads(args.case))), flush=True)
        return
    if args.combine:
        results = []
        for path in args.combine:
            results.extend(json.loads(Path(path).read_text())["results"])
        print_table(results, args.bandwidth_gbs, header=json.loads(Path(args.combine[0]).read_text())["header"])
        return

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = load_settings(args)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu (and --tiny or --proxy)")
    if device == "cpu" and args.scale == "full":
        print("note: the full-size model on CPU takes hours per step; --tiny is the CPU smoke mode", file=sys.stderr)

    with model_directory(args.model_dir) as model_dir:
        prepare_model(model_dir, scale=args.scale, device=device)
        if args.compare_sampling:
            compare_sampling(model_dir, settings, device, args)
            return
        systems = list(args.systems or SYSTEMS)
        if args.no_trl and "trl" in systems:
            systems.remove("trl")
        header = describe(settings, device, model_dir)
        settings["prompt_tokens"] = prompt_length(model_dir, settings)
        results = []
        for system in systems:
            print(f"running {system} ({args.warmup} warm-up + {args.steps} timed steps)", file=sys.stderr, flush=True)
            case = dict(settings, system=system, device=device, model_dir=str(model_dir), steps=args.steps,
                        warmup=args.warmup, threads=args.threads)
            results.append(run_in_subprocess(case))
        if args.json:
            Path(args.json).write_text(json.dumps({"header": header, "results": results}, indent=1))
        print_table(results, args.bandwidth_gbs, header=header)


@contextlib.contextmanager
def model_directory(path: str | None):
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="grpo-step-bench-") as tmp:
        yield Path(tmp)


def prepare_model(model_dir: Path, *, scale: str, device: str) -> None:
    """Save the random-weight model (bfloat16, as published) and the benchmark tokenizer, unless already there."""
    marker = model_dir / "bench.json"
    if marker.is_file() and json.loads(marker.read_text()).get("scale") == scale:
        return
    from transformers import AutoModelForCausalLM

    from reprokit.models import real_architecture_config

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
    from reprokit.models import build_tiny_tokenizer

    text = render_prompt(get_embedded_examples("pi1")[0].question, "qwen25-math-cot", build_tiny_tokenizer())
    words = sorted(set(re.findall(r" ?[A-Za-z]+| ?\d+", text)))
    return build_tiny_tokenizer(list(string.printable) + words)


def load_tokenizer(model_dir: str):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    return tokenizer


def prompt_batch(tokenizer, settings: dict):
    """π1 rendered with the preset's template, `prompts_per_step` copies, left-padded."""
    from reprokit.data import collate_prompts, get_embedded_examples, tokenize_examples

    examples = get_embedded_examples("pi1") * settings["prompts_per_step"]
    items = tokenize_examples(examples, tokenizer, template=settings["template"])
    return collate_prompts(items, tokenizer.pad_token_id)


def prompt_length(model_dir: Path, settings: dict) -> int:
    return prompt_batch(load_tokenizer(str(model_dir)), dict(settings, prompts_per_step=1)).input_ids.shape[1]


def alternating_reward(completions, *args, **kwargs) -> list[float]:
    """1, 0, 1, 0, ...: every group has a spread of rewards, so no step is skipped as uninformative."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def describe(settings: dict, device: str, model_dir: Path) -> str:
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = "not installed"
    name = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
    tokens = prompt_length(model_dir, settings)
    if settings["scale"] == "full":
        model = "Qwen2.5-Math-1.5B shapes"
    else:
        shape = {"vocab_size": 151936, **SHAPES[settings["scale"]]}
        model = (f"{settings['scale']} Qwen2 ({shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
                 f"vocab {shape['vocab_size']})")
    gen_batch = settings["generation_batch_size"] or settings["prompts_per_step"] * settings["group_size"]
    return (
        f"{model}, random weights, NF4 base + LoRA r={settings['lora_r']} all-linear, gradient checkpointing; "
        f"preset {settings['preset']}: {settings['prompts_per_step']} prompts x {settings['group_size']} responses "
        f"of up to {settings['max_new_tokens']} tokens (prompt {tokens} tokens), micro-batch "
        f"{settings['micro_batch_size']}, generation batch {gen_batch}, beta {settings['kl_coef']}, entropy coef "
        f"{settings['entropy_coef']}, log-prob chunk {settings['logprob_chunk_size']}; device {name}; torch "
        f"{torch.__version__}, transformers {transformers.__version__}, trl {trl_version}"
    )


# ---------------------------------------------------------------------------------------------- one system
def run_in_subprocess(case: dict) -> dict:
    """One system in a fresh process (clean peak-memory counters); its progress lines pass through to stderr."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--case", json.dumps(case)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stderr_tail: list[str] = []
    for line in proc.stderr:
        if not line.startswith(("Loading weights", "Writing model")):
            sys.stderr.write(f"  [{case['system']}] {line}")
            stderr_tail = (stderr_tail + [line.rstrip()])[-20:]
    stdout = proc.stdout.read()
    proc.wait()
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    last = next((line for line in reversed(stderr_tail) if line.strip()), f"exit code {proc.returncode}")
    print(f"{case['system']} failed (exit {proc.returncode}): {last}", file=sys.stderr)
    return {"system": case["system"], "error": last}


def run_case(case: dict) -> dict:
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    if case["system"] == "trl":
        try:
            import trl  # noqa: F401
        except ImportError:
            return {"system": "trl", "error": "trl is not installed (pip install 'reprokit[bench]' or pip install trl)"}
        return run_trl(case)
    return run_reprokit(case)


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
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

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


def run_reprokit(case: dict) -> dict:
    """GRPOModule.training_step on one rollout batch per step, its optimizer and scheduler set up by hand."""
    import reprokit.grpo_module as grpo_module
    from reprokit.grpo_module import GRPOConfig, GRPOModule
    from reprokit.models import ModelConfig, load_policy
    from reprokit.sampling import MergedCopy

    device = torch.device(case["device"])
    model, tokenizer = load_policy(
        ModelConfig(
            name_or_path=case["model_dir"], quantization="nf4", double_quant=case["double_quant"],
            lora_r=case["lora_r"], lora_alpha=case["lora_alpha"], lora_dropout=0.0, lora_target_modules="all-linear",
            gradient_checkpointing=case["gradient_checkpointing"],
        ),
        device=device,
    )
    batch = prompt_batch(tokenizer, case).to(device)
    cfg = GRPOConfig(
        group_size=case["group_size"], temperature=case["temperature"], top_p=case["top_p"],
        max_new_tokens=case["max_new_tokens"], generation_batch_size=case["generation_batch_size"],
        micro_batch_size=case["micro_batch_size"], lr=case["lr"], weight_decay=case["weight_decay"],
        max_grad_norm=case["max_grad_norm"], kl_coef=case["kl_coef"], entropy_coef=case["entropy_coef"],
        loss_agg=case["loss_agg"], logprob_chunk_size=case["logprob_chunk_size"], log_completions_every=0,
    )
    module = GRPOModule(model, tokenizer, cfg, reward_fn=alternating_reward).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)

    timer = PhaseTimer(device)
    merged = MergedCopy(model) if case["system"] == "reprokit-merged" else None
    generate = grpo_module.generate

    def timed_generate(policy, *args, **kwargs):
        with timer.phase("generation"):
            if merged is not None:
                # The adapter changed in the last update: merge it again into the sampling copy.
                merged.sync()
                policy = merged.model
            comps = generate(policy, *args, **kwargs)
        timer.tokens += comps.num_tokens
        # Each generation batch decodes until its own longest response ends.
        lengths, per_call = comps.lengths, cfg.generation_batch_size or comps.lengths.numel()
        timer.decode_steps += sum(int(lengths[i : i + per_call].max()) for i in range(0, lengths.numel(), per_call))
        return comps

    # The Trainer-facing hooks the step uses, pointed at the plain objects (no Trainer is attached).
    grpo_module.generate = timed_generate
    module.optimizers = lambda: opt
    module.lr_schedulers = lambda: sched
    module._log_step = lambda metrics, start: None
    module.score = timer.wrap("score", module.score)
    module._logprobs = timer.wrap("logprob_fwd", module._logprobs, when=torch.is_grad_enabled)
    module._backward = timer.wrap("backward", lambda loss: loss.backward())
    return timed_steps(case, timer, lambda: module.training_step(batch, 0), merged.model if merged else model)


def run_trl(case: dict) -> dict:
    """trl.GRPOTrainer on the same saved model, quantized and adapted the same way, timed per optimizer step."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from reprokit.data import get_embedded_examples, render_prompt
    from reprokit.models import resolve_compute_dtype

    device = torch.device(case["device"])
    dtype = resolve_compute_dtype("auto", device)
    tokenizer = load_tokenizer(case["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(
        case["model_dir"], dtype=dtype, device_map={"": str(device)},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=case["double_quant"],
            bnb_4bit_compute_dtype=dtype,
        ),
    )
    prompt = render_prompt(get_embedded_examples("pi1")[0].question, case["template"], tokenizer)
    total_steps = case["warmup"] + case["steps"]
    n_responses = case["prompts_per_step"] * case["group_size"]
    dataset = datasets.Dataset.from_dict({"prompt": [prompt] * (case["prompts_per_step"] * total_steps)})
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
            gradient_checkpointing_kwargs={"use_reentrant": False},
            bf16=dtype == torch.bfloat16, use_cpu=device.type == "cpu", use_vllm=False,
            logging_steps=1, report_to="none", save_strategy="no", log_completions=False,
            disable_tqdm=True, dataloader_num_workers=0, seed=0, shuffle_dataset=False,
        )
        trainer = GRPOTrainer(
            model=model, reward_funcs=alternating_reward, args=args, train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=case["lora_r"], lora_alpha=case["lora_alpha"], lora_dropout=0.0,
                                   target_modules="all-linear", bias="none", task_type="CAUSAL_LM"),
        )
        timer = PhaseTimer(device)
        generate_single_turn = trainer._generate_single_turn

        def timed_generation(*a, **kw):
            with timer.phase("generation"):
                completion_ids, logprobs = generate_single_turn(*a, **kw)
            timer.tokens += sum(len(ids) for ids in completion_ids)
            timer.decode_steps += max(len(ids) for ids in completion_ids)
            return completion_ids, logprobs

        trainer._generate_single_turn = timed_generation
        logps = trainer._get_per_token_logps_and_entropies
        trainer._get_per_token_logps_and_entropies = timer.wrap(
            "score", timer.wrap("logprob_fwd", logps, when=torch.is_grad_enabled),
            when=lambda: not torch.is_grad_enabled(),
        )
        backward = trainer.accelerator.backward
        trainer.accelerator.backward = timer.wrap("backward", backward)
        steps: list[dict] = []

        class StepClock(TrainerCallback):
            def on_step_begin(self, *_, **__):
                timer.sync()
                self.start = time.perf_counter()

            def on_step_end(self, *_, **__):
                timer.sync()
                steps.append(dict(timer.take(), step=time.perf_counter() - self.start))
                report_step(len(steps) - 1, case, steps[-1])
                if len(steps) == case["warmup"]:
                    reset_peak_memory(device)

        trainer.add_callback(StepClock())
        trainer.train()
    return summarize(case, steps[case["warmup"]:], trainer.model, device)


def timed_steps(case: dict, timer: PhaseTimer, step_fn, model) -> dict:
    device = timer.device
    steps = []
    for i in range(case["warmup"] + case["steps"]):
        if i == case["warmup"]:
            reset_peak_memory(device)
        timer.sync()
        start = time.perf_counter()
        step_fn()
        timer.sync()
        record = dict(timer.take(), step=time.perf_counter() - start)
        report_step(i, case, record)
        if i >= case["warmup"]:
            steps.append(record)
    return summarize(case, steps, model, device)


def report_step(i: int, case: dict, record: dict) -> None:
    kind = "warm-up" if i < case["warmup"] else "timed"
    print(f"step {i} ({kind}): {record['step']:.2f} s, generation {record.get('generation', 0.0):.2f} s, "
          f"{record['tokens']} tokens", file=sys.stderr, flush=True)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def summarize(case: dict, steps: list[dict], model, device: torch.device) -> dict:
    """Per-step records, peak memory, and the bytes a decode step of `model` (the one sampled from) must read."""
    if device.type == "cuda":
        memory = dict(peak_allocated=torch.cuda.max_memory_allocated(device),
                      peak_reserved=torch.cuda.max_memory_reserved(device), memory_kind="cuda")
    else:
        # The CPU allocator keeps no statistics: the process's peak resident set (model loading included).
        memory = dict(peak_allocated=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, peak_reserved=None,
                      memory_kind="peak RSS")
    return dict(system=case["system"], steps=steps, **memory, **decode_bytes(model, case))


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
def medians(result: dict) -> dict:
    steps = result["steps"]
    med = lambda key: statistics.median(s.get(key, 0.0) for s in steps)  # noqa: E731
    out = {key: med(key) for key in ("step", "generation", "score", "logprob_fwd", "backward")}
    out["other"] = statistics.median(
        s["step"] - sum(s.get(k, 0.0) for k in ("generation", "score", "logprob_fwd", "backward")) for s in steps
    )
    out["gen_tok_s"] = statistics.median(s["tokens"] / max(s["generation"], 1e-9) for s in steps)
    # Decode steps per second = tokens per second of one sequence (each step adds one token to every row).
    out["seq_tok_s"] = statistics.median(s["decode_steps"] / max(s["generation"], 1e-9) for s in steps)
    return out


def print_table(results: list[dict], bandwidth_gbs: float | None, header: str = "") -> None:
    if bandwidth_gbs is None:
        bandwidth_gbs = lookup_bandwidth()
    rows, ok = [], {}
    for r in results:
        if "error" not in r:
            ok[r["system"]] = (r, medians(r))
    trl = ok.get("trl")
    columns = ["system", "step s", "x TRL", "gen s", "score s", "logprob fwd s", "backward s", "other s",
               "gen tok/s", "x TRL", "decode tok/s/seq", "BW-bound tok/s/seq", "of bound",
               "peak alloc GiB", "x TRL", "peak reserved GiB", "x TRL"]
    memory_kind = next((r["memory_kind"] for r, _ in ok.values()), "cuda")
    for r in results:
        if "error" in r:
            rows.append([r["system"], "failed: " + r["error"]] + [""] * (len(columns) - 2))
            continue
        res, m = ok[r["system"]]
        ratio = lambda a, b: f"{a / b:.2f}" if trl and b else "-"  # noqa: E731
        t = trl[1] if trl else {}
        bytes_per_step = res["weight_bytes"] + res["kv_bytes_per_step"]
        bound = bandwidth_gbs * 1e9 / bytes_per_step if bandwidth_gbs else None
        gib = lambda v: "-" if v is None else f"{v / 2**30:.2f}"  # noqa: E731
        rows.append([
            r["system"], f"{m['step']:.2f}", ratio(m["step"], t.get("step", 0)), f"{m['generation']:.2f}",
            f"{m['score']:.2f}", f"{m['logprob_fwd']:.2f}", f"{m['backward']:.2f}", f"{m['other']:.2f}",
            f"{m['gen_tok_s']:.0f}", ratio(m["gen_tok_s"], t.get("gen_tok_s", 0)), f"{m['seq_tok_s']:.1f}",
            f"{bound:.0f}" if bound else "-", f"{m['seq_tok_s'] / bound:.1%}" if bound else "-",
            gib(res["peak_allocated"]), ratio(res["peak_allocated"], trl[0]["peak_allocated"]) if trl else "-",
            gib(res["peak_reserved"]),
            ratio(res["peak_reserved"], trl[0]["peak_reserved"]) if trl and res["peak_reserved"] else "-",
        ])
    if header:
        print(header)
        print()
    n_steps = {len(r["steps"]) for r, _ in ok.values()}
    print(f"median of {'/'.join(map(str, sorted(n_steps))) or 0} steps after warm-up; 'x TRL' = this row / TRL's row; "
          + ("peak memory = peak RSS of the process (CPU)" if memory_kind != "cuda" else
             "peak memory = torch.cuda.max_memory_allocated / max_memory_reserved")
          + (f"; bound at {bandwidth_gbs:.0f} GB/s" if bandwidth_gbs else "; no bandwidth known (--bandwidth_gbs)"))
    print()
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths)) + "|")
    for row in rows:
        print("| " + " | ".join((c.rjust(w) if i else c.ljust(w)) for i, (c, w) in enumerate(zip(row, widths))) + " |")
    for r, _ in ok.values():
        per_step = (r["weight_bytes"] + r["kv_bytes_per_step"]) / 2**30
        print(f"\n{r['system']}: bytes per decode step >= {per_step:.2f} GiB = weights {r['weight_bytes'] / 2**30:.2f} "
              f"GiB + KV cache {r['kv_bytes_per_step'] / 2**30:.2f} GiB ({r['gen_batch']} sequences at the mean "
              "context)", end="")
    print()


def lookup_bandwidth() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((gbs for key, gbs in BANDWIDTH_GBS if key in name), None)


# ---------------------------------------------------------------------------------------------- sampling variants
def compare_sampling(model_dir: Path, settings: dict, device: str, args: argparse.Namespace) -> None:
    """Generation alone on the policy of the benchmark: transformers' generate vs reprokit.sampling, and each
    saving switched off in turn, interleaved round by round so load changes hit every variant alike."""
    from reprokit.models import ModelConfig, eos_token_ids, load_policy
    from reprokit.sampling import MergedCopy, _decode, _decode_with_hf_generate

    model, tokenizer = load_policy(
        ModelConfig(name_or_path=str(model_dir), quantization="nf4", lora_r=settings["lora_r"],
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
