# Quick start (README): `make demo` and `make test`. Both set up .venv on first use.
PY := .venv/bin/python

.PHONY: setup demo test
setup:
	bash scripts/setup_env.sh

demo: setup
	$(PY) tools/demo.py --output-dir demo_output

test: setup
	$(PY) -m pytest -q tests
