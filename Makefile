# Developer entry points. The real-API tests need the local control plane binaries, built
# once per pin into ~/.cache/wharf/controlplane/<pin-hash>/, and cert-manager's controller, built
# once per its own pin into ~/.cache/wharf/cert-manager/<pin-hash>/ (see tools/controlplane/).

PYTHON ?= python3

.PHONY: run test lint controlplane cert-manager controlplane-up controlplane-down test-realapi e2e-local

# The README's two commands. `run`: the broker on its embedded default config, as `wharf-broker` runs it anywhere
# (a local CA and certificates generated on the first start in ~/.local/state/wharf/certs, or $WHARF_HOME/certs).
run:
	scripts/bootstrap run
	$(PYTHON) -m wharf_broker

# `test`: installs what the tests need (Debian packages, Python extras, the local control plane, helm), runs the
# checks (`lint`) and then the whole suite. .ci/run calls this.
test:
	scripts/bootstrap test
	$(MAKE) --no-print-directory lint
	$(PYTHON) -m pytest

# The static checks, configured in pyproject.toml (docs/architecture.md, "Checks"): ruff, mypy and the import-linter
# layer contracts. mypy and import-linter work on import names, so build/lint/ links wharf_broker and wharf_operator
# to their folders here: they check this checkout whether or not (and from wherever) the package is installed.
# Each check runs even when an earlier one failed; the target fails if any did.
LINT_PATH := build/lint
lint:
	@mkdir -p $(LINT_PATH)
	@ln -sfn ../../broker $(LINT_PATH)/wharf_broker
	@ln -sfn ../../operator/wharf_operator $(LINT_PATH)/wharf_operator
	@status=0; \
	echo "ruff:"; $(PYTHON) -m ruff check . || status=1; \
	echo "mypy:"; $(PYTHON) -m mypy || status=1; \
	echo "import-linter:"; PYTHONPATH=$(LINT_PATH)$${PYTHONPATH:+:$$PYTHONPATH} lint-imports --no-cache --no-logo || status=1; \
	exit $$status

# Build (or find in the cache) etcd, kube-apiserver, kube-controller-manager, kube-scheduler
# and kwok. Niced: a cold build keeps both cores busy for a long while.
controlplane:
	nice -n 10 tools/controlplane/build.sh

# Build (or find in its own cache) cert-manager's controller and its CRDs, for the real-API test
# that has the real cert-manager issue and renew the brokers' certificates.
cert-manager:
	nice -n 10 tools/controlplane/build-cert-manager.sh

# The same control plane the tests use, for manual work: prints the admin kubeconfig path.
controlplane-up: controlplane
	scripts/controlplane up

controlplane-down:
	scripts/controlplane down

# Tests against the real apiserver (CRD validation, RBAC, garbage collection, kwok Pods).
test-realapi: controlplane cert-manager
	$(PYTHON) -m pytest tests/realapi -q

# End to end on this machine: the real operator (chart RBAC) against the real control plane,
# real broker processes for the kwok Pods, a certificate rotation under MQTT traffic, and the real
# cert-manager controller renewing a listener's certificate every ~10 s under MQTT traffic. Prints
# `rotation latency: p50=<s>s max=<s>s` and `cert-manager rotation latency: hop=listener p50=<s>s max=<s>s`.
e2e-local: controlplane cert-manager
	$(PYTHON) -m pytest tests/realapi/test_operator.py tests/realapi/test_rotation_e2e.py \
		tests/realapi/test_certmanager_e2e.py -q -s -p no:cacheprovider
