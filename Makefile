# Loom: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXAMPLE ?= examples/sales
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test install lint schema bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make run: migrate the example CRM on SQLite, seed demo data, serve it
run: $(STAMP)
	$(BIN)/loom -p $(EXAMPLE) migrate
	$(BIN)/loom -p $(EXAMPLE) seed
	@echo ""
	@echo "  Loom example CRM: http://$(HOST):$(PORT)/"
	@echo "  REST API:         http://$(HOST):$(PORT)/api/accounts"
	@echo "  API docs (UI):    http://$(HOST):$(PORT)/schema/swagger"
	@echo "  Demo users:       admin, li.manager, zhang.rep, smith.rep, wu.marketing, chen.service, wang.finance"
	@echo "                    password loom-demo-2026 (demo data only; manage users with: loom user ...)"
	@echo "                    the API needs a sign-in (POST /api/auth/login, or a token); each user sees what"
	@echo "                    their role allows (zhang.rep: East China accounts; wang.finance: no phone numbers)"
	@echo "  Scheduled rules and webhooks: run '$(BIN)/loom -p $(EXAMPLE) worker' in another terminal"
	@echo ""
	$(BIN)/loom -p $(EXAMPLE) serve --host $(HOST) --port $(PORT)

## make test: the whole suite (PostgreSQL tests skip unless the server is up; CI requires it)
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: $(STAMP)
	$(BIN)/ruff check .

## regenerate schemas/loom.schema.json after changing the spec models
schema: $(STAMP)
	$(BIN)/loom schema --output schemas/loom.schema.json

bench: $(STAMP)
	$(BIN)/python bench/compile.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/security.py
	$(BIN)/python bench/rules.py
	$(BIN)/python bench/migrate.py
	$(BIN)/python bench/ui.py

clean:
	rm -rf $(VENV) build *.egg-info examples/*/*.db* examples/*/*/*.db* examples/*/*/*.bak
