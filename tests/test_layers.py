"""The package's layers: a module may import its own layer and the ones below it, never one above.

Every import counts, at module level and inside functions alike (an import moved into a function still
couples the two modules; it only hides a cycle until run time). Modules of one layer may import each other,
but no two top-level modules may import each other, directly or through others.

LAYERS is the one statement of the layering; docs/architecture.md shows the same table, checked below.
A new top-level module or subpackage goes in the row of the lowest layer it needs to import from, or in a
new row; until it is listed the test fails and says so.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "diffaug"

# Bottom to top: diffaug's top-level modules and subpackages, by layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("hardware", "registry", "progress", "tracking"),  # no diffaug imports: the machine, the name registry,
    # progress bars, W&B runs and artifacts
    ("data", "diffusion", "nets"),  # images and labels; noise processes, samplers, losses; networks
    ("config",),  # typed schema, loading and validation against the registries
    ("checkpoint", "augset", "latents"),  # file formats: what a run writes; the augmentation-set format (no
    # networks); the latent cache of a data set encoded by a frozen autoencoder
    ("build", "inference", "convert"),  # config -> components; a checkpoint -> a denoiser for inference;
    # public checkpoints -> diffaug's model.safetensors
    ("sampling",),  # generating images; export runs that write augmentation sets
    ("training", "evaluation", "cluster"),  # the LightningModule and fit; metrics; SLURM scripts
    ("cli", "__main__"),  # the command line
)


@dataclass(frozen=True)
class Import:
    """``source`` (a file relative to the repository) imports ``target`` (a dotted module) at ``line``."""

    source: str
    importer: str
    target: str
    line: int

    def where(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


# ---------------------------------------------------------------- reading the imports


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str, root: Path) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, root: Path) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: from the importer's package, one level up per extra dot
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    # "from diffaug.x import y" imports the submodule diffaug.x.y when there is one, else names of diffaug.x.
    targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}", root) else base for a in node.names]
    return list(dict.fromkeys(targets))


def package_imports(root: Path, package: str = PACKAGE) -> list[Import]:
    """Every import of a ``package`` module by a module of ``package`` under ``root``, at any depth."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        importer = module_name(path, root)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(node, importer, path.name == "__init__.py", root):
                if target == package or target.startswith(package + "."):
                    found.append(Import(str(path.relative_to(root)), importer, target, node.lineno))
    return found


