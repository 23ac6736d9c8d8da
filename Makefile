# Fleet: the commands a developer and CI use. `make help` lists them.
CARGO ?= cargo
FUZZ_SECONDS ?= 300

.PHONY: help demo build device test lint fmt fuzz clean safe-mode-images

help:
	@echo "make demo   - the whole product on this machine: git servers, controller, 3 real agents on Docker, 200 simulated devices (Ctrl-C stops and cleans up)"
	@echo "make test   - formatting, lints and the whole test suite, every test run (what CI runs; as root it installs the packages the tests need)"
	@echo "make build  - release build of every binary"
	@echo "make device - the agent as shipped to devices (target/device/fleet-agent: size-optimised, LTO)"
	@echo "make safe-mode-images - the safe-mode stack's images (fleet/safe-sshd, -exporter, -logship) from Debian's packages with mmdebstrap (root; FORCE=1 rebuilds)"
	@echo "make lint   - cargo fmt --check, clippy with warnings as errors, the crate dependency rules (scripts/check-deps) and cargo deny (licenses, duplicates, sources)"
	@echo "make fmt    - format the code"
	@echo "make fuzz   - fuzz the repository loader for FUZZ_SECONDS (default 300; needs nightly and cargo-fuzz)"

# The demo needs git, a running Docker engine and Debian's busybox-static (its images are built
# from it); as root it installs the packages that are missing (scripts/packages demo).
# DEMO_ARGS are passed on, e.g. DEMO_ARGS="--listen 127.0.0.1:9090 --simulated 500".
demo:
	@scripts/packages install demo
	$(CARGO) build --workspace --bins
	$(CARGO) run -q -p fleet-demo --bin fleet-demo -- run $(DEMO_ARGS)

build:
	$(CARGO) build --workspace --release

device:
	$(CARGO) build --profile device -p fleet-agent

# The safe-mode stack's images from Debian's packages (safe-mode/README.md): skipped when built
# from the same inputs already, FORCE=1 rebuilds; root filesystems cached in ~/.cache/fleet/.
safe-mode-images:
	@scripts/packages install images
	scripts/safe-mode-images $(if $(FORCE),--force)

# cargo deny (deny.toml): licenses, duplicate versions and sources. Not advisories: the
# RustSec database is a Git repository on GitHub, which these machines cannot reach.
CARGO_DENY_VERSION ?= 0.20.2

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	CARGO=$(CARGO) scripts/check-deps
	@command -v cargo-deny >/dev/null || $(CARGO) install --locked cargo-deny --version $(CARGO_DENY_VERSION)
	$(CARGO) deny --log-level error check licenses bans sources

fmt:
	$(CARGO) fmt --all

# `make test` runs every test: as root it first installs the Debian packages the tests need
# (scripts/packages, the list .ci/run uses too); without root it stops and prints the one command
# that installs them. It then makes a missing component a failure, not a skip (FLEET_REQUIRE_*),
# so green means every test ran. FLEET_ALLOW_SKIPS=1 skips the install and lets such tests skip
# loudly instead. PostgreSQL tests use FLEET_TEST_POSTGRES_URL, or a private cluster started here
# (scripts/test-postgres).
# The API fuzzer (schemathesis, from PyPI) gets its own venv outside the repository
# (scripts/schemathesis-venv, ~/.cache/fleet/schemathesis-venv; made once, kept), and so does the
# e-mail notifier's SMTP server (aiosmtpd: scripts/aiosmtpd-venv, ~/.cache/fleet/aiosmtpd-venv).
test:
	@if [ "$${FLEET_ALLOW_SKIPS:-}" != 1 ]; then scripts/packages install test && scripts/schemathesis-venv install && scripts/aiosmtpd-venv install; fi
	$(MAKE) --no-print-directory lint
	@if [ "$${FLEET_ALLOW_SKIPS:-}" != 1 ]; then \
		export FLEET_REQUIRE_GIT=1 FLEET_REQUIRE_DOCKER=1 FLEET_REQUIRE_PROMETHEUS=1 \
			FLEET_REQUIRE_POSTGRES=1 FLEET_REQUIRE_CHROMIUM=1 FLEET_REQUIRE_SYSTEMD=1 \
			FLEET_REQUIRE_SCHEMATHESIS=1 FLEET_REQUIRE_FAKETIME=1 \
			FLEET_REQUIRE_ALERTMANAGER=1 FLEET_REQUIRE_COMPOSE=1 FLEET_REQUIRE_SMTP=1; \
		if [ "$$(id -u)" = 0 ]; then export FLEET_REQUIRE_TMPFS=1; fi; \
	fi; \
	FLEET_TEST_POSTGRES_URL="$${FLEET_TEST_POSTGRES_URL:-$$(scripts/test-postgres start 2>/dev/null || true)}" \
		$(CARGO) test --workspace --no-fail-fast

fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz"; exit 2; }
	mkdir -p fleet-config/fuzz/corpus/load_repo
	cd fleet-config/fuzz && $(CARGO) +nightly fuzz run load_repo corpus/load_repo seeds -- \
		-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10

clean:
	$(CARGO) clean
