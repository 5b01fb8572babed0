# Pantry: build, run and test. `make run` starts a server on the dev config;
# `make test` runs every unit and integration test.

CARGO ?= cargo
RELEASE := target/release
DEV_CONFIG := deploy/dev

.PHONY: all deps build release run client test fuzz fmt lint clean

all: build

# libzmq with CURVE (Debian's libzmq3-dev is built with libsodium) and
# pkg-config, which the zmq crate uses to find it.
deps:
	@if ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists libzmq; then \
		echo "installing libzmq3-dev and pkg-config"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libzmq3-dev pkg-config; \
	fi

build: deps
	$(CARGO) build --workspace

release: deps
	$(CARGO) build --release --workspace

# A server in the foreground on loopback, state in ./.pantry-dev/server.
run: release
	$(RELEASE)/pantry-server -c $(DEV_CONFIG)/server.yml

# One agent on the dev config, state in ./.pantry-dev/client.
client: release
	$(RELEASE)/pantry-client -c $(DEV_CONFIG)/client.yml

# The integration tests start the real binaries: build them first (cargo
# test alone builds a binary only for its own package's integration tests).
test: deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	$(MAKE) fuzz

# A bounded fuzz run (FUZZ_SECONDS per target) of the message decoder and
# the config and key-store loaders over fuzz/corpus. Long runs:
# `make fuzz FUZZ_SECONDS=3600`.
FUZZ_SECONDS ?= 20
fuzz:
	SECONDS_PER_TARGET=$(FUZZ_SECONDS) fuzz/run.sh

fmt:
	$(CARGO) fmt --all

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf .pantry-dev
