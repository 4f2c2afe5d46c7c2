"""The packages import one way, downwards: schemas <- core <- pipelines, trainer <- jobs <- embedflow.

Read from the source (every import statement, module level or inside a function), so a
new upward import fails here before it makes a circle.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVEL = {"schemas": 0, "core": 1, "pipelines": 2, "trainer": 2, "jobs": 3, "embedflow": 4}


def _imports(path):
    """Top-level package names of ours that a module imports."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(LEVEL)


def _modules():
    for package in LEVEL:
        for dirpath, _, names in os.walk(os.path.join(REPO, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield package, os.path.relpath(os.path.join(dirpath, name), REPO)


@pytest.mark.parametrize("package, path", list(_modules()))
def test_no_module_imports_a_package_above_or_beside_it(package, path):
    wrong = {other for other in _imports(os.path.join(REPO, path))
             if other != package and LEVEL[other] >= LEVEL[package]}
    assert not wrong, f"{path} imports {sorted(wrong)}, which are not below {package}"


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from jobs import corpus\n    import embedflow.cli\n")
    assert _imports(str(module)) == {"jobs", "embedflow"}
