"""A real pretrained base on CPU: Gemma-3-270M (GGUF from PyPI) through the kit, timed phase by phase.

Measures, each in its own process so that peak memory does not mix: converting the GGUF file into a model
folder (first use only), loading that folder (full precision and NF4 + LoRA), decode throughput of the kit's
sampler (8 prompts × 64 sampled tokens), and one GRPO step (NF4 + LoRA r 8 on π1: sampling, scoring, the
objective's forward and backward, the optimizer step), with the peak RSS of each.

    pip install -e ".[real]"
    python benchmarks/real_model.py                 # the table; --threads N (default 2)

The first phase converts the GGUF only when the cache (~/.cache/reprokit/gguf, or $REPROKIT_CACHE/gguf) does
not hold the model folder yet; pass --fresh to convert into an empty temporary cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

PHASES = ("convert", "load_full", "load_nf4", "decode_full", "decode_nf4", "grpo_step_nf4")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--fresh", action="store_true", help="convert the GGUF into an empty temporary cache")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # internal: one phase per process
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.threads)))
        return
    env = dict(os.environ)
    if args.fresh:
        env["REPROKIT_CACHE"] = tempfile.mkdtemp(prefix="reprokit-real-")
    rows = []
    for phase in PHASES:
        out = subprocess.run(
            [sys.executable, __file__, "--phase", phase, "--threads", str(args.threads)],
            env=env, capture_output=True, text=True,
        )
        if out.returncode:
            print(out.stdout[-2000:], out.stderr[-4000:])
            raise SystemExit(f"phase {phase} failed")
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"[real_model] {phase}: {rows[-1]}", flush=True)
    load = os.getloadavg()[0]
    print(f"\nGemma-3-270M on CPU, {args.threads} torch threads, load average {load:.1f} at the end\n")
    print("| phase | seconds | tokens/s | peak RSS GiB | what |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        tps = f"{r['tokens_per_s']:.1f}" if r.get("tokens_per_s") else ""
        print(f"| {r['phase']} | {r['seconds']:.1f} | {tps} | {r['peak_rss_gib']:.2f} | {r['what']} |")


def run_phase(phase: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from reprokit.gguf import gemma_3_270m
    from reprokit.policy import ModelConfig, load_base_model, load_policy

    started = time.perf_counter()
    if phase == "convert":
        folder = gemma_3_270m()
        return _row(phase, started, what=f"GGUF -> model folder ({folder}; instant when cached)")
    folder = gemma_3_270m()
    if phase.startswith("load"):
        started = time.perf_counter()
        if phase == "load_full":
            load_base_model(ModelConfig(name_or_path=folder, quantization="none", gradient_checkpointing=False))
        else:
            load_policy(ModelConfig(name_or_path=folder, quantization="nf4", lora_r=8, gradient_checkpointing=True))
        return _row(phase, started, what="model folder -> " + ("full precision" if phase == "load_full" else "NF4 + LoRA r 8"))
    quantization = "none" if phase == "decode_full" else "nf4"
    model, tokenizer = load_policy(
        ModelConfig(name_or_path=folder, quantization=quantization, lora_r=8, gradient_checkpointing=phase.startswith("grpo"))
    )
    if phase.startswith("decode"):
        from reprokit.sampling import generate, seeded_generator

        prompts = [f"Question: what is {i} + {i + 3}? Let's think step by step." for i in range(8)]
        enc = tokenizer(prompts, return_tensors="pt", padding=True)
        started = time.perf_counter()
        comps = generate(
            model, tokenizer, enc.input_ids, enc.attention_mask, n=1, max_new_tokens=64, temperature=1.0,
            generator=seeded_generator("cpu", 0),
        )
        seconds = time.perf_counter() - started
        return _row(phase, started, tokens_per_s=comps.num_tokens / seconds, what=f"8 prompts x 64 sampled tokens, {quantization}")
    import lightning as L

    from reprokit.data import OneShotDataModule, Prompt
    from reprokit.training.grpo import GRPOConfig, GRPOModule

    cfg = GRPOConfig.of(group_size=4, temperature=1.0, max_new_tokens=64, micro_batch_size=4, lr=1e-4,
                        logprob_chunk_size=256, log_completions_every=0)
    module = GRPOModule(model, tokenizer, cfg, reward_fn=lambda c, a, **_: [t.count("e") / max(1, len(t)) for t in c])
    data = OneShotDataModule(tokenizer, examples="pi1", batch_size=2, prompt=Prompt(template="none", cot_suffix=True))
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    return _row(phase, started, what="one GRPO step: pi1, 2 prompts x 4 responses of up to 64 tokens, NF4 + LoRA r 8, "
                                      "KL 0.001 and entropy 0.001")


def _row(phase: str, started: float, *, what: str, tokens_per_s: float | None = None) -> dict:
    return {
        "phase": phase, "seconds": time.perf_counter() - started, "tokens_per_s": tokens_per_s, "what": what,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


if __name__ == "__main__":
    main()
