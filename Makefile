# sheepdog: build, check, test, install and demo targets.
# `make` builds the single executable ./sheepdog (bun build --compile); `make test` is what CI runs.

SHELL := /bin/bash
.DEFAULT_GOAL := build

BIN     := node_modules/.bin
BUN     := $(BIN)/bun
DENO    := $(BIN)/deno
PREFIX  ?= /usr/local
DESTDIR ?=
SYSTEMD_DIR ?= /etc/systemd/system

SRC_DIRS := core io cli drivers sheep
SOURCES  := mod.ts $(shell find $(SRC_DIRS) -name '*.ts' -type f 2>/dev/null | sort)
# Stamp newer than package.json/package-lock.json once node_modules matches them.
DEPS_STAMP := node_modules/.sheepdog-deps

APT_PKGS := qemu-utils libnbd-bin nbdkit fio zookeeper corosync libcpg-dev netcat-openbsd

.PHONY: all build deps apt-deps node-deps check test test-long bench deno-compile \
        clean install uninstall run stop status cpg-bridge

all: build

build: sheepdog cpg-bridge

sheepdog: $(DEPS_STAMP) $(SOURCES)
	$(BUN) build --compile --minify --bytecode --format=esm mod.ts --outfile $@

# The corosync driver's CPG helper (C, libcpg). Skipped with a note when libcpg-dev is missing:
# everything but `-c corosync` works without it.
CPG_BRIDGE := drivers/cpg-bridge
BRIDGE_CC  ?= gcc
CPG_HEADER := $(firstword $(wildcard /usr/include/corosync/cpg.h /usr/local/include/corosync/cpg.h))

ifneq ($(CPG_HEADER),)
cpg-bridge: $(CPG_BRIDGE)
else
cpg-bridge:
	@echo "corosync/cpg.h not found (install libcpg-dev): skipping $(CPG_BRIDGE); -c corosync will not work"
endif

$(CPG_BRIDGE): drivers/cpg-bridge.c
	$(BRIDGE_CC) -O2 -Wall -o $@ $< -lcpg

# node_modules must match package-lock.json: npm ci when it is missing or older than the lock or
# package.json; npm install when there is no lock or npm ci refuses an out-of-sync one.
$(DEPS_STAMP): package.json $(wildcard package-lock.json)
	@set -e; \
	if [ ! -f package-lock.json ]; then \
	  echo "npm install"; npm install --no-audit --no-fund; \
	elif [ ! -x $(BUN) ] || [ ! -x $(DENO) ] || [ ! -f node_modules/.package-lock.json ] \
	     || [ package-lock.json -nt node_modules/.package-lock.json ] \
	     || [ package.json -nt node_modules/.package-lock.json ]; then \
	  log=$$(mktemp); \
	  if npm ci --no-audit --no-fund >"$$log" 2>&1; then cat "$$log"; \
	  else grep -m3 'npm error' "$$log" || true; echo "npm ci refused; running npm install"; \
	    npm install --no-audit --no-fund; fi; \
	  rm -f "$$log"; \
	fi
	@touch $@

node-deps: $(DEPS_STAMP)

# Debian packages the tests drive (NBD clients, fio, ZooKeeper, corosync + libcpg for the bridge).
# Installs only what is missing; a temporary policy-rc.d keeps apt from starting corosync or
# zookeeper services, since the tests run their own instances.
apt-deps:
	@set -e; missing=""; \
	for p in $(APT_PKGS); do \
	  dpkg -s "$$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "installing Debian packages:$$missing"; \
	SUDO=""; if [ "$$(id -u)" -ne 0 ]; then SUDO="sudo"; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	prc=""; if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$$SUDO" ]; then \
	  prc=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' > $$prc; chmod 755 $$prc; \
	  trap 'rm -f /usr/sbin/policy-rc.d' EXIT; fi; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q || echo "warning: apt-get update failed"; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $$missing </dev/null

deps: apt-deps node-deps

check: node-deps
	$(DENO) check mod.ts
	$(DENO) lint

test: deps build check
	bash tests/run.sh

test-long: deps build check
	SHEEPDOG_LONG=1 bash tests/run.sh

bench: node-deps build
	@if [ -f bench/run.ts ]; then $(BUN) bench/run.ts; else echo "bench/run.ts does not exist yet"; fi

# Needs to download Deno's denort runtime: works only where that host is reachable.
deno-compile: node-deps
	$(DENO) compile -A --output sheepdog-deno mod.ts

clean:
	rm -f sheepdog sheepdog-deno .*.bun-build $(CPG_BRIDGE)

install: build
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 sheepdog $(DESTDIR)$(PREFIX)/bin/sheepdog
	ln -sf sheepdog $(DESTDIR)$(PREFIX)/bin/sheep
	ln -sf sheepdog $(DESTDIR)$(PREFIX)/bin/dog
	@# The corosync driver looks for cpg-bridge next to the executable.
	@if [ -x $(CPG_BRIDGE) ]; then \
	  install -m 0755 $(CPG_BRIDGE) $(DESTDIR)$(PREFIX)/bin/cpg-bridge && \
	  echo "installed $(DESTDIR)$(PREFIX)/bin/cpg-bridge"; \
	else echo "no $(CPG_BRIDGE) (libcpg-dev missing?): -c corosync will not work"; fi
	@if [ -n "$(DESTDIR)" ] || [ -d $(SYSTEMD_DIR) ]; then \
	  install -d $(DESTDIR)$(SYSTEMD_DIR) && \
	  sed 's#/usr/local/bin/sheepdog#$(PREFIX)/bin/sheepdog#g' packaging/sheepdog.service \
	    > $(DESTDIR)$(SYSTEMD_DIR)/sheepdog.service && \
	  chmod 0644 $(DESTDIR)$(SYSTEMD_DIR)/sheepdog.service && \
	  echo "installed $(DESTDIR)$(SYSTEMD_DIR)/sheepdog.service"; \
	else echo "no $(SYSTEMD_DIR): skipping the systemd unit"; fi

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/sheep $(DESTDIR)$(PREFIX)/bin/dog $(DESTDIR)$(PREFIX)/bin/sheepdog
	rm -f $(DESTDIR)$(PREFIX)/bin/cpg-bridge
	rm -f $(DESTDIR)$(SYSTEMD_DIR)/sheepdog.service

# Quick start: local 3-node cluster with VDI `demo` exported over NBD (see packaging/demo.sh).
run: deps build
	bash packaging/demo.sh start

stop:
	bash packaging/demo.sh stop

status:
	bash packaging/demo.sh status
