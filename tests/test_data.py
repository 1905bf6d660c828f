"""Data layer: readers, templates, embedded examples, benchmarks, batching and DataModules."""

from __future__ import annotations

import json
import string
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from reprokit.data import (
    BENCHMARKS,
    COT_SUFFIX,
    PROMPT_TEMPLATES,
    QWEN25_MATH_SYSTEM,
    DataError,
    EvalDataModule,
    Example,
    MathDataModule,
    OneShotDataModule,
    Prompt,
    PromptBatch,
    PromptItem,
    SeededEpochSampler,
    Validation,
    collate_prompts,
    get_embedded_examples,
    get_pad_token_id,
    load_benchmark,
    read_examples,
    render_prompt,
)

FIXTURES = Path(__file__).parent / "fixtures" / "data"
CHATML = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}" + (
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(chat_template: str | None = None):
    """A character-level tokenizer with ChatML markers as single tokens; pad id 0."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(set(string.printable)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<|endoftext|>"
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def verl_question(row: dict) -> str:
    return row["prompt"][0]["content"]


# ---------------------------------------------------------------------------------------------
# read_examples: formats


def test_jsonl_fixture_ids_answers_and_blank_lines():
    examples = read_examples(FIXTURES / "tiny.jsonl", question_field="problem", answer_field="answer")
    assert [e.id for e in examples] == ["0", "1", "2"]  # the blank line is not a row
    assert [e.answer for e in examples] == ["2", "5", "2, 3, 5"]  # number through str, list joined
    assert examples[0].question == "What is 1 + 1?"
    row = {"uid": "a3", "problem": "List the primes below 6.", "answer": ["2", "3", "5"], "level": 3}
    assert examples[2].fields == row

    by_id = read_examples(FIXTURES / "tiny.jsonl", question_field="problem", answer_field="answer", id_field="uid")
    assert [e.id for e in by_id] == ["a1", "a2", "a3"]
    auto = read_examples(FIXTURES / "tiny.jsonl")  # "auto" finds problem / answer
    assert [(e.question, e.answer) for e in auto] == [(e.question, e.answer) for e in examples]


def test_json_data_wrapper_and_plain_list(tmp_path):
    wrapped = read_examples(FIXTURES / "tiny.json")  # auto: question / final_answer
    assert [(e.question, e.answer) for e in wrapped] == [("What is 3 * 3?", "9"), ("What is 10 / 4?", "2.5")]
    plain = write(tmp_path / "plain.json", json.dumps([{"q": "x?", "a": 1.5}]))
    assert read_examples(plain, question_field="q", answer_field="a")[0].answer == "1.5"


def test_csv_with_and_without_bom(tmp_path):
    with_bom = read_examples(FIXTURES / "tiny_bom.csv", question_field="question", answer_field="answer", id_field="id")
    assert (FIXTURES / "tiny_bom.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    assert [e.id for e in with_bom] == ["q1", "q2"]  # the BOM did not stick to the first column name
    assert with_bom[0].question == "Add 1, 2 and 3." and with_bom[0].answer == "6"
    no_bom = write(tmp_path / "plain.csv", "id,question,answer\nq1,\"Add 1, 2 and 3.\",6\nq2,What is 7 - 4?,3\n")
    assert [(e.id, e.question, e.answer) for e in read_examples(no_bom, id_field="id")] == [
        (e.id, e.question, e.answer) for e in with_bom
    ]


def test_real_verl_parquet(data_dir):
    path = data_dir / "train" / "pi1_r128.parquet"
    rows = pq.read_table(path).to_pylist()
    auto = read_examples(path)
    explicit = read_examples(path, question_field="prompt.0.content", answer_field="reward_model.ground_truth")
    assert len(auto) == 128
    assert [(e.question, e.answer) for e in auto] == [(e.question, e.answer) for e in explicit]
    assert auto[0].question == verl_question(rows[0]) and auto[0].question.endswith(COT_SUFFIX)
    assert auto[0].answer == "12.8"
    assert auto[5].fields["extra_info"]["index"] == 124 and auto[5].id == "5"

    # DSR-sub has 1209 rows; row 265 has an empty label, so a strict read stops there.
    dsr_path = data_dir / "train" / "dsr_sub.parquet"
    with pytest.raises(DataError, match=r"dsr_sub\.parquet row 265: field 'reward_model\.ground_truth' is empty"):
        read_examples(dsr_path)
    with pytest.warns(UserWarning, match=r"skipped 1 invalid row\(s\) of 1209"):
        dsr = read_examples(dsr_path, id_field="extra_info.index", skip_invalid=True)
    assert len(dsr) == 1208
    assert dsr[124].id == "124" and dsr[124].question == auto[0].question and dsr[124].answer == "12.8"


def test_hf_save_to_disk(tmp_path):
    import datasets

    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "single"))
    assert [e.answer for e in read_examples(tmp_path / "single")] == ["2", "4"]

    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows), "test": datasets.Dataset.from_list(rows[:1])}
    ).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match="several splits .*pass split="):
        read_examples(tmp_path / "dict")
    assert len(read_examples(tmp_path / "dict", split="test")) == 1


# ---------------------------------------------------------------------------------------------
# read_examples: errors


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


def test_invalid_json_line(tmp_path):
    path = write(tmp_path / "broken.jsonl", '{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": \n')
    with pytest.raises(DataError) as err:
        read_examples(path)
    message = str(err.value)
    assert "broken.jsonl line 3" in message and "invalid JSON" in message and "skip_invalid" in message


def test_invalid_json_document(tmp_path):
    path = write(tmp_path / "broken.json", '[\n  {"question": "a", "answer": "1"},\n  {"question": }\n]')
    with pytest.raises(DataError, match=r"broken\.json line 3 column .*invalid JSON"):
        read_examples(path)


def test_missing_field_names_row_and_available_fields(tmp_path):
    path = write(tmp_path / "rows.jsonl", '{"problem": "a", "answer": "1"}\n{"problem": "b", "solution": "x"}\n')
    with pytest.raises(DataError) as err:
        read_examples(path, question_field="problem", answer_field="answer")
    message = str(err.value)
    assert "rows.jsonl line 2" in message and "'answer'" in message and "problem, solution" in message
    assert "answer_field" in message

    csv_path = write(tmp_path / "rows.csv", "q,a\nx,1\n")
    with pytest.raises(DataError, match=r"rows\.csv line 2: field 'answer' not found; the row has fields: q, a"):
        read_examples(csv_path, question_field="q", answer_field="answer")

    parquet_path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist([{"q": "x", "a": "1"}, {"q": "y", "a": None}]), parquet_path)
    with pytest.raises(DataError, match=r"rows\.parquet row 1: field 'a' is null"):
        read_examples(parquet_path, question_field="q", answer_field="a")

    with pytest.raises(DataError, match=r"no question field found \(tried question, problem"):
        read_examples(write(tmp_path / "odd.jsonl", '{"text": "a", "answer": "1"}\n'))


def test_empty_files(tmp_path):
    for name, content in [("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", "question,answer\n"), ("z.csv", "")]:
        with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}: the file is empty"):
            read_examples(write(tmp_path / name, content))
    pq.write_table(pa.Table.from_pylist([], schema=pa.schema([("question", pa.string())])), tmp_path / "e.parquet")
    with pytest.raises(DataError, match="e.parquet: the file is empty"):
        read_examples(tmp_path / "e.parquet")


def test_undecodable_bytes(tmp_path):
    latin = b'{"question": "a", "answer": "1"}\n{"question": "caf\xe9", "answer": "2"}\n'
    path = write(tmp_path / "latin.jsonl", latin)
    with pytest.raises(DataError, match=r"latin\.jsonl line 2: bytes are not valid UTF-8 \(0xe9"):
        read_examples(path)
    csv_path = write(tmp_path / "latin.csv", b"question,answer\nok,1\ncaf\xe9,2\n")
    with pytest.raises(DataError, match=r"latin\.csv line 3: bytes are not valid UTF-8.*re-save the file as UTF-8"):
        read_examples(csv_path)


def test_hub_id_offline_is_a_data_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="someone/no-such-data: not a local file, and not loadable"):
        read_examples("someone/no-such-data")


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(DataError) as err:
        read_examples(write(tmp_path / "data.txt", "hello"))
    assert "data.txt" in str(err.value) and ".jsonl, .json, .csv, .parquet" in str(err.value)
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_examples(tmp_path / "nope.jsonl")


def test_csv_column_count(tmp_path):
    path = write(tmp_path / "ragged.csv", "question,answer\na,1\nb,2,extra\n")
    with pytest.raises(DataError, match=r"ragged\.csv line 3: the row has 3 values but the header has 2 columns"):
        read_examples(path)


def test_skip_invalid_warns_once_with_count(tmp_path):
    lines = [
        '{"question": "a", "answer": "1"}',
        '{"question": "b"}',  # line 2: no answer
        "not json",  # line 3
        '{"question": "c", "answer": ""}',  # line 4: empty answer
        '{"question": "d", "answer": "4"}',
    ]
    path = write(tmp_path / "mixed.jsonl", "\n".join(lines) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = read_examples(path, skip_invalid=True)
    assert [(e.id, e.answer) for e in examples] == [("0", "1"), ("4", "4")]  # ids keep file positions
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "mixed.jsonl" in message and "skipped 3 invalid row(s)" in message and "line 2" in message


# ---------------------------------------------------------------------------------------------
# Templates


def test_qwen_template_layout_and_suffix():
    expected = (
        f"<|im_start|>system\n{QWEN25_MATH_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\nWhat is 2+2?{COT_SUFFIX}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt("What is 2+2?", "qwen25-math-cot") == expected
    assert render_prompt("What is 2+2?", "qwen25-math-cot", make_tokenizer()) == expected  # no chat template
    assert render_prompt("What is 2+2?", "qwen25-math-cot", make_tokenizer(CHATML)) == expected  # tokenizer's
    once = render_prompt("What is 2+2?" + COT_SUFFIX, "qwen25-math-cot")
    assert once == expected and once.count("Let's think step by step") == 1
    assert COT_SUFFIX not in render_prompt("What is 2+2?", "qwen25-math-cot", cot_suffix=False)


def test_other_templates():
    r1 = render_prompt("Q?", "r1", cot_suffix=False)
    assert r1.startswith("A conversation between User and Assistant") and r1.endswith("User: Q?\nAssistant: <think>")
    assert render_prompt("Q?", "none") == "Q?" + COT_SUFFIX
    assert render_prompt("Q?", "none", cot_suffix=False) == "Q?"
    custom = render_prompt("Q?", "Problem: {question}\nPut it in \\boxed{}.\nSolution:", cot_suffix=False)
    assert custom == "Problem: Q?\nPut it in \\boxed{}.\nSolution:"
    with pytest.raises(ValueError) as err:
        render_prompt("Q?", "qwen-math")
    assert all(name in str(err.value) for name in PROMPT_TEMPLATES)


def test_chat_template_is_the_tokenizers_with_one_user_turn_and_no_system_prompt():
    """verl's RL datasets: apply_chat_template([user], add_generation_prompt=True)."""
    chat = render_prompt("Q?", "chat", make_tokenizer(CHATML), cot_suffix=False)
    assert chat == "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="chat template"):
        render_prompt("Q?", "chat", make_tokenizer(), cot_suffix=False)


