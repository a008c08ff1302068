# streamrec: `make demo` runs the pipeline on the embedded defaults, `make test` runs the tests.
# Both set everything up first (virtualenv with pinned packages, Delta jars from Maven Central).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint serve chaos bench movielens shell clean

setup: $(STAMP) .cache/jars/.fetched

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --editable .
	touch $(STAMP)

.cache/jars/.fetched: $(STAMP)
	$(PY) scripts/fetch_jars.py
	touch $@

demo: setup
	$(PY) scripts/demo.py

test: setup lint
	$(PY) -m pytest -n 2 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

serve: setup
	$(PY) jobs/serve.py $(ARGS)

chaos: setup
	$(PY) bench/chaos.py $(ARGS)

bench: setup
	$(PY) bench/benchmark.py $(ARGS)

movielens: setup
	$(PY) bench/movielens.py $(ARGS)

shell: setup
	./pyspark.sh

clean:
	rm -rf data/stream data/lake data/checkpoints data/online data/historical_purchases.parquet .cache/lib-*.zip
