"""How the package is laid out, measured: the import graph (cycles, arrows from the core into the worlds), each
module's first docstring line, and which files one GRPO training step runs through.

    python tools/code_map.py            # the import graph and docstrings
    python tools/code_map.py --step     # also trace one step of `one_shot` on a tiny model (about 20 s)
    python tools/code_map.py --sizes    # also class and function lengths, config widths, definitions only tests use

The core is every module of ``reprokit`` outside ``reprokit.worlds`` and ``reprokit.recipes``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "reprokit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (top level or inside functions)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(path, name, known) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), ignoring package -> own child edges."""
    def real(a: str, b: str) -> bool:
        return not (b.startswith(a + ".") or a.startswith(b + "."))

    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if not real(v, w):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def is_core(name: str) -> bool:
    return not name.startswith(("reprokit.worlds", "reprokit.recipes"))


def first_line(path: Path) -> str | None:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    return doc.strip().splitlines()[0] if doc else None


STEP_MARKERS = ("generate", "token_logprobs_and_entropy", "grpo_objective", "policy_loss")
"""The four things one GRPO step does: sample, score, the objective (policy_loss where there is no
grpo_objective) and, below, the optimizer step."""


def trace_step() -> dict:
    """Run `one_shot` on a tiny model for one step; record the package files on the way from the command line
    to the first optimizer step.

    ``spine``: the package files on the call stack at each of the step's four operations (the first call of
    sampling, scoring, the objective and the optimizer step): what a reader follows from the command line to
    ``opt.step()``. ``path``: every package file whose code runs from ``main()`` to the optimizer step (parsing,
    loading, data, the step itself); ``step``: those that run inside the training step; ``hops``: the distinct
    caller-file -> callee-file edges between package files from ``main()`` to the optimizer step.
    """
    import tempfile

    import torch

    from reprokit.recipes import one_shot

    spine: dict[str, None] = {}
    step_files: set[str] = set()
    path_files: set[str] = set()
    hops: set[tuple[str, str]] = set()
    state = {"in_step": False, "done": False, "marked": set()}
    pkg = str(PACKAGE)

    def rel(filename: str) -> str:
        return str(Path(filename).relative_to(ROOT))

    def stack_files(frame) -> list[str]:
        chain = []
        while frame is not None:
            if frame.f_code.co_filename.startswith(pkg):
                chain.append(rel(frame.f_code.co_filename))
            frame = frame.f_back
        return list(dict.fromkeys(reversed(chain)))

    def profiler(frame, event, arg):
        if state["done"] or event != "call":
            return
        code = frame.f_code
        in_pkg = code.co_filename.startswith(pkg)
        if code.co_name == "training_step" and in_pkg:
            state["in_step"] = True
        if code.co_name == "step" and "torch/optim" in code.co_filename and state["in_step"]:
            spine.update(dict.fromkeys(stack_files(frame)))
            state["done"] = True
            return
        if not in_pkg:
            return
        path_files.add(rel(code.co_filename))
        if state["in_step"]:
            step_files.add(rel(code.co_filename))
            if code.co_name in STEP_MARKERS and code.co_name not in state["marked"]:
                state["marked"].add(code.co_name)
                spine.update(dict.fromkeys(stack_files(frame)))
        caller = frame.f_back
        while caller is not None and not caller.f_code.co_filename.startswith(pkg):
            caller = caller.f_back
        if caller is not None and caller.f_code.co_filename != code.co_filename:
            hops.add((rel(caller.f_code.co_filename), rel(code.co_filename)))

    with tempfile.TemporaryDirectory() as tmp:
        argv = [
            "--preset", "cpu", "--model.name_or_path", "tiny:llama", "--data.examples", "pi1", "--prompt.template", "none",
            "--prompt.cot_suffix", "false", "--prompt.max_prompt_length", "1024", "--eval.benchmarks", "[]",
            "--rollout.reward", "math", "--rollout.max_new_tokens", "8", "--data.prompts_per_step", "2",
            "--max_steps", "1", "--run.val_every", "0", "--run.progress_bar", "false", "--run_dir", tmp,
        ]
        torch.set_num_threads(2)
        sys.setprofile(profiler)
        try:
            one_shot.main(argv)
        finally:
            sys.setprofile(None)
    return {"spine": list(spine), "path": sorted(path_files), "step": sorted(step_files), "hops": sorted(hops)}


