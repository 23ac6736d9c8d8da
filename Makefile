# Fleet: the commands a developer and CI use. `make help` lists them.
CARGO ?= cargo
FUZZ_SECONDS ?= 300

.PHONY: help build test lint fmt fuzz clean

help:
	@echo "make test   - formatting, lints and the whole test suite (what CI runs)"
	@echo "make build  - release build of every binary"
	@echo "make lint   - cargo fmt --check and clippy with warnings as errors"
	@echo "make fmt    - format the code"
	@echo "make fuzz   - fuzz the repository loader for FUZZ_SECONDS (default 300; needs nightly and cargo-fuzz)"

build:
	$(CARGO) build --workspace --release

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# PostgreSQL tests use FLEET_TEST_POSTGRES_URL, or a private cluster started here when Debian's
# postgresql is installed (scripts/test-postgres); without either they skip loudly.
test: lint
	FLEET_TEST_POSTGRES_URL="$${FLEET_TEST_POSTGRES_URL:-$$(scripts/test-postgres start 2>/dev/null || true)}" \
		$(CARGO) test --workspace

fuzz:
	@command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz is missing: cargo install cargo-fuzz"; exit 2; }
	mkdir -p fleet-config/fuzz/corpus/load_repo
	cd fleet-config/fuzz && $(CARGO) +nightly fuzz run load_repo corpus/load_repo seeds -- \
		-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -timeout=10

clean:
	$(CARGO) clean