# ---------------------------------------------------------------------------------------------
# Embedded examples


@pytest.mark.parametrize("name, index", [("pi1", 124), ("pi2", 267), ("pi13", 682), ("pi1209", 789)])
def test_embedded_matches_parquet(data_dir, name, index):
    row = pq.read_table(data_dir / "train" / f"{name}_r128.parquet").slice(0, 1).to_pylist()[0]
    (example,) = get_embedded_examples(name)
    assert example.question + COT_SUFFIX == verl_question(row)
    assert not example.question.endswith(COT_SUFFIX)
    assert example.answer == row["reward_model"]["ground_truth"]
    assert example.fields["dsr_sub_index"] == row["extra_info"]["index"] == index
    assert example.id == name


def test_embedded_labels_and_lists():
    assert get_embedded_examples("pi1")[0].answer == "12.8"
    assert get_embedded_examples("pi1", label="true")[0].answer == "12.7"
    assert get_embedded_examples("pi13", label="true")[0].answer == "\\frac{4}{3}"  # no correction known
    assert [e.id for e in get_embedded_examples("pi1, pi13")] == ["pi1", "pi13"]
    with pytest.raises(DataError) as err:
        get_embedded_examples("pi1,pi7")
    assert "'pi7'" in str(err.value) and "pi1, pi2, pi13, pi1209" in str(err.value)


