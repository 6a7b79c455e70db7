# The two commands of the README. Both set everything up first, idempotently:
# Debian packages (Java, Maven) if missing, the venv and Python packages when pyproject.toml
# changed, the Kafka broker's jars from Maven Central into ~/.cache/steplog (reused).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

# The dashboard (frontend/): `npm ci` only when package-lock.json changed (the stamp lives in
# node_modules, so deleting that directory reinstalls), `vite build` only when a source did.
# npm's own cache (~/.npm) makes a reinstall offline-fast.
FRONTEND := frontend
NPM_STAMP := $(FRONTEND)/node_modules/.installed
DASHBOARD := steplog/server/dashboard/index.html
FRONTEND_SOURCES := $(shell find $(FRONTEND)/src -type f 2>/dev/null) \
	$(FRONTEND)/index.html $(FRONTEND)/vite.config.ts $(FRONTEND)/tsconfig.json

# The ClickHouse clients' compatibility suite (tests/integration/test_sql_clients.py) runs real
# JDBC, Go and Node clients, whose dependencies come from Maven Central (~/.m2), the Go module
# proxy (Go's module and build caches) and npm (~/.npm); each is rebuilt only when its sources
# change, and what is built stays in tests/compat/ (ignored by git).
COMPAT := tests/compat
GO ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
COMPAT_JAVA := $(COMPAT)/java/target/classes/Compat.class
COMPAT_GO := $(COMPAT)/go/bin/compat
COMPAT_NODE := $(COMPAT)/node/node_modules/.installed

.PHONY: demo test setup bench clean compat-clients system-packages

## Set up and run the local stack with the demo, on the embedded defaults.
demo: setup
	$(BIN)/steplog dev --demo

## Set up and run the whole test suite (real Kafka broker, real ClickHouse engine), then
## mypy --strict over the package, tests and benchmarks.
test: setup
	cd $(FRONTEND) && npm test && npm run typecheck
	$(BIN)/pytest
	bash scripts/typecheck.sh

# The system's packages first: the other prerequisites build with them (Node, a JDK, Go).
setup: system-packages $(INSTALLED) $(DASHBOARD) compat-clients
	@$(BIN)/steplog broker install

system-packages:
	@bash scripts/install-system-packages.sh

compat-clients: $(COMPAT_JAVA) $(COMPAT_GO) $(COMPAT_NODE)

$(COMPAT)/java/target/classpath.txt: $(COMPAT)/java/pom.xml
	cd $(COMPAT)/java && mvn -q -B dependency:build-classpath -Dmdep.outputFile=target/classpath.txt

$(COMPAT_JAVA): $(COMPAT)/java/src/Compat.java $(COMPAT)/java/target/classpath.txt
	javac -d $(COMPAT)/java/target/classes -cp "$$(cat $(COMPAT)/java/target/classpath.txt)" $<

$(COMPAT_GO): $(COMPAT)/go/go.mod $(COMPAT)/go/go.sum $(COMPAT)/go/main.go
	cd $(COMPAT)/go && $(GO) build -o bin/compat .

$(COMPAT_NODE): $(COMPAT)/node/package-lock.json
	cd $(COMPAT)/node && npm ci --no-audit --no-fund
	@touch $@

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "installing Python packages into $(VENV) (log: $(VENV)/pip.log)"
	@$(BIN)/pip install --upgrade pip > $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	@$(BIN)/pip install -e ".[dev]" >> $(VENV)/pip.log 2>&1 || (cat $(VENV)/pip.log; exit 1)
	@touch $@

$(NPM_STAMP): $(FRONTEND)/package-lock.json
	cd $(FRONTEND) && npm ci --no-audit --no-fund
	@touch $@

$(DASHBOARD): $(NPM_STAMP) $(FRONTEND_SOURCES) $(FRONTEND)/package-lock.json
	cd $(FRONTEND) && npm run build
	@touch $@

## Benchmarks print figures; they are not tests.
bench: setup
	$(BIN)/python benchmarks/broker_start.py

clean:
	rm -rf $(VENV) .steplog
