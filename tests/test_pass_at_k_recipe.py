"""The pass@k recipe end to end on CPU, and the evaluation helpers it is built from.

Tiny random models from `save_tiny` stand in for the base and RL models; pass@k, histograms, overlap and
perplexity are checked against plain reference implementations written here.
"""

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import reprokit.sampling as sampling
from reprokit.cli import PRESETS_DIR, expand_short_flags, parse
from reprokit.data import Example
from reprokit.evaluation import (
    ModelSpecError,
    Sample,
    load_model_spec,
    parse_models,
    read_samples,
    resolve_model_spec,
    response_perplexity,
    sample_to_jsonl,
)
from reprokit.recipes import pass_at_k as recipe
from reprokit.tiny import save_tiny

MODULE = __name__
BINS = ["0", *(f"({i / 10:g},{(i + 1) / 10:g}]" for i in range(9)), "(0.9,1)", "1"]
OUTPUTS = [
    "samples.jsonl", "pass_at_k.json", "pass_at_k.csv", "pass_at_k.png", "accuracy_histogram.json",
    "accuracy_histogram.png", "overlap.csv", "overlap.json", "perplexity.json", "perplexity.png", "config.yaml",
]


def even_length_reward(completions, answers, **fields):
    """A reward that marks about half of random responses correct, so pass@k is not trivially 0 or 1."""
    return [float(len(c) % 2 == 0) for c in completions]


def always_correct(completions, answers, **fields):
    return [1.0 for _ in completions]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models gain nothing from a second thread, and on a shared machine busy-waiting threads stall each other.
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny(root / "a", seed=0), save_tiny(root / "b", seed=1)


# ---------------------------------------------------------------------------------------------- references
def ref_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def ref_tables(samples_path: Path, models: list[str]):
    """{model: {problem_id: [correct flags by sample index]}} read from the JSONL with plain json."""
    table = {m: {} for m in models}
    for line in samples_path.read_text().splitlines():
        row = json.loads(line)
        table[row["model"]].setdefault(row["problem_id"], {})[row["sample_index"]] = row["correct"] >= 1
    return {m: {pid: [flags[i] for i in sorted(flags)] for pid, flags in by.items()} for m, by in table.items()}


def ref_bin(acc: float) -> str:
    if acc == 0:
        return "0"
    if acc == 1:
        return "1"
    if acc > 0.9:
        return "(0.9,1)"
    return BINS[1 + min(int(math.ceil(acc * 10 - 1e-9)) - 1, 8)]


