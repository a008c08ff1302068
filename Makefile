# streamrec: `make demo` runs the pipeline on the embedded defaults, `make test` runs the tests.
# Both set everything up first (virtualenv with pinned packages, Delta jars from Maven Central,
# streamrec's own jar from jvm/src).
# `make airflow` installs Apache Airflow into .venv-airflow, apart from the engine's .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AIRFLOW_VENV := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed

.PHONY: setup airflow browser demo test lint serve chaos bench movielens sessions shell clean

setup: $(STAMP) .cache/jars/.fetched .cache/jvm/streamrec.jar .cache/jvm/.class-archive

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --editable .
	touch $(STAMP)

.cache/jars/.fetched: $(STAMP) scripts/fetch_jars.py lib/ingest/kafka.py
	$(PY) scripts/fetch_jars.py
	touch $@

# streamrec's own jar (jvm/src), compiled by the JDK's javac against the Hadoop classes pyspark ships.
.cache/jvm/streamrec.jar: $(STAMP) scripts/build_jvm.py $(shell find jvm/src -name '*.java')
	$(PY) scripts/build_jvm.py

# The local driver's class-data-sharing archive (scripts/build_class_archive.py, about a minute):
# a cold driver starts about 7 s sooner. Dumped again when the jars change.
.cache/jvm/.class-archive: .cache/jars/.fetched .cache/jvm/streamrec.jar scripts/build_class_archive.py
	@echo "dumping the local driver's class archive (about 2 minutes; log: .cache/jvm/class-archive.log)"
	@$(PY) scripts/build_class_archive.py > .cache/jvm/class-archive.log 2>&1 \
		|| { tail -n 30 .cache/jvm/class-archive.log; exit 1; }
	@grep "build_class_archive:" .cache/jvm/class-archive.log | tail -n 1
	touch $@

# Every package pinned (a pip freeze of a working install): Airflow's own constraint files are not
# reachable from every machine, and an unpinned resolve drifts.
airflow: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): requirements-airflow.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r requirements-airflow.txt
	$(AIRFLOW_VENV)/bin/python scripts/airflow_defaults.py
	$(AIRFLOW_VENV)/bin/airflow db migrate > /dev/null
	touch $@

demo: setup
	$(PY) scripts/demo.py

test: setup lint airflow browser
	$(PY) -m pytest -n 2 --dist loadfile

# Debian's chromium and chromium-driver, for the console's browser test.
browser:
	scripts/install_browser.sh

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

# Next-item prediction through the engine: make sessions ARGS="--data <session-rec clone>/data/rsc15/prepared"
sessions: setup
	$(PY) bench/sessions.py $(ARGS)

shell: setup
	./pyspark.sh

clean:
	rm -rf data/stream data/lake data/checkpoints data/online data/historical_purchases.parquet .cache/lib-*.zip
