# Two commands do everything on a fresh clone:
#   make demo   install into .venv and run the main example job on Flink's mini-cluster
#   make test   install; build the docs (warnings are errors) and type-check the package; run
#               the whole test suite on the primary Flink line (.venv, pinned); build the wheel
#               and sdist, and on every supported Flink line install that wheel with plain pip
#               into a fresh .venv-flink-LINE and run the compatibility subset
# make test-fast: the whole suite only; make test-compat: the per-line wheel runs only;
# make docs: the documentation site into docs/_build/html; make dist: wheel and sdist in dist/;
# make jar: the Java API and its examples, compiled with javac against the wheel's Flink jars.
PYTHON ?= python3
COMPAT_LINES ?= 1.20 2.1 2.3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test test-fast test-compat unit docs typecheck dist jar benchmark clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints/flink-2.3.txt
	@scripts/check-prereqs.sh $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints/flink-2.3.txt -e '.[test,docs]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/train_and_score.py

test: docs typecheck test-fast test-compat

test-fast: $(STAMP)
	$(PY) -m pytest -ra --durations=25

test-compat: dist
	@for line in $(COMPAT_LINES); do PYTHON=$(PYTHON) scripts/compat-run.sh $$line || exit 1; done

unit: $(STAMP)
	$(PY) -m pytest -ra tests/unit

# Sphinx offline (no intersphinx, no downloads); every warning fails the build
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: open docs/_build/html/index.html"

typecheck: $(STAMP)
	$(VENV)/bin/mypy

dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist . > dist.log 2>&1 || { cat dist.log; exit 1; }
	@rm -f dist.log; ls dist

jar: $(STAMP)
	PYTHON=$(PY) scripts/java.sh build

benchmark: $(STAMP)
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) .venv-flink-* *.egg-info .pytest_cache dist docs/_build build
