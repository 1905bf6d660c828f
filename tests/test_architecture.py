"""The package's shape: no import cycle, the core never imports the CPU world, every module says what it owns, and
names resolve through the registry (with old spellings failing on a message that names the new one)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import code_map  # noqa: E402

from reprokit import cli, registry  # noqa: E402


def test_the_import_graph_has_no_cycle_and_no_arrow_from_the_core_into_the_worlds():
    edges = code_map.graph()
    assert "reprokit.training.grpo" in edges and "reprokit.worlds.base" in edges, "the graph misses modules"
    assert code_map.cycles(edges) == []
    into_worlds = [(a, b) for a, bs in edges.items() if code_map.is_core(a) for b in bs if b.startswith("reprokit.worlds")]
    assert into_worlds == []
    # The graph does see imports inside functions: the worlds import the core.
    assert "reprokit.training.sft" in edges["reprokit.worlds.base"]


def test_every_module_says_what_it_owns_in_its_first_line():
    missing = [name for name, path in code_map.modules().items() if not code_map.first_line(path)]
    assert missing == []


def test_the_world_is_a_registry_entry_that_every_recipe_can_configure():
    from reprokit.recipes import focal_tokens, one_shot, pass_at_k

    for recipe in (one_shot.RECIPE, focal_tokens.RECIPE, pass_at_k.RECIPE):
        parser = cli.build_parser(recipe)
        assert "--world.careful_marker" in parser.format_help(), recipe.name
    parsed = cli.parse(pass_at_k.RECIPE, ["--preset", "cpu", "--world.careful_marker", "#", "--world_base.hidden_size", "64"])
    assert registry.settings("world").careful_marker == "#" and registry.settings("world_base").hidden_size == 64
    assert parsed.section("world").careful_marker == "#"
    assert registry.lookup("benchmark", "world_test").startswith("reprokit.worlds.")


def test_old_spellings_fail_naming_the_new_ones(tmp_path):
    """The GRPO options' one section became rollout, loss and train (validation's went to eval), and every recipe's
    prompt options the shared prompt section: an old spelling names the new one, on the command line and in a file."""
    from reprokit.recipes import focal_tokens, one_shot

    for old, new in (("--grpo.lr", "--train.lr"), ("--grpo.top_entropy_quantile", "--loss.focal_fraction"),
                     ("--grpo.val_n", "--eval.n"), ("--data.template", "--prompt.template")):
        with pytest.raises(SystemExit, match=new.replace(".", r"\.")):
            cli.parse(one_shot.RECIPE, ["--preset", "cpu", old, "1"])
    config = tmp_path / "old.yaml"
    config.write_text("grpo:\n  lr: 1.0e-5\n  group_size: 4\ndata:\n  template: none\n")
    with pytest.raises(SystemExit, match="grpo: lr -> train: lr; grpo: group_size -> rollout: group_size; data: template -> prompt: template"):
        cli.parse(focal_tokens.RECIPE, ["--config", str(config)])


def test_names_of_your_own_plug_in_like_the_worlds(tmp_path, monkeypatch):
    from reprokit.data import DataError, load_benchmark

    (tmp_path / "my_generated.py").write_text(
        "from reprokit.data import Example\n"
        "def problems(name, limit):\n"
        "    rows = [Example(f'q{i}', f'{i}+{i}', str(2 * i)) for i in range(5)]\n"
        "    return rows[:limit] if limit else rows\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    direct = load_benchmark("my_generated:problems", limit=3)  # an import path works where a name does
    assert [p.answer for p in direct] == ["0", "2", "4"]
    monkeypatch.setitem(registry.ENTRIES["benchmark"], "my_bench", "my_generated:problems")
    assert [p.question for p in load_benchmark("my_bench")] == [f"{i}+{i}" for i in range(5)]
    with pytest.raises(DataError, match="my_bench.*world_test"):
        load_benchmark("no_such_bench")
