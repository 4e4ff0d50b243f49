# Yibao: local development and tests. Every target installs what it needs first:
#   the virtualenv (.venv), the Kafka jars (~/.cache/yibao) and PostgreSQL (apt).
# See README.md. deploy/stack.py does the work; it is standard-library Python.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# stack.py needs only the standard library; its topic step uses $(PY).
STACK  := $(PY) deploy/stack.py

.DEFAULT_GOAL := help
.PHONY: help venv prepare ensure-infra run up down status test test-unit lint monitoring-check k8s-check asyncapi-check \
        demo bench clean docker-engine docker-engine-stop images test-containers compose-up \
        compose-down compose-check

help:
	@echo "make run        Kafka, PostgreSQL, services, SMS and bank gateways in the foreground (Ctrl-C stops)"
	@echo "make test       the whole test suite against real Kafka and PostgreSQL"
	@echo "make up|down    the same stack in the background / stop it;  make status"
	@echo "make test-unit  unit tests only;  make lint  ruff check, ruff format --check, mypy;  make clean  down + rm .run"
	@echo "make images     the Docker images, built here with no registry (starts an engine if needed)"
	@echo "make test-containers  the e2e suite against containers of those images"

# The virtualenv, rebuilt only when pyproject.toml changes.
venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	  || { echo "Python >= 3.11 is needed; set PYTHON=/path/to/python3.11"; exit 1; }
	@if [ ! -x $(PY) ]; then \
	  $(PYTHON) -m venv $(VENV) || { \
	    rm -rf $(VENV); \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "installing python3-venv"; \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null \
	        || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null; }; \
	      $(PYTHON) -m venv $(VENV); \
	    else echo "cannot create a virtualenv: install python3-venv"; exit 1; fi; }; \
	fi
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# Kafka jars, PostgreSQL binaries and the Debian extras other parts need (fonts and
# tools for receipts: deploy/install-extras.sh, when present); nothing started.
prepare: venv
	$(STACK) prepare
	@if [ -f deploy/install-extras.sh ]; then bash deploy/install-extras.sh; fi

ensure-infra: venv
	$(STACK) ensure-infra

run: prepare
	$(STACK) run

up: prepare
	$(STACK) up

down:
	$(PYTHON) deploy/stack.py down

status:
	@$(PYTHON) deploy/stack.py status || true

# The fixtures in tests/conftest.py find or start Kafka and PostgreSQL themselves;
# `prepare` only makes sure the local fallback can start. pytest exits 5 (non-zero)
# when no test ran.
test: prepare
	$(PY) -m pytest tests

test-unit: venv
	$(PY) -m pytest tests/unit

# ruff (lint rules and formatting), mypy strict, and the monitoring files, the Kubernetes
# manifests and the AsyncAPI document checked by their real tools; .ci/run runs it first.
lint: venv monitoring-check k8s-check asyncapi-check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m mypy --strict deploy

# Prometheus' promtool, built from the Go module proxy once (~/.cache/yibao/go/bin).
PROMTOOL_VERSION := v0.316.0
PROMTOOL := $(HOME)/.cache/yibao/go/bin/promtool
GO_ENV := GOFLAGS=-buildvcs=false

$(PROMTOOL):
	@command -v go >/dev/null || { echo "make monitoring-check needs Go (apt-get install golang, or go.dev)"; exit 1; }
	@echo "building promtool $(PROMTOOL_VERSION) (once; a few minutes)"
	GOBIN=$(dir $(PROMTOOL)) $(GO_ENV) go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

# The alert rules (promtool check rules, and promtool test rules: each alert fires on
# the series it is for) and the Grafana dashboard against Grafana's schema
# (deploy/monitoring/dashboardcheck: the Foundation SDK's strict decoding).
monitoring-check: $(PROMTOOL)
	$(PROMTOOL) check rules deploy/monitoring/alerts.yml
	cd deploy/monitoring && $(PROMTOOL) test rules alerts_test.yml
	cd deploy/monitoring/dashboardcheck && $(GO_ENV) go run . ../grafana-dashboard.json

# deploy/k8s against the Kubernetes API's own schemas with kubeconform (-strict: an
# unknown field, a wrong type or a missing required field fails), and each manifest of
# deploy/k8s/testdata must be refused (the check can fail). kubeconform is built once
# with `go install`; the schemas are made once from the k8s.io/kubernetes module's
# OpenAPI spec, fetched through the Go module proxy (deploy/k8s/schemas.py): nothing
# is fetched from anywhere else.
KUBECONFORM_VERSION := v0.8.0
KUBECONFORM := $(HOME)/.cache/yibao/go/bin/kubeconform
K8S_VERSION := 1.34.2
K8S_SCHEMAS := $(HOME)/.cache/yibao/k8s-schemas
K8S_SCHEMA_SET := $(K8S_SCHEMAS)/v$(K8S_VERSION)-standalone-strict/.complete
KUBECONFORM_RUN = $(KUBECONFORM) -strict -summary -kubernetes-version $(K8S_VERSION) \
                  -schema-location $(K8S_SCHEMAS)