def check_outputs(run_dir: Path, models: list[str], n: int, problems: int):
    for name in OUTPUTS:
        assert (run_dir / name).is_file(), name
    tables = ref_tables(run_dir / "samples.jsonl", models)
    ks = [1, 2, 4][: int(math.log2(n)) + 1]
    expected = {
        m: {k: sum(ref_pass_at_k(n, sum(f), k) for f in by.values()) / len(by) for k in ks} for m, by in tables.items()
    }
    for m in models:
        assert len(tables[m]) == problems and all(len(f) == n for f in tables[m].values())
    got_json = json.loads((run_dir / "pass_at_k.json").read_text())["math500"]
    with (run_dir / "pass_at_k.csv").open() as f:
        got_csv = {(r["model"], int(r["k"])): float(r["pass_at_k"]) for r in csv.DictReader(f) if r["benchmark"] == "math500"}
    assert set(got_csv) == {(m, k) for m in models for k in ks}
    for m in models:
        assert set(got_json[m]) == {str(k) for k in ks}
        for k in ks:
            assert got_json[m][str(k)] == pytest.approx(expected[m][k], abs=1e-12)
            assert got_csv[(m, k)] == pytest.approx(expected[m][k], abs=1e-6)

    hist = json.loads((run_dir / "accuracy_histogram.json").read_text())["math500"]
    for m in models:
        ref = dict.fromkeys(BINS, 0)
        for flags in tables[m].values():
            ref[ref_bin(sum(flags) / len(flags))] += 1
        assert hist[m] == ref

    base, other = models
    solved = {m: {pid for pid, f in tables[m].items() if any(f)} for m in models}
    overlap = json.loads((run_dir / "overlap.json").read_text())["benchmarks"]["math500"][other]
    assert overlap["base_only"] == len(solved[base] - solved[other])
    assert overlap["both"] == len(solved[base] & solved[other])
    assert overlap["other_only"] == len(solved[other] - solved[base])
    assert overlap["neither"] == problems - len(solved[base] | solved[other])
    with (run_dir / "overlap.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], int(r["both"]), int(r["k"])) for r in rows] == [(other, overlap["both"], n)]
    return tables


def run_args(run_dir, dirs, data_dir, *extra):
    a, b = dirs
    return [
        "--preset", "cpu", "--models", f"a={a}", f"b={b}", "--benchmarks", "math500", "--data_dir", str(data_dir),
        "--limit", "3", "--n", "4", "--max_new_tokens", "10", "--batch_problems", "3", "--ppl_samples", "2",
        "--run_dir", str(run_dir), "--device", "cpu", "--progress_bar", "false",
        "--reward", f"{MODULE}:even_length_reward", *extra,
    ]


# ---------------------------------------------------------------------------------------------- the recipe
def test_run_resume_and_regrade(tmp_path, tiny_dirs, data_dir, monkeypatch):
    run_dir = tmp_path / "run"
    generated = []
    real_generate = sampling.generate

    def counting_generate(*args, **kwargs):
        out = real_generate(*args, **kwargs)
        generated.append(len(out.texts))
        return out

    monkeypatch.setattr(sampling, "generate", counting_generate)
    summary = recipe.main(run_args(run_dir, tiny_dirs, data_dir))
    assert sum(generated) == 2 * 3 * 4 == summary["samples"]
    assert summary["generated"] == {"a": 12, "b": 12}
    tables = check_outputs(run_dir, ["a", "b"], n=4, problems=3)
    assert any(any(f) for by in tables.values() for f in by.values()), "the test reward should mark some correct"

    ppl = json.loads((run_dir / "perplexity.json").read_text())
    assert ppl["scorer"] == "a"
    texts = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    for m in ("a", "b"):
        nonempty = sum(1 for r in texts if r["model"] == m and r["sample_index"] < 2 and r["text"])
        stats = ppl["benchmarks"]["math500"][m]
        assert stats["count"] == nonempty == len(stats["values"])
        assert all(v > 1 for v in stats["values"])

    # Kill-and-resume: keep a bit more than half of the lines and a torn one; only the rest is generated again.
    lines = (run_dir / "samples.jsonl").read_text().splitlines(keepends=True)
    keep = lines[: len(lines) // 2 + 1]
    (run_dir / "samples.jsonl").write_text("".join(keep) + lines[len(keep)][:25])
    generated.clear()
    with pytest.warns(UserWarning, match="cut off"):
        summary = recipe.main(run_args(run_dir, tiny_dirs, data_dir))
    assert sum(generated) == len(lines) - len(keep) == summary["generated"]["a"] + summary["generated"]["b"]
    after = (run_dir / "samples.jsonl").read_text().splitlines(keepends=True)
    assert after[: len(keep)] == keep
    keys = [(r["model"], r["problem_id"], r["sample_index"]) for r in map(json.loads, after)]
    assert len(keys) == len(set(keys)) == 24
    check_outputs(run_dir, ["a", "b"], n=4, problems=3)

    # A different sampling setting must not be mixed into the same file.
    with pytest.raises(SystemExit, match="temperature"):
        recipe.main(run_args(run_dir, tiny_dirs, data_dir, "--temperature", "1.0"))

    # Regrade: new reward, no sampling, no model loading (perplexities come from their cache).
    def refuse(*args, **kwargs):
        raise AssertionError("--regrade must not sample or load a model")

    monkeypatch.setattr(sampling, "generate", refuse)
    monkeypatch.setattr(recipe, "load_model_spec", refuse)
    recipe.main(run_args(run_dir, tiny_dirs, data_dir, "--reward", f"{MODULE}:always_correct", "--regrade"))
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(r["correct"] == 1.0 for r in rows)
    assert [r["text"] for r in rows] == [json.loads(line)["text"] for line in after]
    check_outputs(run_dir, ["a", "b"], n=4, problems=3)
    assert json.loads((run_dir / "pass_at_k.json").read_text())["math500"]["b"]["1"] == 1.0
    assert json.loads((run_dir / "sampling.json").read_text())["settings"]["reward"] == f"{MODULE}:always_correct"


def test_presets_parse():
    presets = sorted(Path(PRESETS_DIR, "pass_at_k").glob("*.yaml"))
    assert {p.stem for p in presets} >= {"cpu", "qwen2.5-math-1.5b", "consumer-12gb"}
    for preset in presets:
        init = parse(recipe.RECIPE, ["--preset", preset.stem]).init
        assert parse_models(init.eval.models)
        assert init.sampling.n >= 1


def test_short_flags():
    argv = expand_short_flags(recipe.RECIPE, 
        ["--models", "base=tiny", "rl=runs/x", "--n", "8", "--regrade", "--benchmarks", "math500", "--limit=3"]
    )
    assert argv == [
        '--eval.models=["base=tiny", "rl=runs/x"]', "--sampling.n", "8", "--run.regrade", "true",
        '--data.benchmarks=["math500"]', "--data.limit=3",
    ]


# ---------------------------------------------------------------------------------------------- model specs
def test_parse_models():
    assert list(parse_models(["base=tiny", "rl=runs/x/checkpoints/step-5"]).items()) == [
        ("base", "tiny"), ("rl", "runs/x/checkpoints/step-5"),
    ]
    assert parse_models(["runs/x/checkpoints/step-5.ckpt"]) == {"step-5": "runs/x/checkpoints/step-5.ckpt"}
    with pytest.raises(ModelSpecError, match="'base' is given twice"):
        parse_models(["base=tiny", "base=tiny:llama"])
    with pytest.raises(ModelSpecError, match="no spec"):
        parse_models(["base="])
    with pytest.raises(ModelSpecError, match="no models"):
        parse_models([])


def test_spec_errors_name_what_was_tried(tmp_path):
    with pytest.raises(ModelSpecError) as err:
        resolve_model_spec(str(tmp_path / "runs" / "x" / "step-3"))
    assert "step-3.ckpt" in str(err.value) and "no such" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match="config.json"):
        resolve_model_spec(str(tmp_path / "empty"))
    ckpt = tmp_path / "loose" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {}}, ckpt)
    assert resolve_model_spec(str(tmp_path / "loose")).location == str(ckpt)
    with pytest.raises(ModelSpecError, match="config.yaml"):
        load_model_spec(str(ckpt), device="cpu")


