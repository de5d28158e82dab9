# ltkit: make setup | test | demo | run-all | bench | book | publish | lock | clean
VENV   ?= .venv
PY     := $(VENV)/bin/python
LTKIT  := $(VENV)/bin/ltkit
# torch 2.14.1 / torchvision 0.29.1 are the newest releases allowed here; override on your own box if needed.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
GPU_GRIDS ?= configs/thesis.yaml configs/cao2019-cifar100-if100.yaml configs/cao2019-cifar100-if50.yaml \
             configs/cao2019-cifar100-if10.yaml configs/cao2019-cifar10-if100.yaml

# Use the offline CIFAR-100 copy beside the checkout when there is one.
ifneq ($(wildcard ../shared/data/cifar100/train.npz),)
export LTKIT_DATA ?= $(abspath ../shared/data)
endif

LOCK   := requirements.lock

.PHONY: setup test demo run-all bench book publish lock clean clean-results lint

setup: $(VENV)/.installed

# Exactly the lock (every package pinned, --no-deps), then ltkit itself; `pip check` proves it consistent.
$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# Re-resolve pyproject.toml (dev extra, pinned torch) with pip's resolver, install nothing, write the lock.
lock:
	test -x $(PY) || python3 -m venv $(VENV)
	@tmp=$$(mktemp); $(PY) -m pip install -q --dry-run --ignore-installed --report $$tmp $(TORCH) -e ".[dev]" \
	  && PYTHONPATH=. $(PY) -m ltkit.envlock $$tmp > $(LOCK).new && mv $(LOCK).new $(LOCK); rm -f $$tmp
	@echo "wrote $(LOCK) ($$(grep -c == $(LOCK)) packages); make setup installs it"

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check ltkit tests benchmarks

demo: setup
	$(LTKIT) grid run configs/demo.yaml
	$(MAKE) book

# Every grid runs even if one has failures; the book is built from what finished; then the exit
# status says whether anything failed (`ltkit grid status <grid>` lists what).
run-all: setup
	@status=0; for g in $(GPU_GRIDS); do $(LTKIT) grid run $$g || status=1; done; \
	$(MAKE) book; exit $$status

bench: setup
	$(PY) benchmarks/throughput.py

book: setup
	@$(VENV)/bin/python -c "from ltkit.report import prepare_book as p; p() and print('results changed: book pages re-execute')"
	$(VENV)/bin/jupyter-book build book $$(test -f book/_build/_config.repository.yml && echo --config book/_build/_config.repository.yml)
	@echo "open book/_build/html/index.html"

# One step to GitHub Pages: the built HTML onto the gh-pages branch of `origin`, pushed.
publish: book
	$(PY) -m ghp_import --no-jekyll --push --force --message "book built from $$(git rev-parse --short HEAD)" book/_build/html

clean:
	rm -rf book/_build .pytest_cache .ruff_cache .hypothesis

# Results are the product: deleting them asks first.
clean-results:
	@read -p "Delete results/demo and checkpoints/? [y/N] " ans && [ "$$ans" = y ] && rm -rf results/demo checkpoints || echo kept