def sizes(limit_function: int = 100, limit_fields: int = 16) -> dict:
    """Sizes a reader feels: LightningModule classes (lines), functions over ``limit_function`` lines, config
    dataclasses over ``limit_fields`` fields, and top-level definitions of the package that nothing outside tests
    uses (a name referenced by no other package file, recipe, benchmark or tool, and not by its own file)."""
    modules_ = modules()
    trees = {name: ast.parse(path.read_text()) for name, path in modules_.items()}
    lightning, long_functions, wide_configs, defined = [], [], [], {}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                if bases & {"L.LightningModule", "LightningModule", "pl.LightningModule"}:
                    lightning.append((f"{name}.{node.name}", node.end_lineno - node.lineno + 1))
                is_dataclass = any("dataclass" in ast.unparse(d) for d in node.decorator_list)
                field_count = sum(isinstance(b, ast.AnnAssign) for b in node.body)
                if is_dataclass and field_count > limit_fields:
                    wide_configs.append((f"{name}.{node.name}", field_count))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > limit_function:
                    long_functions.append((f"{name}:{node.name}", length))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("__"):
                defined[node.name] = name
    # Where each top-level name is used (read or called, as a name or an attribute; strings naming a
    # "module:function" count too; an import or an __all__ entry does not): the package, benchmarks and tools.
    used: dict[Path, set[str]] = {}
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py"), *(ROOT / "tools").rglob("*.py")]:
        if path == Path(__file__).resolve():
            continue
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and ":" in node.value:
                names.add(node.value.rpartition(":")[2].split(".")[0])
        used[path] = names
    unused = [f"{module}.{def_name}" for def_name, module in sorted(defined.items())
              if not any(def_name in names for names in used.values())]
    return {"lightning_modules": lightning, "long_functions": sorted(long_functions, key=lambda x: -x[1]),
            "wide_configs": wide_configs, "unused_outside_tests": unused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", action="store_true", help="also trace one training step")
    parser.add_argument("--sizes", action="store_true", help="also the sizes: LightningModule classes, long functions, wide configs, unused definitions")
    args = parser.parse_args()
    edges = graph()
    found = cycles(edges)
    into_worlds = sorted((a, b) for a, bs in edges.items() if is_core(a) for b in bs if b.startswith("reprokit.worlds"))
    print(f"modules: {len(edges)}")
    print(f"import cycles: {len(found)}")
    for comp in found:
        print("   ", " <-> ".join(comp))
    print(f"imports from the core into reprokit.worlds: {len(into_worlds)}")
    for a, b in into_worlds:
        print(f"    {a} -> {b}")
    missing = [name for name, path in modules().items() if not first_line(path)]
    print(f"modules without a docstring: {len(missing)} {missing}")
    if args.sizes:
        found_sizes = sizes()
        print("LightningModule classes (lines): " + ", ".join(f"{n} {k}" for n, k in found_sizes["lightning_modules"]))
        print(f"functions over 100 lines: {len(found_sizes['long_functions'])}")
        for n, k in found_sizes["long_functions"]:
            print(f"    {n} {k}")
        print(f"config dataclasses over 16 fields: {len(found_sizes['wide_configs'])}")
        for n, k in found_sizes["wide_configs"]:
            print(f"    {n} {k}")
        print(f"top-level definitions used by nothing outside tests: {len(found_sizes['unused_outside_tests'])}")
        for n in found_sizes["unused_outside_tests"]:
            print(f"    {n}")
    if args.step:
        result = trace_step()
        print(f"files to follow one step from the command line to the optimizer (on the stack at sampling, scoring, "
              f"the objective and the optimizer step): {len(result['spine'])}")
        for f in result["spine"]:
            print(f"    {f}")
        print(f"package files whose code runs from the command line to the optimizer step: {len(result['path'])}")
        for f in result["path"]:
            print(f"    {f}")
        print(f"  of which inside the training step: {len(result['step'])}")
        for f in result["step"]:
            print(f"    {f}")
        print(f"cross-file calls (distinct caller file -> callee file) up to the optimizer step: {len(result['hops'])}")
        for a, b in result["hops"]:
            print(f"    {a} -> {b}")


if __name__ == "__main__":
    main()