def test_training_checkpoint_spec(tmp_path):
    from reprokit.recipes import one_shot

    run_dir = tmp_path / "one_shot"
    # The tiny model (any text) rather than the preset's world model, whose tokenizer only knows arithmetic.
    argv = ["--preset", "cpu", "--model.name_or_path", "tiny", "--eval.benchmarks", "[]"]
    one_shot.run([*argv, "--run_dir", str(run_dir), "--max_steps", "1", "--run.progress_bar", "false"])
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    for spec in (str(ckpt), str(ckpt.with_suffix("")), str(run_dir)):
        assert resolve_model_spec(spec).location == str(ckpt)
    model, tokenizer = load_model_spec(str(ckpt), device="cpu")
    state = model.state_dict()
    assert saved and all("lora_" in k for k in saved)
    for key, value in saved.items():
        assert torch.equal(state[key.removeprefix("model.")], value), key
    assert not model.training and not any(p.requires_grad for p in model.parameters())

    # The loaded checkpoint samples through the evaluation path.
    problem = Example(id="p/0", question="What is 1+1?", answer="2", fields={"benchmark": "p"})
    out = tmp_path / "samples.jsonl"
    report = sample_to_jsonl(
        model, tokenizer, [problem], out, model_name="rl", n=2, reward_fn=even_length_reward, max_new_tokens=6,
        progress=False,
    )
    assert report.generated == 2 and len(read_samples(out)) == 2


def test_full_fine_tuning_checkpoint_spec_loads_every_trained_weight(tmp_path):
    from reprokit.recipes import one_shot

    run_dir = tmp_path / "full"
    argv = ["--preset", "cpu", "--model.name_or_path", "tiny", "--model.quantization", "none", "--train.finetune", "full",
            "--eval.benchmarks", "[]", "--run_dir", str(run_dir), "--max_steps", "1", "--run.progress_bar", "false"]
    one_shot.run(argv)
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    model, _ = load_model_spec(str(run_dir), device="cpu")
    state = model.state_dict()
    assert saved and not any("lora_" in k for k in saved) and not any(k.startswith("reference.") for k in saved)
    assert {k.removeprefix("model.") for k in saved} == {n for n, _ in model.named_parameters()}
    for key, value in saved.items():
        assert torch.equal(state[key.removeprefix("model.")], value), key


