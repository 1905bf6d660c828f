"""The main job (`python -m reprokit.recipes.one_shot`, the `cpu` preset) over seeds, in NF4 and in full precision.

    python benchmarks/seed_spread.py --seeds 0 1 2 3 4 --out runs/seed_spread

Each run is the README's main command with `--run.seed S` (and `--model.quantization none` for the full-precision
runs), one CPU thread each, `--workers` at a time. Prints, per precision, each seed's test pass@1 before and after
and its change, then the mean change with its spread over seeds (sd, and a 95% bootstrap interval of the mean
over seeds), and the difference of the two precisions' mean changes with its interval. Writes seed_spread.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

PRECISIONS = ("nf4", "none")


def one_run(seed: int, quantization: str, out: str) -> dict:
    """One seed's run and its figures, saved beside its folder: a second call with the same --out reruns nothing."""
    saved = Path(out) / f"{quantization}-seed{seed}.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    import torch

    torch.set_num_threads(1)
    from reprokit.recipes import one_shot

    run_dir = Path(out) / f"{quantization}-seed{seed}"
    summary, _, _ = one_shot.run([
        "--preset", "cpu", "--run.seed", str(seed), "--model.quantization", quantization, "--run_dir", str(run_dir),
        "--run.progress_bar", "false",
    ])
    iv = summary["intervals"]["world_test"]
    result = {"seed": seed, "quantization": quantization, "before": iv["before"], "after": iv["after"], "change": iv["change"],
              "mode before": summary["before"].get("val/world_test/mode"), "mode after": summary["after"].get("val/world_test/mode")}
    saved.write_text(json.dumps(result) + "\n")
    return result


def bootstrap_mean(values: list[float], resamples: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    x = np.asarray(values, dtype=np.float64)
    means = x[np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(x.mean()), float(low), float(high)


def bootstrap_difference(a: list[float], b: list[float], resamples: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b), the two resampled independently (different runs)."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(a), np.asarray(b)
    diffs = x[rng.integers(0, x.size, (resamples, x.size))].mean(1) - y[rng.integers(0, y.size, (resamples, y.size))].mean(1)
    low, high = np.quantile(diffs, [0.025, 0.975])
    return float(x.mean() - y.mean()), float(low), float(high)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="runs/seed_spread")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    jobs = [(s, q) for q in args.precisions for s in args.seeds]
    results: list[dict] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(one_run, s, q, args.out): (s, q) for s, q in jobs}
        for future in as_completed(futures):
            r = future.result()
            results.append(r)
            print(f"{len(results)}/{len(jobs)} {r['quantization']} seed {r['seed']}: {r['before'][0]:.3f} -> "
                  f"{r['after'][0]:.3f} (change {r['change'][0]:+.3f})", flush=True)
    results.sort(key=lambda r: (r["quantization"], r["seed"]))
    print("\n| base | seed | test pass@1 before | after | change [95% CI over problems] | mode share after |")
    print("|---|---:|---:|---:|---|---:|")
    for r in results:
        c = r["change"]
        print(f"| {r['quantization']} | {r['seed']} | {r['before'][0]:.3f} | {r['after'][0]:.3f} | "
              f"{c[0]:+.3f} [{c[1]:+.3f}, {c[2]:+.3f}] | {r['mode after']:.3f} |")
    summary = {"runs": results, "by precision": {}}
    print("\n| base | seeds | mean change [95% CI over seeds] | sd over seeds | min | max |")
    print("|---|---:|---|---:|---:|---:|")
    changes = {}
    for q in args.precisions:
        values = [r["change"][0] for r in results if r["quantization"] == q]
        changes[q] = values
        mean = bootstrap_mean(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        summary["by precision"][q] = {"mean change": mean, "sd": sd, "min": min(values), "max": max(values)}
        print(f"| {q} | {len(values)} | {mean[0]:+.3f} [{mean[1]:+.3f}, {mean[2]:+.3f}] | {sd:.3f} | {min(values):+.3f} | {max(values):+.3f} |")
    if len(changes) == 2:
        diff = bootstrap_difference(changes["none"], changes["nf4"])
        summary["full precision minus nf4"] = diff
        print(f"\nfull precision minus NF4, mean change: {diff[0]:+.3f} [95% CI {diff[1]:+.3f}, {diff[2]:+.3f}]")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "seed_spread.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    sys.exit(main() and 0)
