# Two commands: `make demo` (whole pipeline on the built-in toy VOC) and `make test`.
# Each creates .venv when missing and installs the pinned requirements (a no-op when the
# requirement files have not changed since the last install).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TOY    ?= data/toy_voc
# pytest processes for `make test`; each test runs one torch thread (tiny tensors)
TEST_WORKERS ?= 2
# more pytest arguments, e.g. PYTEST_ARGS="-m 'not slow'" (a quick loop without the ~20 slow tests)
PYTEST_ARGS ?=

.PHONY: demo demo-pretrained test lint bench ablation toy clean-runs help

help:
	@echo "make demo      - toy pipeline: generate data, train, infer, evaluate (runs/demo/)"
	@echo "make demo-pretrained - the same with ImageNet-pretrained EfficientNet-Lite0 (runs/demo_pretrained/)"
	@echo "make test      - lint + unit/integration tests"
	@echo "make bench     - speed benchmarks (evaluator, training, inference, CRF, random walk, stage 3)"
	@echo "make ablation  - toy ablation: MCL vs MCL+PL-Mix, 2 regimes x 3 seeds, paired tests (runs/ablation/)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.req-installed: requirements.txt | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	@touch $@

$(VENV)/.test-installed: requirements-test.txt $(VENV)/.req-installed
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-test.txt
	@touch $@

toy: $(VENV)/.req-installed
	@if [ -d $(TOY) ]; then echo "toy dataset: $(TOY) (exists)"; \
	else $(PY) -m data.toy_voc --out $(TOY) --seed 0; fi

demo: toy
	$(PY) -m tool.dev.demo --voc12_root $(TOY)

demo-pretrained: toy
	$(PY) -m tool.dev.demo --voc12_root $(TOY) --config configs/toy_pretrained.yaml --out runs/demo_pretrained

test: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS) tests

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .

bench: toy
	$(PY) -m tool.dev.bench

ablation: toy
	$(PY) -m tool.dev.ablation --voc12_root $(TOY)

clean-runs:
	rm -rf runs
