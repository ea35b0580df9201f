# Two commands do all the set-up on a fresh machine:
#   make demo   a one-machine cluster with its own ZooKeeper, running the classic example
#   make test   the test suite against a real ZooKeeper
# Each installs what it needs: ZooKeeper from the distribution, a virtualenv, the project.

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
ZK_JAR := /usr/share/java/zookeeper.jar
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: demo test bench chaos zookeeper venv clean

demo: venv zookeeper
	$(VENV)/bin/clusterctl up --run '$(VENV)/bin/python examples/classic.py'

test: venv zookeeper
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS) tests

bench: venv zookeeper
	$(VENV)/bin/python bench/run.py

venv: $(STAMP)

$(STAMP): pyproject.toml
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $(STAMP)

zookeeper:
	@if [ ! -f $(ZK_JAR) ] || ! command -v java >/dev/null; then \
		echo "installing ZooKeeper from the distribution (apt)"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq zookeeper >/dev/null; \
	fi

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
