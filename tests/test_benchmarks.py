"""benchmarks/gpu_check.sh --dry-run: the GPU run's whole sequence on CPU (tiny models), so it is known to work before
the few minutes of GPU time it is written for. No network, no GPU."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
PAPER_TIMEOUT = 5  # seconds: the paper part is cut off while it loads, the parts before it must keep their output


def _row(table: str, system: str) -> str:
    rows = [line for line in table.splitlines() if re.match(rf"\| {re.escape(system)}\b", line)]
    assert len(rows) == 1, f"expected one row for {system} in:\n{table}"
    return rows[0]


@pytest.mark.slow
def test_dry_run_writes_each_part_as_it_goes_and_keeps_them_when_a_part_is_cut_off(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_TIMEOUT_PAPER_REPROKIT=str(PAPER_TIMEOUT),
               GPU_CHECK_MODEL_DIR=str(tmp_path / "model"), TMPDIR=str(tmp_path))
    env.pop("OUT", None)
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    seconds = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    written = {p.name for p in out.iterdir()}
    assert {"gpu_check.log", "tests.txt", "consumer-reprokit.json", "consumer-trl.json", "summary.md",
            "summary.json"} <= written, written
    assert len(written) <= 8, f"the GPU machine returns at most 8 files: {sorted(written)}"
    summary = json.loads((out / "summary.json").read_text())
    states = {p["part"]: p["state"] for p in summary["parts"]}
    for part in ("tests", "prepare", "consumer-reprokit", "consumer-trl"):
        assert states[part] == "ok", (part, states, log[-4000:])
    assert states["paper-reprokit"] == f"cut off by its {PAPER_TIMEOUT} s timeout", states
    assert summary["tests"]["counts"].get("failed", 0) == 0, summary["tests"]

    # consumer-12gb: a row per system with every figure, in the markdown table and in the JSON.
    md = (out / "summary.md").read_text()
    consumer_md = md.split("## consumer-12gb")[1].split("## paper")[0]
    figures = {f["system"]: f for f in summary["consumer-12gb"]["figures"]}
    assert set(figures) == {"reprokit", "trl"}, figures
    reprokit = figures["reprokit"]
    assert reprokit["timed_steps"] == 1 and reprokit["step"] > 0 and reprokit["gen_tok_s"] > 0
    assert reprokit["peak_allocated"] > 0 and reprokit["fwd_bwd"] > 0
    assert not re.search(r"failed|cut off", _row(consumer_md, "reprokit"))
    if importlib.util.find_spec("trl") is None:  # CI installs .[dev], without TRL
        assert "trl is not installed" in _row(consumer_md, "trl")
    else:
        assert figures["trl"]["step"] > 0 and figures["trl"]["trainable_parameters"] == reprokit["trainable_parameters"]
        assert "failed" not in _row(consumer_md, "trl")
        assert figures["reprokit"]["step_x_trl"] > 0

    # The paper part was killed by its timeout: its row says so, the parts before it are all there.
    paper_md = md.split("## paper")[1]
    assert "cut off" in _row(paper_md, "reprokit"), paper_md
    assert summary["paper"]["figures"][0]["system"] == "reprokit" and "error" in summary["paper"]["figures"][0]
    assert "CUT OFF by its" in (out / "gpu_check.log").read_text()
    print(f"dry run took {seconds:.0f} s")
