# ltkit: make setup | test | demo | run-all | fetch | bench | book | publish | lock | clean | campaign | campaign-status | campaign-stop
#        | gpu-bundle | gpu-session | gpu-import | gpu-bench
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

.PHONY: setup test demo run-all fetch bench book publish lock clean clean-results lint gpu-bundle gpu-session gpu-import gpu-bench \
        campaign campaign-status campaign-stop

setup: $(VENV)/.installed

# Exactly the lock (every package pinned, --no-deps), then ltkit itself; `pip check` proves it consistent.
# A venv without a working pip (its creation was interrupted) is made again from scratch.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PY) -m pip --version >/dev/null 2>&1 || python3 -m venv --clear $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# Re-resolve pyproject.toml (dev extra, pinned torch) with pip's resolver, install nothing, write the lock.
lock:
	$(PY) -m pip --version >/dev/null 2>&1 || python3 -m venv --clear $(VENV)
	@tmp=$$(mktemp); $(PY) -m pip install -q --dry-run --ignore-installed --report $$tmp $(TORCH) -e ".[dev]" \
	  && PYTHONPATH=. $(PY) -m ltkit.core.envlock $$tmp > $(LOCK).new && mv $(LOCK).new $(LOCK); rm -f $$tmp
	@echo "wrote $(LOCK) ($$(grep -c == $(LOCK)) packages); make setup installs it"

test: setup
	$(PY) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check ltkit tests benchmarks

demo: setup
	$(LTKIT) grid run configs/demo.yaml
	$(MAKE) book

# First what it will cost (`ltkit grid plan`: runs to do, GPU-hours per backbone from the committed benchmark,
# disk), then a smoke pass (every model x method for 2 steps on the real data, minutes on one GPU; SMOKE=0 skips
# it), which stops with one line per failure before any real run. Then every grid runs even if one has failures;
# the book is built from what finished; the exit status says whether anything failed (`ltkit grid status`).
SMOKE ?= 1
run-all: setup
	@for g in $(GPU_GRIDS); do $(LTKIT) grid plan $$g || exit 2; done
	@if [ "$(SMOKE)" != 0 ]; then for g in $(GPU_GRIDS); do $(LTKIT) grid smoke $$g || { \
	  echo "smoke pass of $$g failed (lines above): fix them, or SMOKE=0 make run-all to skip the pass"; exit 1; }; done; fi
	@status=0; for g in $(GPU_GRIDS); do $(LTKIT) grid run $$g || status=1; done; \
	$(MAKE) book; exit $$status

# On a machine with internet (a cluster's login node): every pretrained weight and data set the grids need, into
# the caches their runs read (TORCH_HOME, HF_HOME, LTKIT_DATA), verified; the compute nodes then run offline.
fetch: setup
	@status=0; for g in $(GPU_GRIDS); do $(LTKIT) fetch $$g || status=1; done; exit $$status

# On a GPU: benchmarks/throughput.py. On a CPU: benchmarks/cpu.py (appendix A's CPU section); a running campaign
# is stopped at an epoch boundary for it (the figures would measure the campaign too) and started again after.
bench: setup
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then $(PY) benchmarks/throughput.py; \
	else running=$$($(LTKIT) campaign status 2>/dev/null | head -1 | grep -c "^campaign running"); \
	  if [ "$$running" = 1 ]; then $(LTKIT) campaign stop; fi; \
	  $(PY) benchmarks/cpu.py; status=$$?; \
	  if [ "$$running" = 1 ]; then $(LTKIT) campaign start $(CAMPAIGN); fi; exit $$status; fi

book: setup
	@$(VENV)/bin/python -c "from ltkit.report import prepare_book as p; p() and print('results changed: book pages re-execute')"
	$(VENV)/bin/jupyter-book build book $$(test -f book/_build/_config.repository.yml && echo --config book/_build/_config.repository.yml)
	@echo "open book/_build/html/index.html"

# One step to GitHub Pages: the built HTML onto the gh-pages branch of `origin`, pushed.
publish: book
	$(PY) -m ghp_import --no-jekyll --push --force --message "book built from $$(git rev-parse --short HEAD)" book/_build/html

