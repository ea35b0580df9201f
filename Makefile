# Two commands do all the set-up on a fresh machine:
#   make demo   a one-machine cluster with its own ZooKeeper, running the classic example
#   make test   the test suite against a real ZooKeeper (and Chromium, for the dashboard's pages)
# and `make deploy-test` runs the deployment tier: systemd nodes in containers (needs root).
# Each installs what it needs: ZooKeeper (and Chromium) from the distribution, a virtualenv, the project.

PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed
ZK_JAR := /usr/share/java/zookeeper.jar
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# What pytest gets; override to pick tests or add flags, e.g.
#   make test PYTEST_ARGS='tests/test_zkserver.py -x'
# Two pytest workers (pytest-xdist), each with its own ZooKeeper: most tests wait on
# daemons, sessions and timeouts rather than use a core, so two share two cores well.
PYTEST_ARGS ?= -n 2 tests

.PHONY: demo test deploy-test lint format bench chaos zookeeper venv clean

demo: venv zookeeper
	$(VENV)/bin/clusterctl up --run '$(VENV)/bin/python examples/classic.py'

test: venv zookeeper chromium
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# The deployment tier (tests/deploy): ZooKeeper, coordinators and agents installed as
# docs/operations.md says on systemd containers, each node on its own address; `make test`
# leaves it out. It boots them with systemd-nspawn (apt: systemd-container) and makes the
# nodes' virtualenv with the distribution's python3 (apt: python3-venv), both installed
# here when missing; the virtualenv's dependencies are cached in /var/cache/clusterd-deploy.
# Pick scenarios with DEPLOY_ARGS, e.g. make deploy-test DEPLOY_ARGS='-k reboot'
DEPLOY_ARGS ?=
deploy-test: venv zookeeper
	@missing=""; \
	command -v systemd-nspawn >/dev/null || missing="$$missing systemd-container"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing from the distribution (apt)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	$(SUDO) $(VENV)/bin/python -m pytest -q -m deploy tests/deploy $(DEPLOY_ARGS)

# Style (ruff: lint and format) and types (mypy), configured in pyproject.toml.
LINT_PATHS := cluster agents bench tests
lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

# Apply what lint can mend by itself: the format and the fixable lint rules.
format: venv
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

# The peers (the `bench` extra: Dask, IPython Parallel, Ray) have their own stamp. A peer
# that cannot be installed here (no wheel for this Python, say) must not stop the run:
# bench/run.py reports it as "skipped", so when the whole extra fails to install, each
# peer is installed on its own and a failure is only reported.
# Figures as JSON too: make bench BENCH_ARGS='--json bench.json'; smaller: BENCH_ARGS=--quick
# BENCH_BEFORE: the commit whose clusterd runs beside this tree's (W1-W3 side by side);
# c9b54b0 is the last one before RUNNING notifications (issue 16: they must not cost W1). Empty: none.
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=
BENCH_BEFORE ?= c9b54b0

bench: venv zookeeper $(BENCH_STAMP)
	$(VENV)/bin/python -m bench.run $(if $(BENCH_BEFORE),--before $(BENCH_BEFORE)) $(BENCH_ARGS)
	$(VENV)/bin/python -m bench.faults
	$(VENV)/bin/python -m bench.hop
	$(VENV)/bin/python -m bench.timeline

$(BENCH_STAMP): pyproject.toml $(STAMP)
	@out=$$($(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[test,lint,bench]' 2>&1) || { \
		echo "pip install -e '.[test,lint,bench]' failed; installing the benchmark peers one by one"; \
		$(VENV)/bin/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['bench'], sep='\n')" | \
		while read -r req; do \
			if $(VENV)/bin/python -m pip install -q --disable-pip-version-check "$$req" >/dev/null 2>&1; \
			then echo "  installed $$req"; \
			else echo "  $$req did not install: bench/run.py will report it as skipped"; fi; \
		done; }
	touch $(BENCH_STAMP)

# The coordinator and ZooKeeper against 100, 1,000 and 5,000 simulated agents
# (docs/performance.md); e.g. make scale SCALE_ARGS='--agents 1000 --json'.
SCALE_ARGS ?= --agents 100 1000 5000
.PHONY: scale
scale: venv zookeeper
	$(VENV)/bin/python -m bench.scale $(SCALE_ARGS)

# A longer soak of the chaos scenarios: bigger jobs, several rounds.
CHAOS_ROUNDS ?= 5
chaos: venv zookeeper
	for i in $$(seq $(CHAOS_ROUNDS)); do \
		CHAOS_SCALE=5 $(VENV)/bin/python -m pytest -q -x tests/chaos || exit 1; \
	done

# The stamp lives inside the venv (gone with it) and is older than pyproject.toml
# only when the dependencies may have changed, so a re-run costs nothing.
venv: $(STAMP)

$(STAMP): pyproject.toml
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	@# -q still relays the build backend's deprecation banners: show pip's output only on failure.
	@out=$$($(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[test,lint]' 2>&1) \
		|| { echo "$$out"; echo "pip install -e '.[test,lint]' failed"; exit 1; }
	touch $(STAMP)

zookeeper:
	@if [ ! -f $(ZK_JAR) ] || ! command -v java >/dev/null; then \
		echo "installing ZooKeeper from the distribution (apt)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null; \
	fi

# The dashboard's tests drive Debian's chromium through Playwright (its own browser
# download needs the internet; tests/test_dashboard.py points it at /usr/bin/chromium).
.PHONY: chromium
chromium:
	@if ! [ -x /usr/bin/chromium ]; then \
		echo "installing chromium from the distribution (apt), for the dashboard's browser tests"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
