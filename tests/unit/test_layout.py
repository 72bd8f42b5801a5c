"""The package's architecture rules, checked on the source: each folder is one kind of code
and imports only what sits under it (core <- dataplane <- worker <- client <- the public
API), the core and the data plane never import pyflink, nothing unpickles bytes, every
exception class lives in errors.py, no two classes share a name."""

import ast
import pathlib
import subprocess
import sys

import flink_torch_ml

PACKAGE = pathlib.Path(flink_torch_ml.__file__).parent
#: modules of the package root that any folder may use: leaves with no API in them
FOUNDATION = {"errors", "_defaults", "_version"}
#: what each folder may import besides itself and the foundation (the public API modules at
#: the root may import everything)
MAY_IMPORT = {
    "core": set(),
    "dataplane": {"core"},
    "worker": {"core", "dataplane", "_compat"},
    "client": {"core", "dataplane", "worker", "_compat"},
}
#: folders that must run without Flink
FLINK_FREE = ("core", "dataplane")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def imported_package_modules(path, tree):
    """The package's top-level names (folders or root modules) a file imports, relative
    imports resolved."""
    parts = list(path.relative_to(PACKAGE).parts[:-1])  # the file's folder, from the root
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
                target = base + ((node.module or "").split(".") if node.module else [])
                if target:
                    found.add(target[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif (node.module or "").startswith("flink_torch_ml"):
                names = node.module.split(".")
                found.add(names[1] if len(names) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("flink_torch_ml"):
                    names = alias.name.split(".")
                    found.add(names[1] if len(names) > 1 else "__init__")
    return found


def test_each_folder_imports_only_what_sits_under_it():
    offenders = {}
    for path, tree in modules():
        folder = path.relative_to(PACKAGE).parts[0]
        if folder not in MAY_IMPORT:
            continue
        allowed = MAY_IMPORT[folder] | FOUNDATION | {folder}
        bad = imported_package_modules(path, tree) - allowed
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert offenders == {}


def test_the_core_and_the_data_plane_never_import_pyflink():
    offenders = []
    for path, tree in modules():
        if path.relative_to(PACKAGE).parts[0] not in FLINK_FREE:
            continue
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}:{node.lineno}" for n in names
                          if n.split(".")[0] in ("pyflink", "py4j")]
    assert offenders == []
    # and not through anything they import: a fresh interpreter loads them all
    code = ("import sys, importlib, pathlib, flink_torch_ml\n"
            f"for folder in {FLINK_FREE!r}:\n"
            "    for p in sorted((pathlib.Path(flink_torch_ml.__file__).parent / folder)"
            ".glob('*.py')):\n"
            "        importlib.import_module(f'flink_torch_ml.{folder}.{p.stem}'"
            ".replace('.__init__', ''))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyflink', 'py4j')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_the_package_changes_nothing_outside_it():
    code = ("import os, sys; before = dict(os.environ); import flink_torch_ml; "
            "print(dict(os.environ) == before, "
            "sorted(m for m in sys.modules if m.startswith('flink_torch_ml')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split(" ", 1)[0] == "True", out.stdout + out.stderr
    assert out.stdout.strip().endswith("['flink_torch_ml']")  # no submodule imported either


def test_nothing_unpickles_and_torch_load_is_weights_only():
    offenders = []
    for path, tree in modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = getattr(node.func.value, "id", "")
            if owner == "pickle" and node.func.attr in ("loads", "load", "Unpickler"):
                offenders.append(f"{path.name}:{node.lineno} pickle.{node.func.attr}")
            if owner == "torch" and node.func.attr == "load":
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                if not weights_only or getattr(weights_only[0].value, "value", None) is not True:
                    offenders.append(f"{path.name}:{node.lineno} torch.load")
    # the only unpickling is of saved estimators (their callables), read from a path the
    # user names; see docs/guide/security.md
    assert offenders == ["estimator.py:%d pickle.load" % _line("estimator.py", "pickle.load(")]


def _line(name, text):
    for number, line in enumerate((PACKAGE / name).read_text().splitlines(), 1):
        if text in line:
            return number
    return -1


def test_exception_classes_live_in_errors_and_class_names_are_unique():
    exceptions, names = [], {}
    for path, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names.setdefault(node.name, []).append(str(path.relative_to(PACKAGE)))
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                if path.name != "errors.py" and any(b.endswith(("Error", "Exception"))
                                                    for b in bases):
                    exceptions.append(f"{path.name}:{node.name}")
    assert exceptions == []
    assert {n: p for n, p in names.items() if len(p) > 1} == {}


def test_the_public_api_is_reexported_and_extension_types_have_a_public_home():
    for name in flink_torch_ml.__all__:
        assert hasattr(flink_torch_ml, name), name
    from flink_torch_ml import callbacks, training

    for name in ("Callback", "EarlyStopping", "LRScheduler", "ModelCheckpoint",
                 "TensorBoardLogger", "MLflowLogger"):
        assert getattr(callbacks, name) is getattr(flink_torch_ml, name)
    assert training.TrainingLoop is flink_torch_ml.TrainingLoop
