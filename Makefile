# sheepdog: build, check, test, install and demo targets.
# `make` builds the single executable ./sheepdog (bun build --compile); `make test` is what CI runs.
# bun and deno come from npm: they live in node_modules/.bin/ (not on PATH); `make dev-bun ARGS=...`
# and `make dev-deno ARGS=...` run mod.ts from source with them.

SHELL := /bin/bash
.DEFAULT_GOAL := build

BIN     := node_modules/.bin
BUN     := $(BIN)/bun
DENO    := $(BIN)/deno
PREFIX  ?= /usr/local
DESTDIR ?=
SYSTEMD_DIR ?= /etc/systemd/system
BASH_COMPLETION_DIR ?= $(PREFIX)/share/bash-completion/completions
LOGROTATE_DIR ?= /etc/logrotate.d

SRC_DIRS := core io cli drivers sheep
SOURCES  := mod.ts $(shell find $(SRC_DIRS) -name '*.ts' -type f 2>/dev/null | sort)
# Stamp newer than package.json/package-lock.json once node_modules matches them.
DEPS_STAMP := node_modules/.sheepdog-deps

APT_PKGS := qemu-utils libnbd-bin nbdkit fio zookeeper corosync libcpg-dev netcat-openbsd chromium systemd jq iproute2 \
            libzookeeper-mt2

.PHONY: all build deps apt-deps node-deps check unit test test-long chaos bench deno-compile \
        clean install uninstall run stop status cpg-bridge dev-bun dev-deno completion

all: build

build: sheepdog cpg-bridge

sheepdog: $(DEPS_STAMP) $(SOURCES)
	$(BUN) build --compile --minify --bytecode --format=esm mod.ts --outfile $@

# The corosync driver's CPG helper (C, libcpg). Whether libcpg-dev is there is decided when the
# recipe runs, not when make reads this file, so the `make test` that installs it also builds the
# bridge. Without the header everything but `-c corosync` works, and the corosync tests fail
# naming libcpg-dev (see tests/lib/components.ts).
CPG_BRIDGE  := drivers/cpg-bridge
BRIDGE_CC   ?= gcc
CPG_HEADERS := /usr/include/corosync/cpg.h /usr/local/include/corosync/cpg.h

cpg-bridge:
	@found=""; for h in $(CPG_HEADERS); do [ -f "$$h" ] && found="$$h" && break; done; \
	if [ -n "$$found" ]; then \
	  $(MAKE) --no-print-directory -q $(CPG_BRIDGE) 2>/dev/null \
	    || $(MAKE) --no-print-directory $(CPG_BRIDGE); \
	else echo "note: corosync/cpg.h not found (Debian package libcpg-dev): $(CPG_BRIDGE) not built," \
	  "so -c corosync will not work (make apt-deps && make build)"; fi

$(CPG_BRIDGE): drivers/cpg-bridge.c
	$(BRIDGE_CC) -O2 -Wall -o $@ $< -lcpg

# node_modules must match package-lock.json exactly: npm ci when it is missing or older than the
# lock or package.json. An out-of-sync lock is an error to fix in the repository (there is no
# fallback to npm install, which would resolve other versions than the ones committed).
$(DEPS_STAMP): package.json package-lock.json
	@set -e; \
	if [ ! -x $(BUN) ] || [ ! -x $(DENO) ] || [ ! -f node_modules/.package-lock.json ] \
	   || [ package-lock.json -nt node_modules/.package-lock.json ] \
	   || [ package.json -nt node_modules/.package-lock.json ]; then \
	  echo "npm ci (node_modules from package-lock.json)"; \
	  log=$$(mktemp); \
	  if ! npm ci --no-audit --no-fund >"$$log" 2>&1; then \
	    sed '/Clean install a project/,$$d' "$$log" >&2; rm -f "$$log"; \
	    echo "error: npm ci failed. If it says package.json and package-lock.json are not in sync," \
	      "regenerate the lock (npm install --package-lock-only) and commit it." >&2; exit 1; \
	  fi; \
	  cat "$$log"; rm -f "$$log"; \
	fi
	@touch $@

package-lock.json:
	@echo "error: package-lock.json is missing: restore it from git (npm ci needs it)" >&2; exit 1

node-deps: $(DEPS_STAMP)

# Debian packages the tests drive (NBD clients, fio, ZooKeeper, corosync + libcpg for the bridge,
# chromium for the dashboard test, systemd-analyze to verify the units in packaging/), and
# libzookeeper-mt2, the one runtime library of the C Sheepdog reference (../shared/reference/
# c-sheepdog) that corosync does not bring, for `make bench`'s rows against C.
# Installs only what is missing; a temporary policy-rc.d keeps apt from starting corosync or
# zookeeper services, since the tests run their own instances.
apt-deps:
	@set -e; missing=""; \
	for p in $(APT_PKGS); do \
	  dpkg -s "$$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "Debian packages present: $(APT_PKGS)"; exit 0; fi; \
	echo "installing Debian packages:$$missing"; \
	SUDO=""; if [ "$$(id -u)" -ne 0 ]; then SUDO="sudo"; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	prc=""; if [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$$SUDO" ]; then \
	  prc=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' > $$prc; chmod 755 $$prc; \
	  trap 'rm -f /usr/sbin/policy-rc.d' EXIT; fi; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q || echo "warning: apt-get update failed"; \
	$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $$missing </dev/null; \
	echo "installed Debian packages:$$missing"

