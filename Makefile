# Two commands do everything on a fresh clone:
#   make demo   install into .venv and run the main example job on Flink's mini-cluster
#   make test   install and run the whole test suite on the primary Flink line (.venv), then
#               the compatibility runs of the older lines (.venv-flink-LINE each)
# make test-fast: the primary line only; make test-compat: the older lines only.
PYTHON ?= python3
COMPAT_LINES ?= 1.20 2.1
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test test-fast test-compat unit benchmark clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints/flink-2.3.txt
	@scripts/check-prereqs.sh $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints/flink-2.3.txt -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/train_and_score.py

test: test-fast test-compat

test-fast: $(STAMP)
	$(PY) -m pytest -ra

test-compat:
	@for line in $(COMPAT_LINES); do PYTHON=$(PYTHON) scripts/compat-run.sh $$line || exit 1; done

unit: $(STAMP)
	$(PY) -m pytest -ra tests/unit

benchmark: $(STAMP)
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) .venv-flink-* *.egg-info .pytest_cache