# ------------------------------------------------------------------ a GPU lent for one session
# Here, at no GPU time: `make gpu-bundle` packs Cao et al.'s CIFAR-100-LT IF 100 subset (+ its validation images
# and the test set) into .gpu_data/ and fetches the wheels the GPU machine lacks into .whl/ (what its image
# already has is listed in configs/gpu-image-packages.txt); both travel as `carry` (64 MiB with the tree).
# There, in one command of at most 10 minutes:
#   LTKIT_GIT_COMMIT=<sha> make gpu-session GPU_ONLY=ce,ldam_drw,bs,la,ce_drw GPU_SECONDS=480
# runs the grid until GPU_SECONDS, then stops it as Ctrl-C does (finished runs stay, the others resume
# from their checkpoints next time on a warm machine) and tars results/ into $$OUT/results.tgz; packed runs'
# notebooks are left to `make gpu-import TGZ=...` here (CPU time, not GPU time).
# `make gpu-bench` measures the packed-model throughput (appendix A) into $$OUT.
GPU_PY      ?= python3
GPU_GRID    ?= configs/cao2019-cifar100-if100.yaml
GPU_SECONDS ?= 480
GPU_ONLY    ?=
GPU_SEEDS   ?=
GPU_ARGS    ?=
GPU_RESULTS ?= results
GPU_BENCH_ARGS ?= --models resnet50 --pack-sizes 1 4 8 16 32
GPU_OUT     ?= $(or $(OUT),/tmp/ltkit-gpu-out)
GPU_WHEELS  := papermill ipykernel nbformat submitit
GPU_TAGS    := --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
               --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
               --platform manylinux1_x86_64
GPU_SELECT   = --results $(GPU_RESULTS) $(if $(GPU_ONLY),--only $(GPU_ONLY)) $(if $(GPU_SEEDS),--seeds $(GPU_SEEDS)) $(GPU_ARGS)
GPU_ENV     := LTKIT_DATA=$(CURDIR)/.gpu_data PYTHONPATH=$(CURDIR):/tmp/ltkit-site PYTHONUNBUFFERED=1

gpu-bundle: setup
	test -f .gpu_data/cifar100/train.npz || $(LTKIT) data pack --src $(LTKIT_DATA) --out .gpu_data/cifar100 --protocol cao2019
	rm -rf .whl && $(PY) -m pip download -q $(GPU_TAGS) -c $(LOCK) -d .whl $(GPU_WHEELS)
	@for w in .whl/*.whl; do n=$$(basename $$w | cut -d- -f1 | tr 'A-Z_.' 'a-z--'); \
	  if grep -qx "$$n" configs/gpu-image-packages.txt; then rm $$w; fi; done
	@du -cb .gpu_data .whl | tail -1 | awk '{printf "to carry: .gpu_data .whl = %.1f MiB (64 MiB travel, the tree included)\n", $$1/1048576}'

gpu-session:
	$(GPU_PY) -m pip install -q --no-index --find-links .whl $(GPU_WHEELS) \
	  || $(GPU_PY) -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/ltkit-site .whl/*.whl
	mkdir -p $(GPU_OUT)
	@echo "commit $${LTKIT_GIT_COMMIT:?set LTKIT_GIT_COMMIT=<sha>: the tree travels without .git}"
	-$(GPU_ENV) timeout -s INT $(GPU_SECONDS) $(GPU_PY) -m ltkit.cli grid run $(GPU_GRID) $(GPU_SELECT) --no-notebooks \
	  2>&1 | tee $(GPU_OUT)/grid.log
	$(GPU_ENV) $(GPU_PY) -m ltkit.cli grid status $(GPU_GRID) $(GPU_SELECT) | tee $(GPU_OUT)/status.txt
	mkdir -p $(GPU_RESULTS) && tar czf $(GPU_OUT)/results.tgz -C $(GPU_RESULTS) .
	@ls -la $(GPU_OUT)

# Here again: unpack what the session brought back and execute the packed runs' notebooks (CPU, ../shared data).
gpu-import: setup
	@test -f "$(TGZ)" || { echo "usage: make gpu-import TGZ=path/to/results.tgz [GPU_GRID=...]"; exit 2; }
	tar xzf $(TGZ) -C $(GPU_RESULTS)
	$(LTKIT) grid record $(GPU_GRID) --results $(GPU_RESULTS)
	git status --short $(GPU_RESULTS) | head -60

gpu-bench:
	mkdir -p $(GPU_OUT)
	$(GPU_ENV) $(GPU_PY) benchmarks/throughput.py $(GPU_BENCH_ARGS) 2>&1 | tee $(GPU_OUT)/bench.log
	cp benchmarks/results/*.json $(GPU_OUT)/

clean:
	rm -rf book/_build .pytest_cache .ruff_cache .hypothesis

# ------------------------------------------------------------------ the CPU campaign (no GPU needed)
# Trains CAMPAIGN's queue in the background (detached, nice 10, log in .campaign/campaign.log) from a git worktree
# of HEAD (.campaign/src), so edits here never change a run in flight; results land in results/, checkpoints in
# checkpoints/. Started again (after a stop or a reboot) it resumes every run from its last epoch.
CAMPAIGN ?= configs/campaign-cpu.yaml
campaign: setup
	$(LTKIT) campaign start $(CAMPAIGN)

campaign-status: setup
	@$(LTKIT) campaign status

# Stops every running run right after its next epoch checkpoint (waits for it: up to about one epoch).
campaign-stop: setup
	@$(LTKIT) campaign stop

# Results are the product: deleting them asks first.
clean-results:
	@read -p "Delete results/demo and checkpoints/? [y/N] " ans && [ "$$ans" = y ] && rm -rf results/demo checkpoints || echo kept
