"""The course's shape: helpers import each other without circles, notebooks 01-04 never import what only notebook
05 needs, the notebooks are committed clean, and docs/results-json.md names every field the notebooks write."""

from __future__ import annotations

import ast
import json
import re

import pytest

from helpers import bench, store

NOTEBOOKS = store.REPO_ROOT / "notebooks"
HELPERS = store.REPO_ROOT / "helpers"


def _module_name(path) -> str:
    return ".".join(path.relative_to(store.REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")


def _helper_imports(source: str) -> set[str]:
    """Every ``helpers`` module ``source`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("helpers"):
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("helpers")}
    modules = {_module_name(p) for p in HELPERS.rglob("*.py")}
    return {name for name in found if name in modules and name != "helpers"}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _helper_imports(p.read_text()) for p in HELPERS.rglob("*.py")}


def _notebook_code(path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def test_no_import_circle_among_helpers():
    graph = _graph()

    def visit(module, path):
        for target in graph.get(module, ()):
            assert target not in path, f"import circle: {' -> '.join([*path, target])}"
            visit(target, [*path, target])

    for module in graph:
        visit(module, [module])


def test_the_class_path_never_imports_the_deep_dives():
    graph, reached = _graph(), set()
    for notebook in sorted(NOTEBOOKS.glob("0[1-4]_*.ipynb")):
        todo = list(_helper_imports(_notebook_code(notebook)))
        while todo:
            module = todo.pop()
            if module not in reached:
                reached.add(module)
                todo += graph.get(module, ())
    assert reached and not {m for m in reached if m.startswith("helpers.deep")}, sorted(reached)
    assert not any(m.startswith("helpers.deep") for m in _graph()["helpers.run_series"])


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS.glob("*.ipynb"):
        cells = json.loads(path.read_text())["cells"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in cells if c["cell_type"] == "code"), path


def test_notebook_04_is_class_sized():
    cells = json.loads((NOTEBOOKS / "04_evaluate.ipynb").read_text())["cells"]
    words = sum(len(re.findall(r"\S+", "".join(c["source"]))) for c in cells if c["cell_type"] == "markdown")
    assert len(cells) <= 35 and words <= 2000, (len(cells), words)


def _documented() -> set[str]:
    table = (store.REPO_ROOT / "docs" / "results-json.md").read_text()
    return {name for row in re.findall(r"^\| `([^`]+)`", table, re.M) for name in [row]}


def test_every_field_of_results_json_is_documented(tiny, tiny_processor):
    documented = _documented()
    tops = {d.split(".")[0] for d in documented}
    # the top-level keys notebooks 04 and 05 write: the dict notebook 04 starts with, and every results[...] = ...
    written = set()
    for name in ("04_evaluate", "05_deep_dives"):
        for node in ast.walk(ast.parse(_notebook_code(NOTEBOOKS / f"{name}.ipynb"))):
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and \
                    node.targets[0].id == "results" and isinstance(node.value, ast.Dict):
                written |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and \
                    getattr(node.value, "id", None) == "results" and isinstance(node.slice, ast.Constant):
                written.add(node.slice.value)
    assert {"created", "plan", "machine", "contenders", "quality", "recommendation", "deep_dives"} <= written
    assert written <= tops, f"undocumented in docs/results-json.md: {sorted(written - tops)}"
    # every key of a measured contender's record and of its figures
    import torch
    from transformers import AutoModelForImageTextToText

    prepared = {"text": bench.prepare_workloads(tiny_processor)["text"]}
    record: dict = {}
    with bench.measuring(record, lambda: AutoModelForImageTextToText.from_pretrained(
            tiny.source, dtype=torch.float32).eval()) as model:
        record.update(bench.measure(model, prepared, bench.plan("quick")))
    failed: dict = {}
    with bench.measuring(failed, lambda: 1 / 0):
        pass
    keys = {f"contenders.<c>.{k}" for k in {*record, *failed} if k != "workloads"}
    keys |= {f"contenders.<c>.workloads.<w>.{k}" for k in record["workloads"]["text"]}
    assert keys <= documented, f"undocumented in docs/results-json.md: {sorted(keys - documented)}"
    doc = (store.REPO_ROOT / "docs" / "results-json.md").read_text()
    for field in ("token_agreement", "kl_mean", "similarity", "repetition_rate", "text_accuracy", "<figure>_ci",
                  "<accuracy>_vs_baseline_ci", "baseline", "below_floor", "within_noise", "faster_but_unclear",
                  "faster_but_worse", "figures", *bench.plan().as_dict()):
        assert f"`{field}`" in doc, f"docs/results-json.md does not name {field}"


@pytest.mark.parametrize("path, limit", [("README.md", 150)])
def test_the_readme_is_read_in_five_minutes(path, limit):
    assert len((store.REPO_ROOT / path).read_text().splitlines()) <= limit
