"""The arithmetic world: problems, solution styles, grading, splits, tokenizer and the cached base model."""

import dataclasses
import json
import random
import re
import time

import pytest
import torch

from reprokit.data import Prompt
from reprokit.metrics.functional import pass_at_k
from reprokit.worlds import (
    EOS_TOKEN,
    PROMPT_FORMAT,
    BaseConfig,
    Problem,
    WorldConfig,
    alphabet,
    build_corpus,
    build_tokenizer,
    config_hash,
    evaluate_pass_at_k,
    export_splits,
    grade,
    load_base,
    load_world_config,
    make_splits,
    max_response_chars,
    pretrain_base,
    render_prompt,
    reward,
    write_solution,
)

def teacher_error_rates(cfg: WorldConfig) -> dict:
    """The sloppy teacher's error rate for every fact (a, op, b) of the world."""
    from reprokit.worlds.teacher import _misconceptions

    table = _misconceptions(cfg.seed, cfg.modulus, cfg.operations, cfg.sloppy_error_rate, cfg.sloppy_error_spread)
    return {f: r for f, (r, _) in table.items()}


def solution_pairs(problems, style: str, cfg: WorldConfig, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, solution) pairs of ``problems`` written by ``style``."""
    rng = random.Random(f"pairs-{seed}")
    return [(render_prompt(p.question), write_solution(p, style, cfg, rng)) for p in problems]


SMALL = WorldConfig(num_train=50, num_test=30, num_hard=20, corpus_size=2000)


@pytest.fixture(autouse=True)
def _one_thread(_two_threads):
    # Models here are tiny: a second thread speeds nothing up, and when other jobs hold the cores its
    # busy-waiting makes a 20-step fit take 30 s instead of 2 s.
    torch.set_num_threads(1)
    yield


def reference_values(question: str, modulus: int = 10) -> list[int]:
    """Plain left-to-right evaluation, written independently of the world code."""
    tokens = re.findall(r"\d+|[+*-]", question)
    values = [int(tokens[0])]
    for op, x in zip(tokens[1::2], tokens[2::2]):
        v = values[-1]
        values.append({"+": v + int(x), "-": v - int(x), "*": v * int(x)}[op] % modulus)
    return values


def test_known_problem_and_styles():
    cfg = WorldConfig()
    p = Problem(id="x", question="3+4*2+7", answer="3741", steps=3)
    careful = write_solution(p, "careful", cfg)
    assert careful == "3+4=7\n7*2=4\n4+7=1\n\\boxed{3741}"
    alt = write_solution(p, "teacher_alt", cfg)
    assert alt == "3|+4*2+7\n37|*2+7\n374|+7\n3741|\n\\boxed{3741}"
    assert render_prompt(p.question) == "3+4*2+7\n" == PROMPT_FORMAT.format(question=p.question)
    assert grade(careful, p.answer) == 1.0
    assert grade(alt, p.answer) == 1.0
    assert grade("3+4=7\n7*2=4\n4+7=2\n\\boxed{3742}", p.answer) == 0.0
    assert grade("3+4=7\n7*2=4\n4+7=1", p.answer) == 0.0  # no box
    assert grade("\\boxed{9} then \\boxed{3741}", p.answer) == 1.0  # the last box counts
    assert grade("\\boxed{ 3741 }", p.answer) == 1.0
    assert reward([careful, "\\boxed{1}"], ["3741", "3741"]) == [1.0, 0.0]

    final = WorldConfig(answer_format="final")
    assert write_solution(p, "careful", final).endswith("\\boxed{1}")
    assert write_solution(p, "teacher_alt", final) == "3|+4*2+7\n7|*2+7\n4|+7\n1|\n\\boxed{1}"


def test_split_answers_match_reference():
    splits = make_splits(SMALL)
    for _, problems in splits.items():
        for p in problems:
            values = reference_values(p.question)
            assert p.answer == "".join(map(str, values))
            assert p.steps == len(values) - 1
            assert grade(write_solution(p, "careful", SMALL), p.answer) == 1.0
            assert grade(write_solution(p, "teacher_alt", SMALL), p.answer) == 1.0


def test_grade_agrees_with_math_reward():
    math = pytest.importorskip("reprokit.rewards.math", reason="reprokit.rewards.math does not import yet")
    cases = [
        ("3+4=7\n\\boxed{3741}", "3741"),
        ("\\boxed{3742}", "3741"),
        ("no box at all", "3741"),
        ("\\boxed{1}", "1"),
        ("\\boxed{0}", "1"),
        ("\\boxed{12}\n\\boxed{16042}", "16042"),
        ("\\boxed{ 97971750 }", "97971750"),
        ("\\boxed{}", "5"),
    ]
    completions, answers = zip(*cases)
    assert math.math_reward(list(completions), list(answers)) == [grade(c, a) for c, a in cases]


def test_splits_seeded_disjoint_and_held_out(tmp_path):
    a, b = make_splits(SMALL), make_splits(SMALL)
    assert a == b
    assert make_splits(dataclasses.replace(SMALL, seed=1)).test != a.test
    questions = {name: [p.question for p in ps] for name, ps in a.items()}
    for name, qs in questions.items():
        assert len(qs) == len(set(qs)) == getattr(SMALL, f"num_{name}")
    assert not set(questions["train"]) & set(questions["test"])
    assert not set(questions["train"]) & set(questions["hard"])
    assert not set(questions["test"]) & set(questions["hard"])
    assert {p.steps for p in a.test} <= set(range(SMALL.min_steps, SMALL.max_steps + 1))
    assert {p.steps for p in a.hard} == {6, 7}
    corpus_questions = {prompt.rstrip("\n") for prompt, _ in build_corpus(SMALL, a)}
    for qs in questions.values():
        assert not corpus_questions & set(qs)

    paths = export_splits(SMALL, tmp_path, a)
    rows = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    assert [(r["id"], r["question"], r["answer"]) for r in rows] == [(p.id, p.question, p.answer) for p in a.test]
    try:
        from reprokit.data import read_examples
    except ImportError:
        return
    examples = read_examples(paths["hard"], question_field="question", answer_field="answer", id_field="id")
    assert [(e.id, e.question, e.answer) for e in examples] == [(p.id, p.question, p.answer) for p in a.hard]


@pytest.mark.parametrize("spread", [0.0, 1.0])
def test_sloppy_error_rate_near_configured(spread):
    cfg = WorldConfig(sloppy_error_rate=0.15, sloppy_error_spread=spread)
    rates = teacher_error_rates(cfg)
    assert sum(rates.values()) / len(rates) == pytest.approx(0.15)
    rng = random.Random(0)
    problems = make_splits(dataclasses.replace(cfg, num_train=3000)).train
    wrong, expected, total, written = 0, 0.0, 0, {}
    for p in problems:
        for line in write_solution(p, "sloppy", cfg, rng).splitlines()[:-1]:
            a, op, x, result = re.fullmatch(r"(\d)([+*])(\d)=(\d)", line).groups()
            truth = reference_values(f"{a}{op}{x}")[-1]
            wrong += truth != int(result)
            expected += rates[(int(a), op, int(x))]
            total += 1
            if truth != int(result):
                written.setdefault((a, op, x), set()).add(result)
    assert total > 8000
    assert abs(wrong / total - 0.15) < 0.015
    assert abs(wrong - expected) < 4 * expected**0.5  # binomial noise around the per-fact rates
    assert all(len(results) == 1 for results in written.values())  # one fixed misconception per fact
    if spread == 0.0:
        assert set(rates.values()) == {0.15}
    # errors propagate: with every step wrong, the sloppy box is the written chain, never the answer
    always = dataclasses.replace(cfg, sloppy_error_rate=1.0, sloppy_error_spread=0.0)
    assert grade(write_solution(problems[0], "sloppy", always, random.Random(1)), problems[0].answer) == 0.0


def test_alt_strategy_absent_from_corpus():
    corpus = build_corpus(SMALL)
    assert len(corpus) == SMALL.corpus_size
    assert not any("|" in prompt + response for prompt, response in corpus)
    for _, response in corpus:
        for line in response.splitlines()[:-1]:
            assert re.fullmatch(r"\d[+*]\d=\d", line), line  # one operation per line, careful layout
    alt = solution_pairs(make_splits(SMALL).train, "teacher_alt", SMALL)
    assert all(response.count("|") == response.count("\n") for _, response in alt)
    styles = {response == write_solution(prompt.rstrip("\n"), "careful", SMALL) for prompt, response in corpus}
    assert styles == {True, False}  # both careful and sloppy solutions are present


def test_tokenizer_round_trips_every_string(tmp_path):
    tok = build_tokenizer(SMALL)
    assert tok.eos_token == tok.pad_token == EOS_TOKEN
    assert tok.padding_side == "left"
    assert len(tok) == len(alphabet(SMALL)) + 1
    splits = make_splits(SMALL)
    texts = [p + r for p, r in build_corpus(SMALL, splits)]
    texts += [p + r for p, r in solution_pairs(splits.hard, "teacher_alt", SMALL)]
    encoded = tok(texts, add_special_tokens=False)["input_ids"]
    for text, ids in zip(texts, encoded):
        assert len(ids) == len(text)  # one token per character
        assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(texts[0], add_special_tokens=False)["input_ids"] == encoded[0]
    assert loaded.padding_side == "left"
    assert all(len(r) <= max_response_chars(7) for _, r in solution_pairs(splits.hard, "teacher_alt", SMALL))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="operations"):
        WorldConfig(operations=("/",))
    with pytest.raises(ValueError, match="hard_min_steps"):
        WorldConfig(max_steps=6, hard_min_steps=6)
    with pytest.raises(ValueError, match="answer_format"):
        WorldConfig(modulus=12)
    with pytest.raises(ValueError, match="num_test"):
        make_splits(WorldConfig(min_steps=1, max_steps=1, num_test=100))


def test_the_worlds_pass_at_k_matches_brute_force():
    from itertools import combinations

    for n, c, k in [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 3, 4), (6, 6, 2), (7, 1, 7)]:
        outcomes = [1] * c + [0] * (n - c)
        subsets = list(combinations(range(n), k))
        brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute)


TINY = WorldConfig(num_train=8, num_test=6, num_hard=4, corpus_size=64)
TINY_BASE = BaseConfig(
    hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, pretrain_steps=3, batch_size=8, warmup_steps=1,
    eval_samples=2,
)  # fmt: skip


def test_pretrain_base_caches(tmp_path):
    path = pretrain_base(TINY, tmp_path, progress=False, threads=1, base=TINY_BASE)
    assert path == tmp_path / config_hash(TINY, TINY_BASE)
    for name in ("config.json", "tokenizer.json", "world.json", "base_metrics.json", "test.jsonl", "hard.jsonl"):
        assert (path / name).is_file(), name
    assert load_world_config(path) == (TINY, TINY_BASE)
    metrics = json.loads((path / "base_metrics.json").read_text())
    assert metrics["parameters"] > 0 and metrics["tokens_per_s"] > 0
    assert set(metrics["test"]) >= {"pass@1", "pass@2"} and set(metrics["hard"]) >= {"pass@1", "pass@2"}
    assert list(metrics["test"]["num_correct"]) == [p.id for p in make_splits(TINY).test]
    assert not list(tmp_path.glob(".*partial*"))

    started = time.perf_counter()
    assert pretrain_base(TINY, tmp_path, progress=False, base=TINY_BASE) == path
    assert time.perf_counter() - started < 1.0

    other = pretrain_base(dataclasses.replace(TINY, seed=1), tmp_path, progress=False, threads=1, base=TINY_BASE)
    assert other != path and other.is_dir()

    model, tok = load_base(path)
    from transformers import AutoTokenizer

    text = "".join(solution_pairs(make_splits(TINY).hard[:1], "teacher_alt", TINY)[0])
    for loaded in (tok, AutoTokenizer.from_pretrained(path)):  # the folder's model type must not swap tokenizers
        assert loaded.decode(loaded(text, add_special_tokens=False)["input_ids"]) == text
        assert loaded.padding_side == "left" and loaded.eos_token == EOS_TOKEN
    result = evaluate_pass_at_k(model, tok, make_splits(TINY).test[:3], n=4, ks=[1, 4, 8], seed=0)
    assert set(result) >= {"pass@1", "pass@4", "num_correct", "ids"} and "pass@8" not in result
    assert result == evaluate_pass_at_k(model, tok, make_splits(TINY).test[:3], n=4, ks=[1, 4, 8], seed=0)


def test_world_splits_are_kit_benchmarks_and_one_shot_examples():
    from reprokit.data import DataError, OneShotDataModule, load_benchmark
    from reprokit.worlds.names import examples as world_examples

    splits = make_splits(WorldConfig())
    test = load_benchmark("world_test")
    assert [e.id for e in test] == [f"world_test/{p.id}" for p in splits.test]
    assert [e.answer for e in test] == [p.answer for p in splits.test]
    assert {e.fields["benchmark"] for e in test} == {"world_test"}
    hard = load_benchmark("world_hard", limit=3)
    assert [e.question for e in hard] == [p.question for p in splits.hard[:3]]
    assert min(e.fields["steps"] for e in hard) > WorldConfig().max_steps

    chosen = world_examples("world:train-00007,train-00003")
    assert [(e.id, e.answer) for e in chosen] == [(p.id, p.answer) for p in (splits.train[7], splits.train[3])]
    tokenizer = build_tokenizer(WorldConfig())
    data = OneShotDataModule(tokenizer, examples="world:train-00007", batch_size=4, prompt=Prompt(template=PROMPT_FORMAT, cot_suffix=False))
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch.answers == [splits.train[7].answer] * 4
    assert tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()]) == PROMPT_FORMAT.format(
        question=splits.train[7].question
    )
    with pytest.raises(DataError, match="train-12345.*world:train-00000"):
        world_examples("world:train-12345")
    with pytest.raises(DataError, match="world_test"):
        load_benchmark("no_such_benchmark")


def test_careful_marker_marks_only_careful_solutions_and_names_a_new_world():
    marked = WorldConfig(careful_marker="#")
    problem = make_splits(marked).train[0]
    careful = write_solution(problem, "careful", marked)
    assert careful.startswith("#\n") and grade(careful, problem.answer) == 1.0
    rng = random.Random(0)
    assert not any(write_solution(problem, "sloppy", marked, rng).startswith("#") for _ in range(20))
    assert "#" in alphabet(marked) and "#" not in alphabet(WorldConfig())
    assert not write_solution(problem, "careful", WorldConfig()).startswith("#")
    assert config_hash(marked) != config_hash(WorldConfig())
    corpus = build_corpus(dataclasses.replace(marked, corpus_size=400))
    share = sum(s.startswith("#") for _, s in corpus) / len(corpus)
    assert abs(share - (1 - marked.sloppy_fraction)) < 0.07
    with pytest.raises(ValueError, match="careful_marker"):
        WorldConfig(careful_marker="7")


def test_text_outside_the_world_alphabet_is_a_data_error_naming_example_and_characters():
    from reprokit.data import DataError, Example, tokenize_examples

    tokenizer = build_tokenizer(WorldConfig())
    examples = [Example("ok", "3+4", "7"), Example("pi1", "Find x: 3+4", "7")]
    with pytest.raises(DataError, match=r"example 'pi1'.*does not know: ' :Fin'.*world:<id>"):
        tokenize_examples(examples, tokenizer, template=PROMPT_FORMAT, cot_suffix=False)
    assert len(tokenize_examples(examples[:1], tokenizer, template=PROMPT_FORMAT, cot_suffix=False)) == 1


def test_checking_writer_checks_about_half_its_steps_and_every_check_is_right():
    from reprokit.worlds import WORLDS

    world = WORLDS["selfcheck"]
    rng = random.Random(3)
    steps = checks = 0
    for problem in make_splits(world).train[:300]:
        solution = write_solution(problem, "checking", world, rng)
        values = reference_values(problem.question)
        lines = solution.split("\n")[:-1]
        current = values[0]
        for line in lines:
            if line.startswith("~"):
                checks += 1
                a, op, b, result = re.fullmatch(r"~(\d)([+*-])(\d)=(\d)", line).groups()
                want = {"+": int(a) + int(b), "*": int(a) * int(b), "-": int(a) - int(b)}[op] % 10
                assert int(result) == want, line  # a check line is always right
                current = int(result)
            else:
                steps += 1
                a = int(line[0])
                assert a == current, f"a step must start from the value before it: {solution!r}"
                current = int(line.split("=")[1])
    assert abs(checks / steps - world.check_rate) < 0.05
    share = sum("~" in s for _, s in build_corpus(dataclasses.replace(world, corpus_size=2000))) / 2000
    checked_at_least_once = sum(1 - (1 - world.check_rate) ** s for s in range(2, 6)) / 4  # 2-5 steps, uniform
    assert abs(share - world.check_fraction * checked_at_least_once) < 0.03


def test_blind_spots_are_written_wrong_by_every_pretraining_writer_and_right_by_the_teacher():
    from reprokit.worlds import WORLDS
    from reprokit.worlds.teacher import blind_spot_facts

    world = WORLDS["blindspot"]
    blind = blind_spot_facts(world)
    assert len(blind) == 20
    rng = random.Random(0)
    seen = 0
    for problem in make_splits(world).train:
        values = reference_values(problem.question)
        teacher = write_solution(problem, "teacher", world)
        assert grade(teacher, problem.answer) == 1.0
        for style in ("careful", "sloppy"):
            solution = write_solution(problem, style, world, rng)
            for line in solution.split("\n")[:-1]:
                a, op, b, result = re.fullmatch(r"(\d)([+*-])(\d)=(\d)", line).groups()
                fact = (int(a), op, int(b))
                if fact in blind:
                    seen += 1
                    assert int(result) == blind[fact], f"{style} wrote a blind-spot fact right: {line}"
        if any((values[i], op, x) in blind for i, (op, x) in enumerate(re.findall(r"([+*-])(\d)", problem.question))):
            assert write_solution(problem, "careful", world) != teacher
    assert seen > 100


def test_shipped_bases_are_the_code_worlds_and_load():
    from reprokit.worlds import WORLDS, config_hash
    from reprokit.worlds.base import SHIPPED_DIR, shipped_base

    shipped = sorted(p.name for p in SHIPPED_DIR.glob("*/"))
    assert shipped == sorted(WORLDS), "every study world ships its base (python -m reprokit.worlds rebuilds them)"
    for name, world in WORLDS.items():
        folder = SHIPPED_DIR / name
        saved = json.loads((folder / "world.json").read_text())
        assert saved["config_hash"] == config_hash(world), f"{name}: the shipped base was built from another config"
        assert WorldConfig.from_dict(saved) == world
        assert shipped_base(world) == folder
        metrics = json.loads((folder / "base_metrics.json").read_text())
        assert 0 < metrics["test"]["pass@1"] < 1
    model, tok = load_base(SHIPPED_DIR / "mode-0.1")
    assert "#" in tok.get_vocab() and sum(p.numel() for p in model.parameters()) > 1e6


def test_behaviours_and_the_mode_only_reward_follow_the_current_world():
    from reprokit import registry
    from reprokit.worlds import WORLDS
    from reprokit.worlds.names import behaviours, mode_reward

    texts = ["#\n1+2=3\n3\n", "1+2=4\n4\n", "#\n", "1+2=3\n~1+2=3\n3*2=6\n36\n"]
    try:
        registry.configure("world", WORLDS["mode-0.2"])
        assert behaviours(texts) == {"mode": [1.0, 0.0, 1.0, 0.0]}
        assert mode_reward(texts, ["3"] * 4) == [1.0, 0.0, 1.0, 0.0]
        registry.configure("world", WORLDS["selfcheck"])
        assert behaviours(texts) == {"checks": [0.0, 0.0, 0.0, 0.5]}  # one check line per two step lines
        assert mode_reward(texts, ["3"] * 4) == [0.0, 0.0, 0.0, 1.0]
        registry.configure("world", WORLDS["control"])
        assert behaviours(texts) == {}
        with pytest.raises(ValueError, match="careful marker or a checking writer"):
            mode_reward(texts, ["3"] * 4)
    finally:
        registry.configure("world", None)
