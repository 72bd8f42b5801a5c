"""The package's architecture rules, checked on the source: runtime/ and scoring/ never import
the public API modules, nothing unpickles bytes, every exception class lives in errors.py,
no two classes share a name."""

import ast
import pathlib

import flink_torch_ml

PACKAGE = pathlib.Path(flink_torch_ml.__file__).parent
#: modules of the package root that runtime/ and scoring/ may use: leaves with no API in them
FOUNDATION = {"errors", "data_types", "_defaults", "_version", "_compat"}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def imported_root_modules(path, tree):
    """Names of package-root modules a file imports (relative imports resolved)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: climb to the package root
                climb = node.level - 1
                if climb < depth:
                    continue  # stays inside the subpackage
                parts = (node.module or "").split(".")
                if climb == depth:
                    found.update([parts[0]] if parts[0] else [a.name for a in node.names])
            elif (node.module or "").startswith("flink_torch_ml"):
                parts = node.module.split(".")
                found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("flink_torch_ml"):
                    parts = alias.name.split(".")
                    found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def test_runtime_and_scoring_import_no_public_api_module():
    offenders = {}
    for path, tree in modules():
        sub = path.relative_to(PACKAGE).parts[0]
        if sub not in ("runtime", "scoring"):
            continue
        bad = imported_root_modules(path, tree) - FOUNDATION - {"runtime", "scoring"}
        if bad:
            offenders[str(path.relative_to(PACKAGE))] = sorted(bad)
    assert offenders == {}


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
    # user names; see the README's Security section
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


def test_the_public_api_is_reexported():
    for name in flink_torch_ml.__all__:
        assert hasattr(flink_torch_ml, name), name
