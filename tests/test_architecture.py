"""The layering of docs/ARCHITECTURE.md holds in the code, and the map names what is in the tree."""
import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API = os.path.join(ROOT, "python_api")

# Each package may import only from the packages listed for it (besides itself and outside code).
ALLOWED = {
    "infogain_kernels": set(),
    "infogain._runtime": {"infogain_kernels"},
    "infogain._device": set(),
    "infogain.stats": set(),
    "infogain.models": {"infogain_kernels", "infogain._device"},
    "infogain.tasks": {"infogain_kernels"},
    "infogain.samplers": {"infogain_kernels", "infogain._device", "infogain.stats", "infogain.models"},
    "infogain.eis": {"infogain_kernels"},
    "infogain.compat": {"infogain_kernels"},
    "infogain.evaluation": {"infogain_kernels", "infogain._runtime", "infogain._device", "infogain.stats",
                            "infogain.models", "infogain.tasks", "infogain.samplers", "infogain.eis"},
}


def modules():
    for base, package in ((ROOT, "infogain_kernels"), (API, "infogain")):
        for folder, _, files in os.walk(os.path.join(base, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                    yield dotted.removesuffix(".__init__"), path, name == "__init__.py"


def imported(dotted, path, is_package):
    """The absolute names of the modules ``path`` imports (relative imports resolved)."""
    tree = ast.parse(open(path).read())
    here = dotted.split(".") if is_package else dotted.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def layer_of(name):
    return max((layer for layer in ALLOWED if name == layer or name.startswith(layer + ".")), key=len, default=None)


@pytest.mark.parametrize("dotted,path,is_package", list(modules()), ids=lambda v: v if isinstance(v, str) else "")
def test_no_import_from_a_layer_above(dotted, path, is_package):
    own = layer_of(dotted)
    if own is None:   # the applications (infogain.apps, infogain.__main__) may import anything
        return
    for name in imported(dotted, path, is_package):
        other = layer_of(name)
        if name == "infogain.apps" or name.startswith("infogain.apps."):
            other = "infogain.apps"   # the applications sit above every layer
        elif other is None and name.startswith("infogain.") and name != "infogain.__version__":
            other = name   # a module of no known layer: a new one must be placed in ALLOWED
        if other is not None and other != own:
            assert other in ALLOWED.get(own, ()), f"{dotted} imports {name} ({other}), above its layer"


def test_the_architecture_map_names_every_module_and_only_existing_files():
    text = open(os.path.join(ROOT, "docs", "ARCHITECTURE.md")).read()
    named = set(re.findall(r"`([\w/]+\.(?:py|cpp|cu|h))`", text))
    for dotted, path, is_package in modules():
        name = os.path.basename(path)
        if name == "__init__.py" and os.path.basename(os.path.dirname(path)) in ("apps", "_runtime", "tasks",
                                                                                  "evaluation", "models", "samplers"):
            continue   # a package is named by its folder
        folder = os.path.basename(os.path.dirname(path))
        mentioned = name in named or f"{folder}/{name}" in named or f"`{folder}/`" in text
        assert mentioned or name == "__init__.py", f"docs/ARCHITECTURE.md does not place {path}"
    tree = [os.path.relpath(os.path.join(folder, name), ROOT) for top in ("csrc", "infogain_kernels", "python_api", "tests", "benches")
            for folder, _, files in os.walk(os.path.join(ROOT, top)) for name in files]
    for entry in named:
        assert any(path == entry or path.endswith("/" + entry) for path in tree), \
            f"docs/ARCHITECTURE.md names a missing {entry}"
