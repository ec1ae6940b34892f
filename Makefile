# kurmad developer entry points. `make test` is the one command that checks everything.

PYTHON ?= /usr/bin/python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the build, the tests and the benchmarks need on a fresh Debian 12 machine.
APT_PACKAGES := python3 python3-venv make busybox-static zstd xz-utils bzip2 gzip util-linux openssl \
	e2fsprogs dnsmasq-base qemu-system-x86 kmod binutils dropbear-bin libudev1 \
	nftables containernetworking-plugins \
	docker-registry umoci skopeo apache2-utils debootstrap
# The peers the benchmarks measure against: installed by make bench, not by CI.
BENCH_PACKAGES := crun runc podman

.PHONY: deps setup lint test chaos clean bench bench-deps bench-import bench-executor bench-api bench-boot bench-vm bench-net bench-pull proto initramfs vm

deps:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 $(APT_PACKAGES)

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $@

lint: setup
	$(VENV)/bin/ruff check kurmad tests bench initrd vm-tests
	$(VENV)/bin/ruff format --check kurmad tests bench initrd vm-tests
	$(VENV)/bin/mypy kurmad initrd

# Every test: unit and integration (root), then the built initramfs booted in QEMU.
test: lint initramfs
	$(PY) -m pytest tests
	$(PY) -m pytest vm-tests

# The kernel (Debian's cloud kernel, downloaded) and the initramfs, rebuilt when a source changes.
INITRAMFS_SOURCES := $(shell find kurmad initrd -name '*.py' -o -name '*.yml' -o -path 'initrd/console/*' -o -path 'initrd/ntp/*') pyproject.toml
initramfs: build/initramfs.cpio.zst

build/initramfs.cpio.zst: $(VENV)/.installed $(INITRAMFS_SOURCES)
	$(PY) -m initrd.build --build build

# Boot a VM into kurmad; the API is forwarded to 127.0.0.1:$(VM_PORT), the serial console is here.
VM_PORT ?= 7777
vm: initramfs
	$(PY) -m initrd.vm --build build --port $(VM_PORT)

# SIGKILL kurmad serve at random moments under mixed load, then check store, pods and what they
# hold on the host after each restart (tests/chaos.py; root). CHAOS_SEED=N repeats a run.
CHAOS_ROUNDS ?= 30
chaos: setup
	$(PY) -m tests.chaos --rounds $(CHAOS_ROUNDS) $(if $(CHAOS_SEED),--seed $(CHAOS_SEED))

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .mypy_cache

# Benchmarks against peers in the same run (medians and ratios); root gives them a tmpfs.
proto: setup
	$(PY) -m kurmad.api.codegen

bench-deps:
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=600 $(BENCH_PACKAGES)

bench: bench-deps bench-import bench-executor bench-api bench-boot bench-vm bench-net bench-pull

bench-import: setup
	$(PY) -m bench.import_bench

bench-executor: setup
	$(PY) -m bench.executor_bench

bench-api: setup
	$(PY) -m bench.api_bench

bench-boot: setup
	$(PY) -m bench.boot_bench

bench-vm: initramfs
	$(PY) -m bench.vm_boot_bench

bench-net: setup
	$(PY) -m bench.net_bench

bench-pull: setup
	$(PY) -m bench.pull_bench
