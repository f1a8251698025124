# The two commands of the README: `make serve` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The ten slowest tests at the end of a run (tests/conftest.py adds each tier's time after them).
DURATIONS := --durations=10

.PHONY: install install-tools serve lint bench-decode bench-decode-long bench-overhead bench-throughput test test-fast test-integration model lock clean

install:  ## create/update the CPU venv (idempotent; a no-op when nothing changed)
	@VENV=$(VENV) bash scripts/install_cpu.sh

install-tools:  ## create/update .venv-tools (kubectl, kubernetes-validate, checkov, hadolint) for the deploy checks
	@bash scripts/install_tools.sh

model: install  ## build the random tiny Qwen2-VL the tests use into .cache/ if missing (the served default, models/grid-vqa/, is committed)
	@$(PY) -m vlmodels.tiny_qwen2vl

serve:  ## install if needed (its output in .cache/install.log), then serve the default model (the trained grid-VQA model in models/grid-vqa/) on CPU (127.0.0.1)
	@mkdir -p .cache && echo "[vlcache] checking the install (its log: .cache/install.log)"
	@VENV=$(VENV) bash scripts/install_cpu.sh > .cache/install.log 2>&1 || { tail -n 30 .cache/install.log; exit 1; }
	@$(PY) -m service.cli $(SERVE_ARGS)

.PHONY: serve-router loadtest loadtest-router soak deploy-check
serve-router: install  ## 2 CPU SGLang workers + SMG (sticky sessions on the gateway's routing key, round_robin otherwise) + the gateway on http://127.0.0.1:8000
	@$(PY) -m service.router_launch --workers 2 --port 8000

loadtest: install  ## a bounded headless Locust run against a locally started service: CSV, HTML, PNG in loadtest/results/
	@$(PY) -m loadtest.run --users 4 --duration 60s --out loadtest/results

loadtest-router: install  ## the same run against `make serve-router`'s layout (2 workers behind SMG): loadtest/results/router/
	@$(PY) -m loadtest.run --workers 2 --users 4 --duration 60s --out loadtest/results/router

soak: install  ## a bounded 10-minute soak of the router layout (2 workers, 6 users); fails on any failed request: loadtest/results/soak/
	@$(PY) -m loadtest.run --workers 2 --users 6 --duration 10m --out loadtest/results/soak

deploy-check: install install-tools  ## render every deploy/ overlay; kubernetes-validate, checkov, hadolint (also in `make test`)
	@$(PY) -m pytest tests/fast/deploy -q

lint: install  ## ruff (config in pyproject.toml): lint rules and formatting; fails when the tree is not clean
	@rc=0; $(VENV)/bin/ruff check . || rc=1; $(VENV)/bin/ruff format --check . || rc=1; exit $$rc

test: install install-tools lint  ## the linter, then the whole suite: fast tier and integration tier (real SGLang engine); ends with each tier's time and the ten slowest tests
	@$(PY) -m pytest $(DURATIONS) $(PYTEST_ARGS); rc=$$?; [ -z "$(PYTEST_RC_FILE)" ] || echo $$rc > "$(PYTEST_RC_FILE)"; exit $$rc

.PHONY: train-model accuracy
train-model: install  ## retrain the embedded grid-VQA model into models/grid-vqa/ (~35 min on the measuring machine, bench/README.md)
	@$(PY) tools/train_grid_vqa.py

accuracy: install  ## accuracy vs KV budget per policy through SGLang + plugin, and the cache-hit-rate diagnostic (~25 min: about 24 questions/s, 30k at the defaults)
	@$(PY) -m bench.accuracy && $(PY) -m bench.hit_rate

test-fast: install install-tools
	@$(PY) -m pytest -m "not integration" $(DURATIONS) $(PYTEST_ARGS)

test-integration: install
	@$(PY) -m pytest -m integration $(DURATIONS) $(PYTEST_ARGS)

bench-decode: install  ## decode speed + KV held: stock vs plugin, 4k/16k/32k prompts, batch 1/4; byte and step-cost bounds (~16 min)
	@$(PY) -m bench.decode

bench-decode-long: install  ## the 16k and 64k prompts at budget 0.1, batch 1, each pair twice (medians): results/decode_long.json (~15 min)
	@$(PY) -m bench.decode --lengths 16000 64000 --batches 1 --budgets 0.1 --baselines --repeats 2 --name decode_long

bench-overhead: install  ## prefill: stock vs plugin full vs vlcache scoring, 4k/16k/32k (~10 min)
	@$(PY) -m bench.overhead

bench-throughput: install  ## open-loop load on a memory-bound server through the gateway: stock vs budget 0.1 (~5 min)
	@$(PY) -m bench.throughput

.PHONY: bench-multiturn bench-followup bench-sessions bench-scale-out
bench-scale-out: install  ## the same Locust load through SMG with 1 and then 2 workers: QPS, TTFT, inter-token p50/p99 (~10 min)
	@$(PY) -m bench.scale_out

bench-sessions: install  ## 32 image chats sharing one small KV pool: stock vs plugin full / reuse lazy / compressed, with think times and saturated (~25 min)
	@$(PY) -m bench.sessions
	@$(PY) -m bench.sessions --think-mean 0 --arrival-rate 8 --name sessions_saturated
	@$(PY) -m bench.sessions --think-mean 0 --arrival-rate 8 --schedule-policy lpm --name sessions_saturated_lpm

bench-multiturn: install  ## 3-turn chats (images, video): stock vs plugin full / reuse lazy, compressed, off; memory pressure (~15 min)
	@$(PY) -m bench.multiturn

bench-followup: install  ## follow-up (turn-2) accuracy per multi-turn design on the grid-VQA model (~10 min)
	@$(PY) -m bench.followup

lock:  ## re-resolve requirements/*.in into constraints/*.lock
	@bash scripts/lock_cpu.sh
	@bash scripts/lock_tools.sh

clean:
	rm -rf $(VENV) .venv-tools .cache .pytest_cache