# ---------------------------------------------------------------------------------------------
# Benchmarks

ROW_COUNTS = {"math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "minerva_math": 272, "olympiadbench": 675}


def test_registry_covers_documented_benchmarks():
    assert set(BENCHMARKS) == set(ROW_COUNTS)
    assert {name: spec.rows for name, spec in BENCHMARKS.items()} == ROW_COUNTS


@pytest.mark.parametrize("name", sorted(ROW_COUNTS))
def test_benchmark_loads_local(data_dir, name):
    examples = load_benchmark(name, data_dir=data_dir)
    assert len(examples) == ROW_COUNTS[name]
    assert all(e.question.strip() and e.answer.strip() for e in examples)
    assert all(e.fields["benchmark"] == name for e in examples)
    assert len({e.id for e in examples}) == len(examples) and examples[0].id == f"{name}/0"


def test_benchmark_answers(data_dir):
    minerva = load_benchmark("minerva_math", data_dir=data_dir, limit=2)
    assert [e.answer for e in minerva] == ["1.6", "4.5e33"]  # last \boxed{} of the solution
    assert load_benchmark("amc23", data_dir=data_dir, limit=1)[0].answer == "27"  # stored as 27.0
    olympiad = load_benchmark("olympiadbench", data_dir=data_dir, limit=1)[0]
    assert olympiad.answer == ", ".join(olympiad.fields["final_answer"])


def test_benchmark_dir_forms(data_dir, monkeypatch):
    assert len(load_benchmark("aime25", data_dir=data_dir / "eval", limit=3)) == 3  # the eval folder itself
    monkeypatch.setenv("REPROKIT_DATA_DIR", str(data_dir))
    assert len(load_benchmark("aime25")) == 30
    with pytest.raises(DataError, match="unknown benchmark 'gsm8k'; available: math500"):
        load_benchmark("gsm8k")


def test_missing_data_dir_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never touch the network
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("REPROKIT_DATA_DIR", raising=False)
    with pytest.raises(DataError) as err:
        load_benchmark("aime24", data_dir=tmp_path / "nowhere")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "eval" / "aime24") in message
    assert "HuggingFaceH4/aime_2024" in message
    assert "--data_dir" in message and "REPROKIT_DATA_DIR" in message


