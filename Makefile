# Two commands do everything on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medtl-installed

.PHONY: demo test test-fast install clean

$(STAMP): pyproject.toml constraints.txt
	@# Spark (scoring at archive scale, and its tests) needs a Java runtime: Debian's headless JRE if missing.
	@command -v java >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null; } || \
		echo "medtl: no Java runtime and none could be installed; Spark scoring and its tests are unavailable"
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medtl demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --maxschedchunk 1

# The edit loop: everything but the end-to-end tests that train (CI runs them all).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --maxschedchunk 1 -m "not slow"

clean:
	rm -rf $(VENV) demo_out mlruns mlflow.db .pytest_cache
