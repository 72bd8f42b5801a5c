# Two commands do everything on a fresh clone:
#   make demo   install into .venv and run the main example job on Flink's mini-cluster
#   make test   install into .venv and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test unit benchmark clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@scripts/check-prereqs.sh $(PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/train_and_score.py

test: $(STAMP)
	$(PY) -m pytest -ra

unit: $(STAMP)
	$(PY) -m pytest -ra tests/unit

benchmark: $(STAMP)
	$(PY) benchmarks/inference.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
