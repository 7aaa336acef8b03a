# The two commands of the README: `make study` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-slow study reference lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[study,dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# the embedded default study; a second `make study` resumes (or just re-exports) it
study: $(STAMP)
	if [ -f results/smoke/study.json ]; then \
		$(BIN)/wrf4cir-study resume results/smoke; \
	else \
		$(BIN)/wrf4cir-study run experiments/smoke.yaml --storage results; \
	fi
	$(BIN)/wrf4cir-study report results/smoke

# the committed reference output: a fresh smoke study, its report in results/reference/smoke
reference: $(STAMP)
	rm -rf results/reference-run results/reference/smoke
	$(BIN)/wrf4cir-study run experiments/smoke.yaml --storage results/reference-run
	$(BIN)/wrf4cir-study report results/reference-run/smoke --out results/reference/smoke
	$(BIN)/python -m study.report.check_html results/reference/smoke

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.step

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
