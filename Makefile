# Two set-up commands for a fresh machine: `make demo` and `make test`.
# Both create .venv and install rulegen into it; `make test` also installs the
# Debian packages the kernel-facing tests use (iptables, nftables, iproute2,
# ipset, ipvsadm, conntrack, and for the IPVS VM qemu-system-x86, kmod, udev,
# busybox-static; chromium for the browser test of `rulegen explain`'s page)
# when they are missing and we are root, and unpacks a Debian
# kernel into .vm/kernel for the IPVS VM (tests/vmhelp.py). `make vm-test`
# runs only the tests that run inside that VM.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYS_TOOLS := iptables-restore:iptables nft:nftables ip:iproute2 ipset:ipset ipvsadm:ipvsadm conntrack:conntrack sysctl:procps \
             qemu-system-x86_64:qemu-system-x86 modprobe:kmod udevadm:udev busybox:busybox-static mke2fs:e2fsprogs \
             chromium:chromium
# The IPVS VM's kernel: the package linux-image-amd64 depends on, unpacked (not installed).
VM_DIR     := .vm
VM_KERNEL  := $(VM_DIR)/kernel
VM_FREE_MB := 700

.PHONY: demo test vm-test vm-kernel bench sysdeps venv clean explain-png

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
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
	      || echo "warning: apt-get could not install:$$missing"; \
	  else \
	    echo "note: missing$$missing and not root: kernel tests will be skipped"; \
	  fi; \
	fi

# Fetch and unpack the kernel once; .ready (its version) is written last, so a
# broken download is tried again. Without root, room or the package, the VM
# tests are skipped, each with the reason (tests/vmhelp.py).
vm-kernel:
	@if [ -s $(VM_KERNEL)/.ready ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "note: not root: no kernel for the IPVS VM, its tests will be skipped"; exit 0; fi; \
	mkdir -p $(VM_DIR); \
	free=$$(df -Pm $(VM_DIR) | awk 'NR==2 {print $$4}'); \
	if [ "$$free" -lt $(VM_FREE_MB) ]; then \
	  echo "note: only $$free MB free (the IPVS VM's kernel needs $(VM_FREE_MB)): its tests will be skipped"; exit 0; fi; \
	pkg=$$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $$2; exit}'); \
	if [ -z "$$pkg" ]; then apt-get update -qq; \
	  pkg=$$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $$2; exit}'); fi; \
	if [ -z "$$pkg" ]; then echo "note: no linux-image-amd64 in the apt lists: the IPVS VM tests will be skipped"; exit 0; fi; \
	ver=$${pkg#linux-image-}; \
	echo "fetching $$pkg for the IPVS VM into $(VM_KERNEL)"; \
	rm -rf $(VM_DIR)/deb $(VM_KERNEL); mkdir -p $(VM_DIR)/deb; \
	if ! (cd $(VM_DIR)/deb && apt-get download -q -o APT::Sandbox::User=root $$pkg >/dev/null); then \
	  apt-get update -qq; (cd $(VM_DIR)/deb && apt-get download -q -o APT::Sandbox::User=root $$pkg >/dev/null) \
	  || { echo "note: could not download $$pkg: the IPVS VM tests will be skipped"; rm -rf $(VM_DIR)/deb; exit 0; }; fi; \
	dpkg-deb -x $(VM_DIR)/deb/*.deb $(VM_KERNEL) && depmod -a -b $(VM_KERNEL) $$ver \
	  && echo "$$ver" > $(VM_KERNEL)/.ready || echo "note: unpacking $$pkg failed: the IPVS VM tests will be skipped"; \
	rm -rf $(VM_DIR)/deb

demo: $(STAMP)
	$(BIN)/rulegen compile examples/web-frontend/

test: sysdeps vm-kernel $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

# Only the tests that run inside the IPVS VM (one boot; the host prints how long it took).
vm-test: sysdeps vm-kernel $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider -m ipvs_kernel

# Every benchmark always runs; the target fails afterwards if any missed a budget.
bench: sysdeps $(STAMP)
	@status=0; $(BIN)/python -m rulegen.bench.run || status=1; \
	if [ "$$(id -u)" = 0 ]; then \
	  $(BIN)/python -m rulegen.bench.incremental --services 10000 --endpoints 10 --check-budget \
	    -o bench-incremental.md || status=1; \
	  $(BIN)/python -m rulegen.bench.nftload --sizes 100,1000,5000,10000 --endpoints 10 --source compile \
	    --repeat 3 --check-budget -o bench-nftables.md || status=1; \
	else echo "skipping the apply benchmarks (incremental, nftables load): they need root (network namespaces)"; fi; \
	exit $$status

# The README's picture of `rulegen explain`'s page for the example, remade with headless Chromium.
explain-png: sysdeps $(STAMP)
	$(BIN)/python scripts/explain_screenshot.py

clean:
	rm -rf $(VENV) $(VM_DIR) build *.egg-info .pytest_cache .hypothesis
