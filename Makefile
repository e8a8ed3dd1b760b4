# Two set-up commands for a fresh machine: `make demo` and `make test`.
# Both create .venv and install rulegen into it; `make test` also installs the
# Debian packages the kernel-facing tests use (iptables, nftables, iproute2,
# ipset, ipvsadm, conntrack) when they are missing and we are root.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYS_TOOLS := iptables-restore:iptables nft:nftables ip:iproute2 ipset:ipset ipvsadm:ipvsadm conntrack:conntrack sysctl:procps

.PHONY: demo test bench sysdeps venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

sysdeps:
	@missing=""; \
	for pair in $(SYS_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "note: missing$$missing and not root: kernel tests will be skipped"; \
	  fi; \
	fi

demo: $(STAMP)
	$(BIN)/rulegen compile examples/web-frontend/

test: sysdeps $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

# Both benchmarks always run; the target fails afterwards if either missed a budget.
bench: sysdeps $(STAMP)
	@status=0; $(BIN)/python -m rulegen.bench.run || status=1; \
	if [ "$$(id -u)" = 0 ]; then \
	  $(BIN)/python -m rulegen.bench.incremental --services 10000 --endpoints 10 --check-budget \
	    -o bench-incremental.md || status=1; \
	else echo "skipping the incremental apply benchmark: it needs root (network namespaces)"; fi; \
	exit $$status

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
