# llmfleet: `make lab` brings the whole stack up on local containers,
# `make test` runs everything CI runs. Both set themselves up on a fresh
# Debian/Ubuntu machine (system packages, .venv, the test image).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV        ?= .venv
PYTHON      ?= python3
BIN         := $(VENV)/bin
SCENARIO    ?= common
# Molecule platform: debian12 (local image, default), ubuntu2204, ubuntu2404.
MOLECULE_DISTRO ?= debian12

export CONTAINERS_CONF := $(CURDIR)/tests/harness/containers.conf
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export MOLECULE_DISTRO
ifeq ($(filter $(MOLECULE_DISTRO),debian12 ubuntu2204 ubuntu2404),)
$(error MOLECULE_DISTRO must be debian12, ubuntu2204 or ubuntu2404, not '$(MOLECULE_DISTRO)')
endif

SYSTEM_PACKAGES := podman runc debootstrap python3-venv openssl curl

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: system-packages
system-packages: ## Install podman, runc, debootstrap (apt) when missing
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

.PHONY: venv
venv: $(VENV)/.stamp ## Create .venv with the service and the pinned toolchain

.PHONY: image
image: system-packages ## Build the Debian 12 systemd test image (cached by recipe hash)
	@tests/harness/build-image.sh

.PHONY: wheelhouse
wheelhouse: venv ## Wheels of the service's pinned dependencies for the test containers (cached by pin hash)
	@tests/harness/wheelhouse.sh || echo "wheelhouse: not built; the test containers install from PyPI" >&2

.PHONY: setup
setup: system-packages venv image wheelhouse ## Everything the tests and the lab need

.PHONY: lint
lint: venv ## ansible-lint (production), yamllint, ruff
	$(BIN)/ansible-lint
	$(BIN)/yamllint -s .
	$(BIN)/ruff check service tests molecule/shared/files roles
	$(BIN)/ruff format --check service tests molecule/shared/files roles

.PHONY: unit
unit: venv ## pytest: the service and repository checks
	$(BIN)/pytest

.PHONY: molecule
molecule: setup ## One scenario: make molecule SCENARIO=common [MOLECULE_DISTRO=...]
	$(BIN)/molecule test -s $(SCENARIO)

.PHONY: molecule-all
molecule-all: setup ## Every Molecule scenario
	@for s in $$(tests/harness/scenarios.sh); do $(BIN)/molecule test -s $$s || exit 1; done

.PHONY: measure
measure: setup ## Failover figures: ha_pair with 5 nginx-stop and 3 path-cut runs (reports/ha_pair-failover.json)
	FAILOVER_NGINX_RUNS=5 FAILOVER_PATH_RUNS=3 $(BIN)/molecule test -s ha_pair

.PHONY: test
test: ## Everything CI runs, with a summary at the end
	@start=$$SECONDS; $(MAKE) --no-print-directory setup || exit 1; \
	SETUP_SECONDS=$$((SECONDS - start)) tests/harness/run-suite.sh

.PHONY: lab
lab: setup ## The whole stack on local containers
	@tests/harness/lab.sh up

.PHONY: lab-down
lab-down: ## Remove every container, network and volume the lab made
	@tests/harness/lab.sh down

.PHONY: clean
clean: lab-down ## Remove the lab, .venv and caches (the test image stays)
	rm -rf $(VENV) .cache reports .pytest_cache .ruff_cache