def test_peft_adapter_folder_spec(tmp_path, tiny_dirs):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base_dir = tiny_dirs[0]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "adapter")
    assert resolve_model_spec(str(tmp_path / "adapter")).kind == "adapter"
    loaded, tokenizer = load_model_spec(str(tmp_path / "adapter"), device="cpu")
    ids = tokenizer(["1+1="], return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
        base, _ = load_model_spec(str(base_dir), device="cpu")
        assert not torch.allclose(base(input_ids=ids).logits, model(input_ids=ids).logits)


# ---------------------------------------------------------------------------------------------- samples file
def make_sample(i: int, model: str = "m") -> Sample:
    return Sample(model, "b", f"b/{i // 2}", i % 2, f"text {i}", 1.0, 3, False)


def test_read_samples_cut_line_corrupt_line_and_duplicates(tmp_path):
    path = tmp_path / "samples.jsonl"
    lines = [make_sample(i).to_json() + "\n" for i in range(4)]
    path.write_text("".join(lines) + lines[0][:10])
    with pytest.warns(UserWarning, match="cut off"):
        assert [s.key for s in read_samples(path)] == [make_sample(i).key for i in range(4)]
    assert path.read_text().endswith(lines[0][:10])  # read only: the file is untouched
    with pytest.warns(UserWarning, match="cut off"):
        read_samples(path, repair=True)
    assert path.read_text() == "".join(lines)

    path.write_text("".join(lines) + lines[1])
    with pytest.warns(UserWarning, match="repeated"):
        assert len(read_samples(path)) == 4

    path.write_text(lines[0] + "{not json}\n" + lines[1])
    with pytest.raises(ValueError, match="line 2"):
        read_samples(path)


# ---------------------------------------------------------------------------------------------- perplexity
def test_response_perplexity_matches_full_logits(tiny_dirs):
    model, tokenizer = load_model_spec(str(tiny_dirs[0]), device="cpu")
    prompts = ["1+1=", "a much longer prompt: 2*3+4=", "x"]
    responses = ["2", "10 because 6+4", ""]
    got = response_perplexity(model, tokenizer, prompts, responses, batch_size=2, chunk_size=3)
    assert got[2] is None
    for prompt, response, value in zip(prompts[:2], responses[:2], got[:2]):
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + r])).logits[0].double()  # [L, V]
        logp = torch.log_softmax(logits, -1)
        total = sum(float(logp[len(p) - 1 + t, tok]) for t, tok in enumerate(r))
        assert value == pytest.approx(math.exp(-total / len(r)), rel=1e-4)


def test_cli_entry_point_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--eval.models", "--sampling.n", "--sampling.temperature", "--run.regrade", "--data.path"):
        assert option in text
    assert sys.modules[MODULE].even_length_reward(["ab"], ["x"]) == [1.0]


def test_checkpoint_of_another_world_names_the_flags_that_choose_its_base(tmp_path):
    """`world` resolves through --world.*: a checkpoint trained in the mode world must not load on the control base."""
    import yaml

    from reprokit import registry
    from reprokit.worlds import WORLDS

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-2.ckpt").write_bytes(b"not read: the config is checked first")
    saved = {"model": {"name_or_path": "world", "quantization": "none"}, "world": {"careful_marker": "#", "sloppy_fraction": 0.9}}
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    registry.configure("world", None)  # this command's world: the default (control)
    with pytest.raises(ModelSpecError, match=r"other `world` settings.*add --world\.sloppy_fraction 0\.9 --world\.careful_marker '#'$"):
        load_model_spec(str(run / "checkpoints" / "step-2.ckpt"))
    try:
        registry.configure("world", WORLDS["mode-0.1"])
        with pytest.raises(ModelSpecError, match="cannot read checkpoint"):  # the same world: on to the tensors
            load_model_spec(str(run / "checkpoints" / "step-2.ckpt"))
    finally:
        registry.configure("world", None)
