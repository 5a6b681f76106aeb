# hypervm — `make demo` runs a real workload in a real HyperVM; `make test` runs every test.
# Both work on a fresh Debian 12 machine as root and are safe to run twice: they install what is
# missing (apt packages, a venv, pip packages), start libvirt, and build the guest artefacts
# (HyperKernel: once per machine, cached by the hash of its config; init; initrd).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
PYTEST_ARGS ?=

APT_PACKAGES := \
	build-essential pkg-config python3-venv python3-dev \
	qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-dev \
	linux-source-6.1 bc flex bison libelf-dev libssl-dev xz-utils cpio \
	musl-tools busybox-static erofs-utils e2fsprogs \
	skopeo umoci podman docker-registry dnsmasq-base iproute2 curl

.PHONY: all deps services artifacts init kernel initrd demo test test-unit bench lint clean

all: artifacts

$(STAMPS)/apt: Makefile
	@mkdir -p $(STAMPS)
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@touch $@

$(STAMPS)/venv: setup.cfg pyproject.toml $(STAMPS)/apt
	@mkdir -p $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

deps: $(STAMPS)/apt $(STAMPS)/venv

# libvirt's daemons, started only when they are not running (no systemd in containers/CI).
services: deps
	@pgrep -x virtlogd >/dev/null || virtlogd -d
	@pgrep -x libvirtd >/dev/null || libvirtd -d
	@for i in $$(seq 50); do virsh -c qemu:///system version >/dev/null 2>&1 && exit 0; sleep 0.2; done; \
		echo "libvirtd did not come up" >&2; exit 1

init: deps
	$(MAKE) -C init

kernel: deps
	$(PY) -m vmimage.kernel build

initrd: init
	$(PY) -m vmimage.initrd build

artifacts: kernel initrd

demo: services artifacts
	@$(VENV)/bin/hypervm demo

test: services artifacts
	$(PY) -m pytest $(PYTEST_ARGS) tests

test-unit: deps
	$(PY) -m pytest $(PYTEST_ARGS) tests/unit

bench: services artifacts
	$(PY) -m bench

lint: deps
	$(VENV)/bin/ruff check executor vmimage scheduler tests bench
	$(VENV)/bin/mypy executor vmimage scheduler

clean:
	$(MAKE) -C init clean
	rm -rf $(STAMPS) build *.egg-info