deps: apt-deps node-deps

# Sources are type-checked by Deno (no Bun types, so they stay portable); tests/ and bench/ by tsc
# with Bun's types (tests/tsconfig.json), as bun runs them. Lint and formatting cover the whole tree.
check: node-deps
	$(DENO) check mod.ts
	$(BIN)/tsc -p tests
	$(DENO) lint
	$(DENO) fmt --check

# Pure unit tests (no daemons, no Debian packages): seconds.
unit: node-deps
	bash tests/run.sh $(sort $(wildcard tests/unit/*.test.ts))

# One step after the other (also under -j): the build must see what apt-deps installed.
test:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory check
	bash tests/run.sh

test-long:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory check
	SHEEPDOG_LONG=1 bash tests/run.sh

# Chaos runs (tests/lib/chaos.ts; minutes, needs root for the tmpfs stores): 17 nemesis events on
# each of seeds 1-3 by default. SEED=n replays one seed; SEEDS and CHAOS_EVENTS change the amount.
chaos: node-deps build
	$(BUN) tests/lib/chaos-main.ts

# Run the sources without compiling, e.g. make dev-bun ARGS="dog vdi list -p 7000".
dev-bun: node-deps
	$(BUN) mod.ts $(ARGS)

dev-deno: node-deps
	$(DENO) run -A mod.ts $(ARGS)

# A fresh machine: the same Debian packages as the tests (the NBD clients, qemu-nbd and nbdkit as
# references, the C reference's libraries).
bench:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory build
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
	@# sheepdog.service runs one sheep; sheepdog@<port>.service one of several on the host.
	@if [ -n "$(DESTDIR)" ] || [ -d $(SYSTEMD_DIR) ]; then \
	  install -d $(DESTDIR)$(SYSTEMD_DIR) && \
	  for u in sheepdog.service sheepdog@.service; do \
	    sed 's#/usr/local/bin/sheepdog#$(PREFIX)/bin/sheepdog#g' packaging/$$u \
	      > $(DESTDIR)$(SYSTEMD_DIR)/$$u && \
	    chmod 0644 $(DESTDIR)$(SYSTEMD_DIR)/$$u && \
	    echo "installed $(DESTDIR)$(SYSTEMD_DIR)/$$u" || exit 1; \
	  done; \
	else echo "no $(SYSTEMD_DIR): systemd units not installed"; fi
	install -D -m 0644 packaging/dog.bash-completion $(DESTDIR)$(BASH_COMPLETION_DIR)/dog
	install -D -m 0644 packaging/logrotate/sheepdog $(DESTDIR)$(LOGROTATE_DIR)/sheepdog

# dog's bash completion is generated from its command table (tests/unit/completion.test.ts checks
# the committed file is current).
completion: node-deps
	$(BUN) packaging/completion.ts > packaging/dog.bash-completion

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/sheep $(DESTDIR)$(PREFIX)/bin/dog $(DESTDIR)$(PREFIX)/bin/sheepdog
	rm -f $(DESTDIR)$(PREFIX)/bin/cpg-bridge
	rm -f $(DESTDIR)$(SYSTEMD_DIR)/sheepdog.service $(DESTDIR)$(SYSTEMD_DIR)/sheepdog@.service
	rm -f $(DESTDIR)$(BASH_COMPLETION_DIR)/dog $(DESTDIR)$(LOGROTATE_DIR)/sheepdog

# Quick start: local 3-node cluster with VDI `demo` exported over NBD (see packaging/demo.sh).
# DEMO_DIR, DEMO_BASE_PORT, DEMO_NBD_PORT (and DEMO_VDI, DEMO_SIZE) move it, e.g.
# `make run DEMO_DIR=/srv/demo DEMO_BASE_PORT=7100`; stop and status take the same DEMO_DIR.
DEMO_VARS := DEMO_DIR DEMO_BASE_PORT DEMO_NBD_PORT DEMO_VDI DEMO_SIZE
DEMO_ENV   = $(strip $(foreach v,$(DEMO_VARS),$(if $($(v)),$(v)='$($(v))')))

run:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory build
	$(DEMO_ENV) bash packaging/demo.sh start

stop:
	$(DEMO_ENV) bash packaging/demo.sh stop

status:
	$(DEMO_ENV) bash packaging/demo.sh status
