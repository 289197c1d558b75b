"""The shape of the house, enforced: module size, no import cycle, and the walls between rooms.

Every module under ``mtrl_fair/``, ``agents/`` and ``envs/`` is parsed (not imported), and every
import statement counts, those inside functions and under ``TYPE_CHECKING`` included: a lazy import
is still a dependency. The rooms and what each may import are the table of the README's layout
section; a change to the walls is a change to ``ALLOWED`` below, made on purpose.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 500

# Installed name of each source folder (setuptools package-dir mapping in pyproject.toml).
SOURCE_FOLDERS = {"mtrl_fair": ROOT / "mtrl_fair", "mtrl_fair.agents": ROOT / "agents", "mtrl_fair.envs": ROOT / "envs"}

# Rooms, by module-name prefix (the longest matching prefix wins).
ROOMS = {
    "mtrl_fair.combiners": "combiners",
    "mtrl_fair.jacobian": "gradients",
    "mtrl_fair.gram": "gradients",
    "mtrl_fair.combined_grad": "gradients",
    "mtrl_fair.layer_jacobian": "gradients",
    "mtrl_fair.envs": "envs",
    "mtrl_fair.agents": "agents",
    "mtrl_fair.sb3": "sb3",
    "mtrl_fair.report": "report",
    "mtrl_fair": "top",  # the CLI, training loop, run directory, configs
}
# What each room may import from the package (itself included). The walls: combiners know nothing
# of RL, envs nothing of agents, agents nothing of the CLI, SB3 or reports, reports nothing of agents.
ALLOWED = {
    "combiners": {"combiners"},
    "gradients": {"gradients", "combiners"},
    "envs": {"envs"},
    "agents": {"agents", "gradients", "combiners", "envs"},
    "sb3": {"sb3", "agents", "gradients", "combiners", "envs"},
    "report": {"report"},
    "top": {"top", "report", "sb3", "agents", "gradients", "combiners", "envs"},
}
# Third-party packages a room must not import.
FORBIDDEN_THIRD_PARTY = {
    "combiners": {"gymnasium", "metaworld", "mujoco", "stable_baselines3", "hydra", "omegaconf"},
    "gradients": {"gymnasium", "metaworld", "mujoco", "stable_baselines3", "hydra", "omegaconf"},
    "envs": {"torch", "stable_baselines3", "hydra", "omegaconf"},
    "agents": {"stable_baselines3", "hydra", "omegaconf", "matplotlib"},
    "report": {"torch", "gymnasium", "metaworld", "mujoco", "stable_baselines3"},
}


def module_files(folders: Mapping[str, Path]) -> dict[str, Path]:
    """Module name → file, for every ``.py`` file under the source folders."""
    modules = {}
    for package, folder in folders.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            # A nested source folder mapped elsewhere (never the case today) would be listed twice.
            modules.setdefault(name, path)
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_names(name: str, path: Path, modules: Iterable[str] = ()) -> set[str]:
    """Every absolute module name that ``path`` (module ``name``) imports, anywhere in the file.

    ``from a.b import c`` counts as ``a.b.c`` when that is one of ``modules``, as ``a.b`` otherwise
    (the names it takes are then attributes of ``a.b``). Parent packages, which Python imports on
    the way, are not counted, or every submodule would be in a cycle with its package.
    """
    known = set(modules)
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if _is_package(path) else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, node.module] if node.module else base_parts)
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return found


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """Module → the package modules it imports."""
    return {
        name: {target for target in imported_names(name, path, modules) if target in modules and target != name}
        for name, path in modules.items()
    }


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def room_of(module: str) -> str:
    best = max((prefix for prefix in ROOMS if module == prefix or module.startswith(prefix + ".")), key=len)
    return ROOMS[best]


def wall_violations(graph: Mapping[str, Iterable[str]], modules: Mapping[str, Path]) -> list[str]:
    problems = []
    for source, targets in sorted(graph.items()):
        room = room_of(source)
        for target in sorted(targets):
            if room_of(target) not in ALLOWED[room]:
                problems.append(f"{source} ({room}) imports {target} ({room_of(target)})")
        forbidden = FORBIDDEN_THIRD_PARTY.get(room, set())
        for name in sorted(imported_names(source, modules[source])):
            if name.split(".")[0] in forbidden:
                problems.append(f"{source} ({room}) imports {name}")
    return problems


def long_modules(modules: Mapping[str, Path], limit: int = MAX_LINES) -> list[str]:
    counts = {name: len(path.read_text().splitlines()) for name, path in modules.items()}
    return [f"{name}: {count} lines" for name, count in sorted(counts.items()) if count > limit]


MODULES = module_files(SOURCE_FOLDERS)
GRAPH = import_graph(MODULES)


def test_every_source_folder_is_seen() -> None:
    assert "mtrl_fair.agents.mtsac" in MODULES
    assert "mtrl_fair.envs.evaluation" in MODULES
    assert "mtrl_fair.combiners.fairgrad" in MODULES
    assert GRAPH["mtrl_fair.agents.sac_update"] >= {"mtrl_fair.agents.config", "mtrl_fair.jacobian"}


def test_no_module_is_over_the_line_limit() -> None:
    assert long_modules(MODULES) == [], "split the module: one concept per module, at most 500 lines"


def test_the_package_has_no_import_cycle() -> None:
    assert find_cycle(GRAPH) is None


def test_no_room_imports_through_its_walls() -> None:
    assert wall_violations(GRAPH, MODULES) == []


# The checks themselves, on a made-up package: each must catch what it is for.


def write_package(root: Path, files: Mapping[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files({"mtrl_fair": root})


def test_a_cycle_through_a_lazy_relative_import_is_found(tmp_path: Path) -> None:
    modules = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "combiners/__init__.py": "from mtrl_fair.combiners.registry import make\n",
            "combiners/registry.py": "from mtrl_fair.combiners.wrap import Wrap\n",
            "combiners/wrap.py": "def build():\n    from .registry import make  # lazy\n",
        },
    )
    cycle = find_cycle(import_graph(modules))
    assert cycle is not None
    assert set(cycle) == {"mtrl_fair.combiners.registry", "mtrl_fair.combiners.wrap"}


def test_a_one_way_graph_has_no_cycle(tmp_path: Path) -> None:
    modules = write_package(
        tmp_path,
        {"__init__.py": "", "a.py": "from mtrl_fair import b\n", "b.py": "import numpy\n"},
    )
    assert find_cycle(import_graph(modules)) is None


def test_a_wall_breach_is_found(tmp_path: Path) -> None:
    modules = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "cli.py": "",
            "combiners/__init__.py": "",
            "combiners/fancy.py": "import gymnasium\n\ndef f():\n    from mtrl_fair import cli\n",
        },
    )
    problems = wall_violations(import_graph(modules), modules)
    assert problems == [
        "mtrl_fair.combiners.fancy (combiners) imports mtrl_fair.cli (top)",
        "mtrl_fair.combiners.fancy (combiners) imports gymnasium",
    ]


def test_a_long_module_is_found(tmp_path: Path) -> None:
    modules = write_package(tmp_path, {"__init__.py": "", "big.py": "x = 1\n" * 501, "ok.py": "x = 1\n" * 500})
    assert long_modules(modules) == ["mtrl_fair.big: 501 lines"]


@pytest.mark.parametrize(
    ("module", "room"),
    [
        ("mtrl_fair.combiners.fairgrad", "combiners"),
        ("mtrl_fair.jacobian", "gradients"),
        ("mtrl_fair.agents", "agents"),
        ("mtrl_fair.cli", "top"),
        ("mtrl_fair", "top"),
    ],
)
def test_rooms_by_longest_prefix(module: str, room: str) -> None:
    assert room_of(module) == room