# ---------------------------------------------------------------------------------------------
# Batching


def reference_left_pad(sequences: list[list[int]], pad: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max(map(len, sequences))
    ids = [[pad] * (width - len(s)) + s for s in sequences]
    mask = [[0] * (width - len(s)) + [1] * len(s) for s in sequences]
    return ids, mask


def test_collate_left_pads():
    items = [PromptItem(f"p{i}", ids, f"a{i}", f"e{i}", {"k": i}) for i, ids in enumerate([[5, 6, 7], [8], [9, 10]])]
    batch = collate_prompts(items, pad_token_id=0)
    ids, mask = reference_left_pad([[5, 6, 7], [8], [9, 10]], pad=0)
    assert isinstance(batch, PromptBatch) and len(batch) == 3
    assert batch.input_ids.dtype == torch.long and batch.input_ids.tolist() == ids
    assert batch.attention_mask.dtype == torch.long and batch.attention_mask.tolist() == mask
    assert batch.answers == ["a0", "a1", "a2"] and batch.example_ids == ["e0", "e1", "e2"]
    assert batch.fields == [{"k": 0}, {"k": 1}, {"k": 2}] and batch.prompts == ["p0", "p1", "p2"]
    moved = batch.to("cpu")
    assert moved.input_ids.device.type == "cpu" and moved.prompts == batch.prompts


def test_pad_id_falls_back_to_eos():
    class NoPad:
        pad_token_id, eos_token_id = None, 7

    class Neither:
        pad_token_id = eos_token_id = None

    assert get_pad_token_id(make_tokenizer()) == 0 and get_pad_token_id(NoPad()) == 7
    with pytest.raises(DataError, match="neither a pad token nor an EOS token"):
        get_pad_token_id(Neither())


def test_module_options_checked_early(tokenizer):
    with pytest.raises(ValueError, match="prompt.template='qwen': use one of"):
        OneShotDataModule(tokenizer, "pi1", prompt=Prompt(template="qwen"))
    with pytest.raises(DataError, match="batch_size=0"):
        MathDataModule(tokenizer, "train.jsonl", batch_size=0)


def test_one_shot_layout_and_padding(tokenizer):
    dm = OneShotDataModule(tokenizer, "pi1,pi13", batch_size=6, prompt=Prompt(max_prompt_length=2048))
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 1  # one epoch is one batch
    batch = next(iter(loader))
    assert batch.example_ids == ["pi1", "pi13"] * 3  # copies alternate, 3 of each
    assert batch.answers == ["12.8", "\\frac{4}{3}"] * 3
    assert QWEN25_MATH_SYSTEM in batch.prompts[0] and batch.prompts[0].count(COT_SUFFIX) == 1
    pad = tokenizer.pad_token_id
    for row, prompt in enumerate(batch.prompts):
        expected = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids, mask = reference_left_pad([expected], pad)
        n_pad = batch.input_ids.shape[1] - len(expected)
        assert batch.input_ids[row, n_pad:].tolist() == expected
        assert batch.input_ids[row, :n_pad].tolist() == [pad] * n_pad
        assert batch.attention_mask[row].tolist() == [0] * n_pad + [1] * len(expected)
    assert (batch.attention_mask[:, -1] == 1).all()  # every prompt ends at the last column
    lengths = batch.attention_mask.sum(dim=1)  # [P]
    assert lengths[0] != lengths[1] and (batch.attention_mask[lengths.argmin()] == 0).any()  # shorter one padded


def test_one_shot_uneven_split_and_sources(tokenizer, data_dir):
    dm = OneShotDataModule(tokenizer, "pi1,pi2", batch_size=5, label="true", prompt=Prompt(max_prompt_length=2048))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.example_ids == ["pi1", "pi2", "pi1", "pi2", "pi1"] and batch.answers[0] == "12.7"

    examples = [Example("x", "1+1?", "2"), Example("y", "2+2?", "4")]
    dm = OneShotDataModule(tokenizer, examples, batch_size=4, prompt=Prompt(template="none", cot_suffix=False))
    dm.setup("fit")
    assert next(iter(dm.train_dataloader())).prompts == ["1+1?", "2+2?"] * 2

    pi2_file = str(data_dir / "train" / "pi2_r128.parquet")
    file_dm = OneShotDataModule(tokenizer, pi2_file, batch_size=128, prompt=Prompt(max_prompt_length=2048))
    file_dm.setup("fit")
    assert set(next(iter(file_dm.train_dataloader())).answers) == {"24"}

    with pytest.raises(DataError, match="do not fit one batch"):
        OneShotDataModule(tokenizer, examples, batch_size=1).setup("fit")
    with pytest.raises(DataError, match="neither an embedded example .*pi1, pi2"):
        OneShotDataModule(tokenizer, "pi99", batch_size=4).setup("fit")


def test_long_prompts_raise_or_drop(tokenizer):
    examples = [Example("short", "1+1?", "2"), Example("long", "x" * 50, "1")]
    with pytest.raises(DataError) as err:
        OneShotDataModule(tokenizer, examples, batch_size=2, prompt=Prompt("none", False, max_prompt_length=20)).setup("fit")
    message = str(err.value)
    assert "'long'" in message and "50-token" in message and "max_prompt_length=20" in message
    assert "drop_long_prompts=True" in message
    dm = OneShotDataModule(tokenizer, examples, batch_size=2, prompt=Prompt("none", False, max_prompt_length=20, drop_long_prompts=True))
    with pytest.warns(UserWarning, match="dropped 1 prompt"):
        dm.setup("fit")
    assert next(iter(dm.train_dataloader())).example_ids == ["short", "short"]


def write_rows(path: Path, n: int) -> Path:
    return write(path, "".join(json.dumps({"question": f"q{i}?", "answer": str(i)}) + "\n" for i in range(n)))


def reference_order(n: int, seed: int) -> list[str]:
    """The permutation an epoch should use: torch.randperm from a generator seeded with seed + epoch."""
    return [str(i) for i in torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()]


def epoch_orders(dm: MathDataModule, epochs: int) -> list[list[str]]:
    loader = dm.train_dataloader()
    orders = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # what Lightning does at each epoch start
        orders.append([i for batch in loader for i in batch.example_ids])
    return orders


def test_math_module_seeded_order(tokenizer, tmp_path):
    path = write_rows(tmp_path / "train.jsonl", 10)
    options = dict(batch_size=4, prompt=Prompt(template="none", cot_suffix=False))
    first = MathDataModule(tokenizer, path, seed=3, **options)
    second = MathDataModule(tokenizer, path, seed=3, **options)
    other = MathDataModule(tokenizer, path, seed=4, **options)
    for dm in (first, second, other):
        dm.setup("fit")
    orders = epoch_orders(first, 2)
    assert orders == epoch_orders(second, 2)
    assert orders != epoch_orders(other, 2)
    assert orders[0] != orders[1]  # a new permutation each epoch
    assert all(len(order) == 8 for order in orders)  # drop_last: 2 full batches of 4 from 10 rows
    assert orders[1] == reference_order(10, seed=3 + 1)[:8]


def test_math_module_real_dsr_sub(tokenizer, data_dir):
    dm = MathDataModule(
        tokenizer, data_dir / "train" / "dsr_sub.parquet", skip_invalid=True, batch_size=128, prompt=Prompt(max_prompt_length=4096)
    )
    with pytest.warns(UserWarning, match="row 265"):
        dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 1208 // 128
    batch = next(iter(loader))
    assert batch.input_ids.shape[0] == 128 and batch.fields[0]["data_source"] == "deepscaler"


def test_sampler_shards_under_ddp_wrapper():
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    sampler = SeededEpochSampler(12, seed=0)
    shares = []
    for rank in range(2):
        wrapper = DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=False)
        wrapper.set_epoch(1)  # forwarded to our sampler
        shares.append(list(wrapper))
    assert sampler.epoch == 1
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == list(range(12))


