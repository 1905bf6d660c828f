"""The summary of one benchmarks/gpu_check.sh run: summary.md and summary.json in its output folder.

Reads what the parts left there (tests.txt, consumer-reprokit.json, consumer-trl.json, paper-reprokit.json, each
possibly cut off mid-run) and the parts' exit statuses, and writes one markdown page (parts, tests, the two
grpo_step.py tables, the generation figures against the bandwidth bound) and one JSON with every figure.
gpu_check.sh calls it after every part, so the summary is always as complete as the run so far.

    python benchmarks/gpu_summary.py --out OUT_DIR --status STATUS.jsonl [--final]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grpo_step  # noqa: E402

# (key, title, [(part, file)]): the tables of the summary and the parts whose JSON files they join.
SECTIONS = [
    ("consumer-12gb", "consumer-12gb preset: reprokit against TRL",
     [("consumer-reprokit", "consumer-reprokit.json"), ("consumer-trl", "consumer-trl.json")]),
    ("paper", "paper preset (on the GPU: responses up to 3072 tokens): reprokit",
     [("paper-reprokit", "paper-reprokit.json")]),
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="gpu_check.sh's output folder")
    parser.add_argument("--status", required=True, help="the parts' statuses, one JSON object a line")
    parser.add_argument("--final", action="store_true", help="the run has ended: the summary says final")
    args = parser.parse_args(argv)
    out = Path(args.out)
    parts = read_status(Path(args.status))
    by_part = {p["part"]: p for p in parts}
    tests = read_tests(out / "tests.txt")

    lines = ["# gpu_check summary", "", ("final" if args.final else "in progress") + f"; output folder {out}", "",
             "| part | state | seconds | limit s |", "|---|---|---:|---:|"]
    for p in parts:
        lines.append(f"| {p['part']} | {p['state']} | {p['seconds']} | {p['limit']} |")
    lines.append("")
    if tests:
        lines += [f"CUDA-marked tests (`pytest -m gpu`): {tests['line']}", ""]
    summary = {"final": args.final, "parts": parts, "tests": tests}
    for key, title, sources in SECTIONS:
        header, results, notes = "", [], []
        for part, name in sources:
            path = out / name
            status = by_part.get(part)
            if path.is_file():
                try:
                    data = json.loads(path.read_text())
                except ValueError as err:
                    notes.append(f"{name}: unreadable ({err})")
                    continue
                header = header or data.get("header", "")
                results.extend(data["results"])
                if status and status["state"] != "ok":
                    notes.append(f"{part}: {status['state']}; the figures are what it measured before that")
            elif status:
                system = part.split("-", 1)[1]
                results.append({"system": system, "error": f"{part} {status['state']} before writing any figure"})
        if not results:
            continue
        table = grpo_step.format_table(results, None, header=header)
        figs = grpo_step.figures(results)
        lines += [f"## {title}", "", table, ""] + [f"* {n}" for n in notes] + ([""] if notes else [])
        lines += generation_lines(figs)
        summary[key] = {"header": header, "figures": figs, "results": results, "notes": notes}
    text = "\n".join(lines).rstrip() + "\n"
    write(out / "summary.md", text)
    write(out / "summary.json", json.dumps(summary, indent=1) + "\n")


def read_status(path: Path) -> list[dict]:
    parts = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        if not line.strip():
            continue
        p = json.loads(line)
        rc = p.get("rc")
        p["state"] = ("skipped (budget spent)" if p.get("skipped") else "ok" if rc == 0 else
                      f"cut off by its {p['limit']} s timeout" if rc in (124, 137) else f"failed (exit {rc})")
        parts.append(p)
    return parts


def read_tests(path: Path) -> dict | None:
    """pytest's closing line ('1 passed, 140 deselected in 20.1s') and its counts."""
    if not path.is_file():
        return None
    lines = [line.strip("= ").strip() for line in path.read_text().splitlines() if line.strip()]
    closing = next((line for line in reversed(lines) if re.search(r"\b(passed|failed|skipped|deselected|error)", line)),
                   lines[-1] if lines else "no output")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed)",
                                                     closing)}
    return {"line": closing, "counts": counts}


def generation_lines(figs: list[dict]) -> list[str]:
    """(d): generation tokens/s and the share of the memory-bandwidth bound, spelled out per system."""
    out = []
    for f in figs:
        if "error" in f or not f.get("bound_seq_tok_s"):
            continue
        out.append(f"* {f['system']}: generation {f['gen_tok_s']:.0f} tokens/s over {f['gen_batch']} sequences, "
                   f"{f['seq_tok_s']:.1f} decode steps/s = tokens/s per sequence, bound "
                   f"{f['bound_seq_tok_s']:.0f} at {f['bandwidth_gbs']:.0f} GB/s over "
                   f"{(f['weight_bytes'] + f['kv_bytes_per_step']) / 2**30:.2f} GiB per decode step: "
                   f"{f['of_bound']:.1%} of the bound")
    return out + ([""] if out else [])


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