$(KUBECONFORM):
	@command -v go >/dev/null || { echo "make k8s-check needs Go (apt-get install golang, or go.dev)"; exit 1; }
	GOBIN=$(dir $(KUBECONFORM)) $(GO_ENV) go install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)

$(K8S_SCHEMA_SET): deploy/k8s/schemas.py
	@command -v go >/dev/null || { echo "make k8s-check needs Go (apt-get install golang, or go.dev)"; exit 1; }
	$(PYTHON) deploy/k8s/schemas.py --kubernetes-version $(K8S_VERSION) --out $(K8S_SCHEMAS)

k8s-check: $(KUBECONFORM) $(K8S_SCHEMA_SET)
	$(KUBECONFORM_RUN) $(filter-out deploy/k8s/kustomization.yaml,$(wildcard deploy/k8s/*.yaml))
	@for f in deploy/k8s/testdata/*.yaml; do \
	  if $(KUBECONFORM_RUN) $$f >/dev/null 2>&1; then echo "kubeconform accepted $$f, which is broken"; exit 1; fi; \
	done; echo "kubeconform refused each of deploy/k8s/testdata/*.yaml, as it should"

# The AsyncAPI CLI from npm, installed once into ~/.cache/yibao (no lock file, no
# global install); its usage analytics off (a config file of its own, no network).
ASYNCAPI_CLI_VERSION := 4.1.1
ASYNCAPI_DIR := $(HOME)/.cache/yibao/asyncapi-cli-$(ASYNCAPI_CLI_VERSION)
ASYNCAPI := $(ASYNCAPI_DIR)/node_modules/.bin/asyncapi
ASYNCAPI_ENV := ASYNCAPI_METRICS_CONFIG_PATH=$(ASYNCAPI_DIR)/analytics.json

$(ASYNCAPI):
	@command -v npm >/dev/null || { echo "make asyncapi-check needs Node.js and npm (apt-get install nodejs npm)"; exit 1; }
	@echo "installing @asyncapi/cli $(ASYNCAPI_CLI_VERSION) (once; a few minutes)"
	mkdir -p $(ASYNCAPI_DIR)
	cd $(ASYNCAPI_DIR) && npm install --no-package-lock --no-save --no-audit --no-fund \
	  --loglevel=error @asyncapi/cli@$(ASYNCAPI_CLI_VERSION)
	printf '{"analyticsEnabled":"false","infoMessageShown":"true","userID":"yibao"}' \
	  > $(ASYNCAPI_DIR)/analytics.json

# docs/asyncapi.json is what shared/asyncapi.py generates from shared/events.py (else:
# python -m shared.asyncapi > docs/asyncapi.json), and the AsyncAPI CLI finds it valid
# with no warning.
asyncapi-check: venv $(ASYNCAPI)
	$(PY) -m shared.asyncapi --check docs/asyncapi.json
	$(ASYNCAPI_ENV) $(ASYNCAPI) validate --fail-severity=warn docs/asyncapi.json

demo: up
	$(PY) -m tests.demo

bench: up
	$(PY) -m bench

clean:
	$(PYTHON) deploy/stack.py clean

# Docker (docs/operators.md "Docker"). An engine that answers is used; else, as root on Debian,
# Debian's docker.io is installed and dockerd started (host networking only). Export
# DOCKER_HOST=unix:///path/docker.sock to keep that engine to yourself.
docker-engine:
	$(PYTHON) deploy/docker_engine.py ensure --compose --debootstrap

docker-engine-stop:
	$(PYTHON) deploy/docker_engine.py stop

# yibao/base (debootstrap), yibao/kafka, yibao/postgres, yibao/app: only what changed.
images: venv
	$(STACK) prepare
	$(PY) deploy/build_images.py build

# deploy/compose.yaml on the host's network (ports 49092, 45432, 48001-48004, 48009,
# 48010: see its header), keys from .run/secrets.env (`make up` or `make ensure-infra`
# writes it once). compose-check: up, healthy, a premium paid, down (a test).
COMPOSE = $$(docker compose version >/dev/null 2>&1 && echo docker compose || echo docker-compose) \
          -p yibao --env-file .run/secrets.env -f deploy/compose.yaml

compose-up: docker-engine images
	@test -f .run/secrets.env || { echo ".run/secrets.env is missing: make ensure-infra once"; exit 1; }
	$(COMPOSE) up -d

compose-down:
	$(COMPOSE) down

compose-check: docker-engine images
	YIBAO_CONTAINER_TESTS=1 $(PY) -m pytest -q tests/containers/test_compose.py

# The e2e suite with Kafka, PostgreSQL and every service in containers of the project's
# images (testcontainers, host network, free ports; nothing pulled, everything removed
# at the end), and compose-check's test. Starts an engine first when none answers.
test-containers: docker-engine images
	YIBAO_CONTAINER_TESTS=1 $(PY) -m pytest tests/containers
