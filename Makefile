# Pantry: build, run and test. `make run` starts a server on the dev config;
# `make test` runs every unit and integration test.

CARGO ?= cargo
RELEASE := target/release
DEV_CONFIG := deploy/dev

.PHONY: all deps build release run cluster client test fuzz docs install deb test-packaging fmt lint clean

all: build

# libzmq with CURVE (Debian's libzmq3-dev is built with libsodium),
# pkg-config, which the zmq crate uses to find it, and systemd for
# `systemd-analyze verify` of the units.
deps:
	@missing=""; \
	command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libzmq || missing="libzmq3-dev pkg-config"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v protoc >/dev/null 2>&1 || missing="$$missing protobuf-compiler"; \
	command -v etcd >/dev/null 2>&1 || missing="$$missing etcd-server"; \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	$(CARGO) build --workspace

release: deps
	$(CARGO) build --release --workspace

# A server in the foreground on loopback, state in ./.pantry-dev/server.
run: release
	$(RELEASE)/pantry-server -c $(DEV_CONFIG)/server.yml

# A local three-server cluster on one etcd (CURVE), state in
# ./.pantry-dev/cluster: deploy/dev/cluster.sh says how to use it.
cluster: release
	RELEASE=$(RELEASE) deploy/dev/cluster.sh

# One agent on the dev config, state in ./.pantry-dev/client.
client: release
	$(RELEASE)/pantry-client -c $(DEV_CONFIG)/client.yml

# The integration tests start the real binaries: build them first (cargo
# test alone builds a binary only for its own package's integration tests).
test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	$(MAKE) fuzz
	$(MAKE) test-packaging

# A bounded fuzz run (FUZZ_SECONDS per target) of the message decoder and
# the config and key-store loaders over fuzz/corpus. Long runs:
# `make fuzz FUZZ_SECONDS=3600`.
FUZZ_SECONDS ?= 20
fuzz:
	SECONDS_PER_TARGET=$(FUZZ_SECONDS) fuzz/run.sh

# Man pages and shell completions from the clap definitions.
DOCS := target/docs
docs: release
	rm -rf $(DOCS)
	for p in server client admin; do PANTRY_GENERATE_DOCS=$(DOCS) $(RELEASE)/pantry-$$p; done

# make install [PREFIX=/usr/local] [DESTDIR=]: binaries, systemd units,
# default configs (an existing /etc/pantry/*.yml is never overwritten),
# logrotate, man pages and completions.
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
UNITDIR ?= $(SYSCONFDIR)/systemd/system
install: docs
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/pantry \
		$(DESTDIR)$(SYSCONFDIR)/logrotate.d $(DESTDIR)$(PREFIX)/share/man/man1 \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions $(DESTDIR)$(PREFIX)/share/zsh/site-functions \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d $(DESTDIR)$(PREFIX)/share/doc/pantry-server/examples
	for p in server client admin; do install -m 755 $(RELEASE)/pantry-$$p $(DESTDIR)$(PREFIX)/bin/; done
	for u in server client; do \
		sed 's#/usr/bin/pantry-#$(PREFIX)/bin/pantry-#; s#/etc/pantry/#$(SYSCONFDIR)/pantry/#' \
			deploy/systemd/pantry-$$u.service > $(DESTDIR)$(UNITDIR)/pantry-$$u.service; \
		chmod 644 $(DESTDIR)$(UNITDIR)/pantry-$$u.service; \
		[ -e $(DESTDIR)$(SYSCONFDIR)/pantry/$$u.yml ] || install -m 644 deploy/$$u.yml $(DESTDIR)$(SYSCONFDIR)/pantry/; \
	done
	install -m 644 deploy/logrotate/pantry $(DESTDIR)$(SYSCONFDIR)/logrotate.d/pantry
	install -m 644 deploy/grafana/pantry.json $(DESTDIR)$(PREFIX)/share/doc/pantry-server/examples/grafana-pantry.json
	install -m 644 deploy/prometheus/pantry-alerts.yml $(DESTDIR)$(PREFIX)/share/doc/pantry-server/examples/
	install -m 644 $(DOCS)/man/man1/*.1 $(DESTDIR)$(PREFIX)/share/man/man1/
	for p in server client admin; do \
		install -m 644 $(DOCS)/completions/bash/pantry-$$p.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/pantry-$$p; \
		install -m 644 $(DOCS)/completions/zsh/_pantry-$$p $(DESTDIR)$(PREFIX)/share/zsh/site-functions/; \
		install -m 644 $(DOCS)/completions/fish/pantry-$$p.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/; \
	done

# Debian packages: pantry-server (server + admin) and pantry-client.
deb: docs
	command -v cargo-deb >/dev/null 2>&1 || $(CARGO) install --locked cargo-deb
	$(CARGO) deb --no-build -p pantry-server
	$(CARGO) deb --no-build -p pantry-client

# systemd-analyze verify on the units, `make install` into a scratch
# DESTDIR, and (as root) installing and removing the server package.
test-packaging: deps deb
	deploy/tests/packaging.sh

fmt:
	$(CARGO) fmt --all

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf .pantry-dev

# The benchmark (never part of `make test`): the release pantry-server with
# 1 to 4,000 simulated agents against a raw-libzmq relay; writes
# bench/results/latest.md and bench/results/fanout.svg.
.PHONY: bench
bench: deps
	$(CARGO) build --release --workspace --bins
	$(RELEASE)/pantry-bench --server $(RELEASE)/pantry-server --client $(RELEASE)/pantry-client --out bench/results
