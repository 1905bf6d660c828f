"""CPU benchmark: chunked vs full-logits per-token log-probs + entropy, forward + backward.

For each vocabulary size and response length it times one forward + backward of
``sum(logp) + 0.001 * sum(entropy)`` (the GRPO policy-gradient + entropy-bonus shape) through
``token_logprobs_and_entropy`` (chunked) and ``naive_logprobs_and_entropy`` (full [B, T, V] float32
logits), and measures the peak memory each needs on top of its inputs.

PyTorch's CPU allocator keeps no peak statistics (and tracemalloc does not see it), so every case
runs in its own subprocess, which reports its peak resident set size (``ru_maxrss``) minus its
resident set size just before the first forward pass. The subprocess runs with glibc's
``MALLOC_MMAP_THRESHOLD_`` fixed at 1 MiB: otherwise glibc raises the threshold after the first
large free and keeps later blocks of up to 32 MiB in its heap, so freed chunks would still count.

    python benchmarks/chunked_logprobs.py                       # Qwen2.5 vocab + 32k, T = 256..4096
    python benchmarks/chunked_logprobs.py --vocab 151936 --lengths 1024 --chunk-size 512

The work is dominated by the [T, H] x [H, V] products (the chunked path does four, one of them the
recomputed forward; the naive path three), so on two CPU cores the full default grid takes minutes:
lower --lengths or --hidden for a quick look.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[151936, 32000],
                        help="vocabulary sizes (151936 = Qwen2.5, 32000 = Llama 2)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048, 4096],
                        help="positions per sequence")
    parser.add_argument("--batch", type=int, default=1, help="sequences per batch")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size (small, to keep the matmuls cheap)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="positions per chunk for the chunked path")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--repeats", type=int, default=3, help="timed forward+backward runs; the median is reported")
    parser.add_argument("--case-budget-s", type=float, default=15.0,
                        help="stop repeating a case once its runs took this long (at least one run; see 'runs')")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each case")
    parser.add_argument("--paths", nargs="+", default=["chunked", "naive"],
                        choices=["chunked", "naive", "checkpointed"],
                        help="'checkpointed' is the chunked path for heads that are not a plain nn.Linear")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case, print JSON
    return parser.parse_args(argv)


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def run_case(case: dict) -> dict:
    """One (path, vocab, length) in this process: median time and peak memory over its inputs."""
    import torch
    from torch import nn

    from reprokit.algorithms import naive_logprobs_and_entropy, token_logprobs_and_entropy

    torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    vocab, length, batch, width = case["vocab"], case["length"], case["batch"], case["hidden"]
    head = nn.Linear(width, vocab, bias=False)
    hidden = torch.randn(batch, length, width, requires_grad=True)  # [B, T, H]
    labels = torch.randint(0, vocab, (batch, length))  # [B, T]

    if case["path"] == "naive":
        def step():
            return naive_logprobs_and_entropy(hidden, head, labels, case["temperature"])
    else:
        # A wrapper module takes the generic, activation-checkpointed path.
        head_arg = head if case["path"] == "chunked" else nn.Sequential(head)

        def step():
            return token_logprobs_and_entropy(
                hidden, head_arg, labels, case["temperature"], chunk_size=case["chunk_size"]
            )

    baseline = current_rss_bytes()
    times = []
    while len(times) < case["repeats"] and (not times or sum(times) < case["budget_s"]):
        hidden.grad = None
        head.weight.grad = None
        start = time.perf_counter()
        logp, entropy = step()  # [B, T], [B, T]
        (logp.sum() + 0.001 * entropy.sum()).backward()
        times.append(time.perf_counter() - start)
        del logp, entropy
    return {"time_s": statistics.median(times), "runs": len(times), "peak_mb": (peak_rss_bytes() - baseline) / 2**20}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return

    print(
        f"forward+backward of sum(logp) + 0.001*sum(entropy); batch {args.batch}, hidden {args.hidden}, "
        f"chunk {args.chunk_size}, T={args.temperature}, {args.threads} threads; time = median of 'runs' "
        f"(up to {args.repeats}, fewer past {args.case_budget_s:.0f} s per case); memory = peak RSS over inputs (MiB)"
    )
    paths = args.paths
    header = ["vocab", "length", "logits MiB"]
    for path in paths:
        header += [f"{path} MiB", f"{path} s", "runs"]
    if "naive" in paths:
        header += [f"naive/{p} mem" for p in paths if p != "naive"] + [f"{p}/naive time" for p in paths if p != "naive"]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    rows = []
    for vocab in args.vocab:
        for length in args.lengths:
            results = {}
            for path in paths:
                case = dict(path=path, vocab=vocab, length=length, batch=args.batch, hidden=args.hidden,
                            chunk_size=args.chunk_size, temperature=args.temperature, repeats=args.repeats,
                            threads=args.threads, budget_s=args.case_budget_s)
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--case", json.dumps(case)],
                    capture_output=True, text=True, check=False, env=env,
                )
                if out.returncode != 0:
                    sys.exit(f"case {case} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
                results[path] = json.loads(out.stdout.strip().splitlines()[-1])
            logits_mb = args.batch * length * vocab * 4 / 2**20
            row = [f"{vocab}", f"{length}", f"{logits_mb:.0f}"]
            for path in paths:
                row += [f"{results[path]['peak_mb']:.0f}", f"{results[path]['time_s']:.2f}", f"{results[path]['runs']}"]
            if "naive" in paths:
                naive = results["naive"]
                row += [f"{naive['peak_mb'] / max(results[p]['peak_mb'], 1.0):.1f}x" for p in paths if p != "naive"]
                row += [f"{results[p]['time_s'] / naive['time_s']:.2f}x" for p in paths if p != "naive"]
            rows.append(row)
            print_table(header, rows, final=False)
    print_table(header, rows, final=True)


def print_table(header: list[str], rows: list[list[str]], final: bool) -> None:
    if not final:
        print("done: " + "  ".join(rows[-1]), file=sys.stderr, flush=True)  # progress
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.rjust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")


if __name__ == "__main__":
    main()