def top_level(module: str) -> str:
    """``diffaug.training.run`` -> ``training``; the root package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def top_level_modules(root: Path, package: str = PACKAGE) -> set[str]:
    base = root / package
    files = {p.stem for p in base.glob("*.py") if p.name != "__init__.py"}
    packages = {p.name for p in base.iterdir() if (p / "__init__.py").is_file()}
    return files | packages


# ---------------------------------------------------------------- the checks


def _table_hint() -> str:
    return "LAYERS in tests/test_layers.py (and the layer table in docs/architecture.md)"


def layer_violations(imports: list[Import], modules: set[str], layers=LAYERS) -> list[str]:
    """One line per import from a lower layer into a higher one, per import of the root package, and per
    top-level module that is in no layer (or layer entry that is no module)."""
    rank = {name: i for i, row in enumerate(layers) for name in row}
    problems = [f"{PACKAGE}.{name} is in no layer: add {name!r} to {_table_hint()}"
                for name in sorted(modules - set(rank))]
    problems += [f"{_table_hint()} names {name!r}, which is no module of {PACKAGE}: remove it"
                 for name in sorted(set(rank) - modules)]
    for imp in imports:
        low, high = top_level(imp.importer), top_level(imp.target)
        if low == high:
            continue
        if not low or not high:
            problems.append(f"{imp.where()}: the root package {PACKAGE}/__init__.py runs before every "
                            "module, so it imports none of them and none imports names from it; import the "
                            "submodule")
        elif low in rank and high in rank and rank[high] > rank[low]:
            below, above = ", ".join(layers[rank[low]]), ", ".join(layers[rank[high]])
            problems.append(f"{imp.where()}: {low} (layer {rank[low]}: {below}) may not import {high}, a "
                            f"higher layer ({rank[high]}: {above})")
    return problems


def import_cycle(imports: list[Import]) -> list[Import] | None:
    """A cycle between top-level modules, as the imports that close it, or None."""
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        low, high = top_level(imp.importer), top_level(imp.target)
        if low and high and low != high:
            edges.setdefault(low, {}).setdefault(high, imp)
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[Import] | None:
        if node in path:
            loop = path[path.index(node):] + [node]
            return [edges[a][b] for a, b in zip(loop, loop[1:])]
        if node in done:
            return None
        for nxt in sorted(edges.get(node, {})):
            cycle = visit(nxt, path + [node])
            if cycle:
                return cycle
        done.add(node)
        return None

    for start in sorted(edges):
        cycle = visit(start, [])
        if cycle:
            return cycle
    return None


def _describe(cycle: list[Import]) -> str:
    names = [top_level(cycle[0].importer)] + [top_level(imp.target) for imp in cycle]
    return " -> ".join(names) + ": " + "; ".join(imp.where() for imp in cycle)


# ---------------------------------------------------------------- the package as it is


def test_no_import_reaches_a_higher_layer():
    imports = package_imports(REPO)
    assert len(imports) > 100  # the walk found the package's imports, function-level ones included
    problems = layer_violations(imports, top_level_modules(REPO))
    assert not problems, "imports against the layers:\n" + "\n".join(problems)


def test_no_import_cycle_between_top_level_modules():
    cycle = import_cycle(package_imports(REPO))
    assert cycle is None, f"import cycle {_describe(cycle)}"


def test_architecture_note_shows_the_same_layers():
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [tuple(re.findall(r"`([\w.]+)`", line.split("|")[2])) for line in section.splitlines()
            if re.match(r"\|\s*\d+\s*\|", line)]
    assert rows[::-1] == list(LAYERS), (
        "docs/architecture.md's layer table (top row first) differs from LAYERS in tests/test_layers.py")


# ---------------------------------------------------------------- the checks catch what they should


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# A miniature package with the faults this test exists for: checkpoint importing training (a higher layer)
# inside a function, as the LoRA merge once did, and training importing checkpoint back (a relative import):
# a cycle; build and inference, one layer, importing each other: a cycle the layers alone allow.
PLANTED = {
    "diffaug/__init__.py": "",
    "diffaug/checkpoint.py": "import torch\n\n\ndef read():\n    from diffaug.training.lora import merge\n",
    "diffaug/build.py": "from diffaug import checkpoint\n\n\ndef load():\n    import diffaug.inference\n",
    "diffaug/inference.py": "from .build import load\n",
    "diffaug/training/__init__.py": "",
    "diffaug/training/lora.py": "from ..checkpoint import read\nmerge = None\n",
}


def test_a_function_level_import_into_a_higher_layer_is_named(tmp_path):
    root = _tree(tmp_path, PLANTED)
    imports = package_imports(root)
    assert {(i.importer, i.target) for i in imports} == {
        ("diffaug.checkpoint", "diffaug.training.lora"), ("diffaug.build", "diffaug.checkpoint"),
        ("diffaug.build", "diffaug.inference"), ("diffaug.inference", "diffaug.build"),
        ("diffaug.training.lora", "diffaug.checkpoint"),
    }
    layers = (("checkpoint",), ("build", "inference"), ("training",))
    problems = layer_violations(imports, top_level_modules(root), layers)
    assert problems == [
        "diffaug/checkpoint.py:5 imports diffaug.training.lora: checkpoint (layer 0: checkpoint) may not "
        "import training, a higher layer (2: training)"
    ]


def test_cycles_are_found_with_the_imports_that_close_them(tmp_path):
    cycle = import_cycle(package_imports(_tree(tmp_path / "a", PLANTED)))
    assert cycle is not None and _describe(cycle) == (
        "checkpoint -> training -> checkpoint: diffaug/checkpoint.py:5 imports diffaug.training.lora; "
        "diffaug/training/lora.py:1 imports diffaug.checkpoint")
    # Without it, the cycle inside one layer (which the layer check alone allows) is still found.
    one_layer = {**PLANTED, "diffaug/training/lora.py": "merge = None\n"}
    cycle = import_cycle(package_imports(_tree(tmp_path / "b", one_layer)))
    assert cycle is not None and _describe(cycle) == (
        "build -> inference -> build: diffaug/build.py:5 imports diffaug.inference; "
        "diffaug/inference.py:1 imports diffaug.build")
    acyclic = {**one_layer, "diffaug/inference.py": "from diffaug.checkpoint import read\n"}
    assert import_cycle(package_imports(_tree(tmp_path / "c", acyclic))) is None


def test_a_module_missing_from_the_table_says_where_to_add_it(tmp_path):
    root = _tree(tmp_path, {**PLANTED, "diffaug/augset/__init__.py": "from diffaug.checkpoint import read\n"})
    problems = layer_violations(package_imports(root), top_level_modules(root),
                                (("checkpoint",), ("build", "inference"), ("training", "gone")))
    assert problems[:2] == [
        "diffaug.augset is in no layer: add 'augset' to LAYERS in tests/test_layers.py (and the layer "
        "table in docs/architecture.md)",
        "LAYERS in tests/test_layers.py (and the layer table in docs/architecture.md) names 'gone', which "
        "is no module of diffaug: remove it",
    ]


@pytest.mark.parametrize("text", ["from diffaug import registry_name\n", "import diffaug\n"])
def test_imports_of_the_root_package_are_refused(tmp_path, text):
    root = _tree(tmp_path, {**PLANTED, "diffaug/inference.py": text})
    problems = layer_violations(package_imports(root), top_level_modules(root),
                                (("checkpoint",), ("build", "inference"), ("training",)))
    assert len(problems) == 2 and all("the root package diffaug/__init__.py" in p for p in problems[1:])
    assert problems[1].startswith("diffaug/inference.py:1 imports diffaug:")
