"""The architecture's rules, checked statically (``ast`` and plain text; nothing of the project is imported).

- no import cycle among the project's modules (``cci_core``, ``flows``, ``tasks``, ``deployments``);
- ``cci_core`` never imports Prefect or the layers above it, and the layers point one way
  (``deployments -> flows -> tasks -> cci_core``, :data:`LAYERS`);
- a ``cci_core`` module imports only from its own stage package or a lower one (``STAGES``);
- no ``cci_core`` module over ``MAX_LINES`` lines, and no ``plan["...`` dictionary reads in ``cci_core``.

Every import counts, the ones inside functions included (a lazy import is still a dependency).
``docs/architecture.md`` explains the rules; the ``*_catches_*`` tests show that each check can fail.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cci_core", "flows", "tasks", "deployments")
# Stage packages of cci_core, low to high: a module may import from its own package or a lower one.
STAGES = ("common", "store", "ingest", "cluster", "refine", "generate", "features", "palette", "predict", "refresh")
FORBIDDEN_IN_CORE = ("prefect", "flows", "tasks", "deployments")
# The top-level packages, low to high: each imports only from itself or a lower one.
LAYERS = ("cci_core", "tasks", "flows", "deployments")
MAX_LINES = 450
PLAN_READ = re.compile(r"""plan\[["']""")  # the text `plan["` (or `plan['`, inside f-strings) anywhere in a line


# --- the project's modules and their imports -------------------------------------------------------------------

def module_files(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the given top-level packages."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_package(name: str, files: dict[str, Path]) -> bool:
    return files[name].name == "__init__.py"


def _resolve_relative(module: str, level: int, target: str | None, files: dict[str, Path]) -> str:
    base = module.split(".") if _is_package(module, files) else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def _known(name: str, files: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a project module, or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in files:
            return candidate
    return None


def imports_of(module: str, source: str, files: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported name) for every import in ``source``, resolved to a project module where it is one.

    ``from pkg import mod`` counts as an import of ``pkg.mod`` when that is a module; names outside the
    project are kept as written (``prefect.flow``) so the checks can see them.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, _known(alias.name, files) or alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, node.level, node.module, files) if node.level else node.module
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in files:
                    found.append((node.lineno, full))
                else:
                    found.append((node.lineno, _known(base, files) or base))
    return sorted(set(found))


@functools.lru_cache(maxsize=None)
def project() -> tuple[dict[str, Path], dict[str, list[tuple[int, str]]]]:
    """The project's module files and each module's imports (parsed once per test session)."""
    files = module_files(ROOT)
    return files, {name: imports_of(name, path.read_text(), files) for name, path in files.items()}


def import_graph(files: dict[str, Path], imports: dict[str, list[tuple[int, str]]]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (a module importing itself is left out)."""
    return {name: {target for _, target in imports[name] if target in files and target != name} for name in files}


# --- the checks, each a plain function over data so that the tests below can feed it a bad case ----------------

def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; only those of more than one module."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return sorted(found)


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, as a path that ends where it starts."""
    members, start = set(component), component[0]
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child == start:
                    path = [node]
                    while previous[path[-1]] is not None:
                        path.append(previous[path[-1]])
                    return path[::-1] + [start]
                if child in members and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def cycle_problems(graph: dict[str, set[str]]) -> list[str]:
    return [f"import cycle {' -> '.join(one_cycle(graph, c))} (component: {', '.join(c)})" for c in strongly_connected(graph)]


def stage_of(module: str) -> str | None:
    """The stage package of a ``cci_core`` module (``cci_core.cluster.pca`` -> ``cluster``), or None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "cci_core" and len(parts) > 1 and parts[1] in STAGES else None


def forbidden_problems(module: str, imports: list[tuple[int, str]]) -> list[str]:
    """A cci_core module's imports of Prefect or of the layers above cci_core."""
    def forbidden(top):
        return top in FORBIDDEN_IN_CORE or top.startswith("prefect_")  # prefect_dask and the like are Prefect too
    return [f"{module}:{line} imports {target}" for line, target in imports if forbidden(target.split(".")[0])]


def layering_problems(module: str, imports: list[tuple[int, str]]) -> list[str]:
    """A cci_core module's imports of a module in a higher stage package than its own."""
    own = stage_of(module)
    problems = []
    for line, target in imports:
        theirs = stage_of(target)
        if own and theirs and STAGES.index(theirs) > STAGES.index(own):
            problems.append(f"{module}:{line} imports {target}: stage {own!r} (#{STAGES.index(own)}) may not "
                            f"import the higher stage {theirs!r} (#{STAGES.index(theirs)})")
    return problems


def layer_problems(module: str, imports: list[tuple[int, str]]) -> list[str]:
    """A project module's imports of a higher top-level package (tasks importing flows, ...)."""
    own = LAYERS.index(module.split(".")[0])
    return [f"{module}:{line} imports {target}: {LAYERS[own]!r} may not import the higher layer {target.split('.')[0]!r}"
            for line, target in imports if target.split(".")[0] in LAYERS[own + 1:]]


def line_count(text: str) -> int:
    """Lines as ``wc -l`` counts them (newline characters)."""
    return text.count("\n")


def plan_read_lines(text: str) -> list[int]:
    return [number for number, line in enumerate(text.splitlines(), 1) if PLAN_READ.search(line)]


def core_modules() -> dict[str, Path]:
    files, _ = project()
    return {name: path for name, path in files.items() if name.split(".")[0] == "cci_core"}


def _report(problems: list[str], what: str) -> str:
    return f"{len(problems)} {what}:\n  " + "\n  ".join(problems)


# --- the rules on the project ----------------------------------------------------------------------------------

def test_the_project_is_parsed():
    files, imports = project()
    assert {"cci_core.store.store", "flows.cli", "tasks.cluster", "deployments.deploy"} <= set(files)
    assert sum(len(found) for found in imports.values()) > 100


def test_no_import_cycle():
    files, imports = project()
    problems = cycle_problems(import_graph(files, imports))
    assert not problems, _report(problems, "import cycles among the project's modules")


def test_core_never_imports_prefect_or_the_layers_above():
    _, imports = project()
    problems = [p for name in core_modules() for p in forbidden_problems(name, imports[name])]
    assert not problems, _report(problems, "cci_core imports of prefect/flows/tasks/deployments")


def test_layers_point_one_way():
    _, imports = project()
    problems = [p for name, found in imports.items() for p in layer_problems(name, found)]
    assert not problems, _report(problems, "imports of a higher layer (order: " + " < ".join(LAYERS) + ")")


def test_every_core_module_is_in_a_stage_package():
    loose = [name for name in core_modules() if name != "cci_core" and stage_of(name) is None]
    assert not loose, f"cci_core modules outside the stage packages {STAGES}: {loose} (add the package to STAGES)"


def test_core_imports_only_its_own_or_lower_stages():
    _, imports = project()
    problems = [p for name in core_modules() for p in layering_problems(name, imports[name])]
    assert not problems, _report(problems, "imports of a higher stage (order: " + " < ".join(STAGES) + ")")


def test_core_modules_are_small():
    problems = [f"{path.relative_to(ROOT)}: {count} lines" for path in core_modules().values()
                if (count := line_count(path.read_text())) > MAX_LINES]
    assert not problems, _report(problems, f"cci_core modules over {MAX_LINES} lines")


def test_no_plan_dictionary_reads_in_core():
    problems = [f"{path.relative_to(ROOT)}:{lines[0]} ({len(lines)} reads, at lines {', '.join(map(str, lines))})"
                for path in core_modules().values() if (lines := plan_read_lines(path.read_text()))]
    total = sum(len(plan_read_lines(path.read_text())) for path in core_modules().values())
    assert not problems, _report(problems, f'files with plan["..."] reads in cci_core ({total} reads; use the typed plan)')


# --- each check catches a constructed bad case -----------------------------------------------------------------

def test_cycle_finder_catches_a_cycle_and_passes_a_tree():
    with_cycle = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert strongly_connected(with_cycle) == [["a", "b", "c"]]
    assert one_cycle(with_cycle, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert cycle_problems(with_cycle) == ["import cycle a -> b -> c -> a (component: a, b, c)"]
    two = {"x": {"y"}, "y": {"x"}, "p": {"q"}, "q": {"r"}, "r": {"p"}}
    assert strongly_connected(two) == [["p", "q", "r"], ["x", "y"]]
    assert strongly_connected({"a": {"b", "c"}, "b": {"c"}, "c": set(), "e": {"e"}}) == []


def test_import_resolution_sees_submodules_relative_and_function_level_imports(tmp_path):
    for name in ("pkg/__init__.py", "pkg/low.py", "pkg/sub/__init__.py", "pkg/sub/mod.py", "other/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    files = module_files(tmp_path, ("pkg", "other"))
    assert set(files) == {"pkg", "pkg.low", "pkg.sub", "pkg.sub.mod", "other"}
    source = ("from pkg.sub import mod, helper\nimport pkg.low as low\nfrom . import mod as m2\nfrom .. import low\n"
              "def f():\n    import prefect.flows\n    from other import thing\n")
    assert imports_of("pkg.sub.mod", source, files) == [
        (1, "pkg.sub"), (1, "pkg.sub.mod"), (2, "pkg.low"), (3, "pkg.sub.mod"), (4, "pkg.low"),
        (6, "prefect.flows"), (7, "other")]
    graph = import_graph(files, {name: [] for name in files} | {"pkg.low": [(1, "pkg.sub.mod")],
                                                                 "pkg.sub.mod": imports_of("pkg.sub.mod", source, files)})
    assert cycle_problems(graph)[0].startswith("import cycle pkg.low -> pkg.sub.mod -> pkg.low")


def test_forbidden_and_layering_checks_catch_bad_imports():
    bad = [(3, "prefect"), (4, "flows.cli"), (5, "tasks.common"), (6, "numpy"), (7, "cci_core.store.runs")]
    assert forbidden_problems("cci_core.cluster.pca", bad) == [
        "cci_core.cluster.pca:3 imports prefect", "cci_core.cluster.pca:4 imports flows.cli",
        "cci_core.cluster.pca:5 imports tasks.common"]
    assert forbidden_problems("cci_core.cluster.pca", [(1, "prefect_dask")]) == ["cci_core.cluster.pca:1 imports prefect_dask"]
    assert forbidden_problems("cci_core.cluster.pca", [(1, "prefectural"), (2, "taskset")]) == []
    upward = [(9, "cci_core.refine.refine"), (10, "cci_core.cluster.kmeans"), (11, "cci_core.common.device")]
    assert layering_problems("cci_core.cluster.cluster_run", upward) == [
        "cci_core.cluster.cluster_run:9 imports cci_core.refine.refine: stage 'cluster' (#3) may not import "
        "the higher stage 'refine' (#4)"]
    assert layering_problems("cci_core.predict.assign", upward) == []
    assert stage_of("cci_core.cluster_run") is None and stage_of("flows.cli") is None
    assert layer_problems("tasks.cluster", [(2, "flows.runtime"), (3, "cci_core.store.runs"), (4, "tasks.common")]) == [
        "tasks.cluster:2 imports flows.runtime: 'tasks' may not import the higher layer 'flows'"]
    assert layer_problems("flows.cli", [(1, "deployments.deploy"), (2, "flows.cluster")]) != []
    assert layer_problems("deployments.deploy", [(1, "flows.pipeline"), (2, "tasks.common")]) == []


def test_size_and_plan_read_checks_catch_bad_text():
    assert line_count("x\n" * (MAX_LINES + 1)) == MAX_LINES + 1
    assert line_count("") == 0 and line_count("one line, no newline") == 0
    text = 'a = 1\nk = plan["k"]\nseed = run_plan.seed\nd = f"{plan[\'device\']}"\nx = planet["y"]\ny = run_plan["y"]\n'
    assert plan_read_lines(text) == [2, 4, 6]
