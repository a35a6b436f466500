# The README's commands. Every target sets itself up: a virtualenv in .venv, the
# project installed into it (editable, with the test tools).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8678
DEMO_DB ?= var/legacy_billing.sqlite
BILLS  ?= 1000000

.PHONY: install run demo test lint format bench bench-db clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

$(DEMO_DB): | $(VENV)/.installed
	$(PY) -c "from simulators.billing_db import ensure_demo_database; ensure_demo_database('$(DEMO_DB)')"

# LEGACY_DB_URL (an async SQLAlchemy URL: postgresql+asyncpg://..., mysql+asyncmy://...)
# moves the demo back end to that database: `make run` seeds the demo schema there unless
# it holds data already. Without it, the SQLite file $(DEMO_DB).
ifdef LEGACY_DB_URL
DEMO_DATA := legacy-db-url
else
DEMO_DATA := $(DEMO_DB)
endif

.PHONY: legacy-db-url
legacy-db-url: | $(VENV)/.installed
	@$(PY) -m simulators.billing_db --url "$$LEGACY_DB_URL"

GATEWAY_CONFIG ?= config/default.yaml

# With config/secure.yaml and no key source given, trust a development key made under var/
# (`$(VENV)/bin/tmf678-gateway token --scope ...` prints tokens signed with it).
run: install $(DEMO_DATA)
	@if [ "$(notdir $(GATEWAY_CONFIG))" = secure.yaml ] && [ -z "$$AUTH_JWKS_FILE$$AUTH_JWKS_URL" ]; then \
	  $(PY) -m gateway token --dir var > /dev/null || exit 1; \
	  echo "make run: trusting the development key of var/dev-jwks.json"; \
	  export AUTH_JWKS_FILE=var/dev-jwks.json AUTH_ISSUER=$${AUTH_ISSUER:-http://127.0.0.1:8678/dev-issuer}; \
	fi; \
	LEGACY_DB=$(DEMO_DB) GATEWAY_CONFIG=$(GATEWAY_CONFIG) HOST=$(HOST) PORT=$(PORT) $(PY) -m gateway

# The bundled SQL, REST and SOAP back ends behind one gateway (config/federated.yaml).
demo: install
	LEGACY_DB=$(DEMO_DB) HOST=$(HOST) PORT=$(PORT) $(PY) -m simulators.demo

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# A large copy of the demo database for benchmarks (BILLS=1000000 by default).
bench-db: install
	$(PY) -m simulators.billing_db --path var/bench_billing.sqlite --bills $(BILLS) --force

bench: install
	@test -f var/bench_billing.sqlite || $(MAKE) bench-db
	$(PY) bench/read_latency.py --db var/bench_billing.sqlite
	$(PY) bench/query_shapes.py --db var/bench_billing.sqlite
	$(PY) bench/event_delivery.py --events 2000
	$(PY) bench/adapter_throughput.py --requests 4000
	$(PY) bench/auth_overhead.py --requests 3000
	$(PY) bench/resilience.py --requests 10000
	$(PY) bench/cache_hit.py --requests 10000 --callgrind
	$(PY) bench/mapping_throughput.py --bills 2000 --rounds 30
	$(PY) bench/metrics_overhead.py --requests 3000 --callgrind 200
	$(PY) bench/on_demand_instances.py --requests 1000
	$(PY) bench/pg_latency.py  # skips, saying so, when PostgreSQL is unreachable

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