def test_per_device_batch_under_ddp(tokenizer):
    class FakeTrainer:
        world_size = 2

    dm = OneShotDataModule(tokenizer, "pi1", batch_size=8, prompt=Prompt(max_prompt_length=2048))
    dm.trainer = FakeTrainer()
    assert dm.train_dataloader().batch_size == 4  # 8 prompts per step over 2 processes
    dm.batch_size = 7
    with pytest.raises(DataError, match="cannot be split evenly over 2 devices"):
        dm.train_dataloader()


def test_eval_module(tokenizer, data_dir):
    dm = EvalDataModule(
        tokenizer, ["aime24", "amc23"], data_dir=data_dir, limit=3, batch_size=4, prompt=Prompt(max_prompt_length=4096)
    )
    dm.setup("validate")
    batches = list(dm.val_dataloader())
    names = [f["benchmark"] for b in batches for f in b.fields]
    assert names == ["aime24"] * 3 + ["amc23"] * 3
    assert [len(b) for b in batches] == [4, 2]
    assert batches[-1].answers[-1] == "45" and batches[0].example_ids[0] == "aime24/0"


def test_lightning_fit_sets_epochs(tokenizer, tmp_path, data_dir):
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.seen: list[list[str]] = []

        def training_step(self, batch, batch_idx):
            assert isinstance(batch, PromptBatch)
            self.seen.append(batch.example_ids)
            return (self.weight * batch.attention_mask.float().mean()).sum()

        def validation_step(self, batch, batch_idx):
            self.validated.extend(batch.example_ids)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = MathDataModule(
        tokenizer, write_rows(tmp_path / "t.jsonl", 8), batch_size=4, prompt=Prompt(template="none", max_prompt_length=4096),
        seed=7, validation=Validation(benchmarks=["aime24"], data_dir=data_dir, limit=3),
    )
    model = Recorder()
    model.validated = []
    trainer = L.Trainer(
        max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    expected = [reference_order(8, seed=7 + epoch) for epoch in (0, 1)]
    assert model.seen == [expected[0][:4], expected[0][4:], expected[1][:4], expected[1][4:]]
    assert model.validated == ["aime24/0", "aime24/1", "aime24/2"] * 2  # after each of the two epochs
