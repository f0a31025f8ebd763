# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PY := .venv/bin/python

.PHONY: setup demo test

setup:
	bash scripts/setup.sh

# Train a small class-conditional model on an offline dataset, sample a grid, export an augmentation set.
demo: setup
	bash scripts/demo.sh

# W&B stays offline in tests whatever the user's environment says; no test needs an API key.
test: setup
	WANDB_MODE=offline WANDB_SILENT=true $(PY) -m pytest -q --timeout=900
