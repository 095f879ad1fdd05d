# Developer entry points. The real-API tests need the local control plane binaries, built
# once per pin into ~/.cache/wharf/controlplane/<pin-hash>/ (see tools/controlplane/).

PYTHON ?= python3

.PHONY: run test controlplane controlplane-up controlplane-down test-realapi e2e-local

# The README's two commands. `run`: the broker on its embedded default config, as `wharf-broker` runs it anywhere
# (a local CA and certificates generated on the first start in ~/.local/state/wharf/certs, or $WHARF_HOME/certs).
run:
	scripts/bootstrap run
	$(PYTHON) -m wharf_broker

# `test`: installs what the tests need (Debian packages, Python extras, the local control plane, helm) and runs
# the whole suite. .ci/run calls this.
test:
	scripts/bootstrap test
	$(PYTHON) -m pytest

# Build (or find in the cache) etcd, kube-apiserver, kube-controller-manager, kube-scheduler
# and kwok. Niced: a cold build keeps both cores busy for a long while.
controlplane:
	nice -n 10 tools/controlplane/build.sh

# The same control plane the tests use, for manual work: prints the admin kubeconfig path.
controlplane-up: controlplane
	scripts/controlplane up

controlplane-down:
	scripts/controlplane down

# Tests against the real apiserver (CRD validation, RBAC, garbage collection, kwok Pods).
test-realapi: controlplane
	$(PYTHON) -m pytest tests/realapi -q

# End to end on this machine: the real operator (chart RBAC) against the real control plane,
# real broker processes for the kwok Pods, a certificate rotation under MQTT traffic. Prints
# `rotation latency: p50=<s>s max=<s>s`.
e2e-local: controlplane
	$(PYTHON) -m pytest tests/realapi/test_operator.py tests/realapi/test_rotation_e2e.py -q -s -p no:cacheprovider
