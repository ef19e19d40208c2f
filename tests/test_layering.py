"""Import layering (issue 12): a plugin is one folder, the runtime reaches plugins only through discovery.

* ``plugins/<name>/`` imports, of declab, only the SDK (``declab.integrations.sdk``), the shared family modules
  (``declab.plugins.shared``) and its own package;
* ``plugins/shared/`` imports only the SDK and itself;
* ``integrations/`` imports no plugin package (discovery reads ``declab.plugins.__path__`` and entry points);
* ``patches/`` imports no plugin;
* nothing in ``integrations/``, ``patches/``, ``pyproject.toml`` or ``setup.py`` names a plugin.
Imports are read from the source (every ``import`` statement, also inside functions), not from a running process.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from helpers import text_outside_identifiers

from declab.integrations import registry

pytestmark = pytest.mark.core

REPO = Path(__file__).resolve().parent.parent
SDK = "declab.integrations.sdk"
SHARED = "declab.plugins.shared"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every declab import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: use absolute declab imports")
            # `from declab.plugins import x` imports the sub-package x.
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, m) for line, m in out if m.startswith("declab.") or m == "declab"]


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _py_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _plugin_folders() -> list[Path]:
    return [p for p in sorted((REPO / "plugins").iterdir()) if (p / "__init__.py").exists() and p.name != "shared"]


def test_plugins_import_only_the_sdk_shared_modules_and_themselves():
    bad = []
    for folder in _plugin_folders():
        own = f"declab.plugins.{folder.name}"
        for path in folder.rglob("*.py"):
            for line, module in _imports(path):
                if not (_inside(module, SDK) or _inside(module, SHARED) or _inside(module, own)):
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not bad, "plugins may import only the SDK, plugins.shared and their own package:\n" + "\n".join(bad)


def test_shared_family_modules_import_only_the_sdk():
    bad = [f"{p.relative_to(REPO)}:{line} imports {m}" for p in (REPO / "plugins" / "shared").rglob("*.py")
           for line, m in _imports(p) if not (_inside(m, SDK) or _inside(m, SHARED))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder", ["integrations", "patches"])
def test_runtime_and_patches_import_no_plugin(folder):
    bad = [f"{p.relative_to(REPO)}:{line} imports {m}" for p in _py_files(folder) for line, m in _imports(p)
           if _inside(m, "declab.plugins") and m != "declab.plugins"]
    assert not bad, f"{folder}/ reaches plugins only through discovery:\n" + "\n".join(bad)


def test_shared_code_names_no_plugin():
    names = set(registry.all_specs()) | {p.rsplit(".", 1)[-1] for p in registry.plugin_packages()}
    pattern = re.compile(r"(?<![\w-])(" + "|".join(sorted(map(re.escape, names))) + r")(?![\w-])")
    files = _py_files("integrations") + _py_files("patches") + [REPO / "pyproject.toml", REPO / "setup.py"]
    bad = []
    for path in files:
        for lineno, text in text_outside_identifiers(path):
            for m in pattern.finditer(text):
                bad.append(f"{path.relative_to(REPO)}:{lineno}: {m.group(0)!r}: {text.strip()[:100]}")
    assert not bad, "shared code names plugins (declare it in the plugin's spec instead):\n" + "\n".join(bad)


def test_every_plugin_folder_is_discovered():
    found = set(registry.plugin_packages())
    assert {f"declab.plugins.{p.name}" for p in _plugin_folders()} <= found
