# artifactstore — the two set-up commands are `make dev` and `make test`.

DEV_TOKEN ?= devtoken
DEV_LISTEN ?= 127.0.0.1:8080
DEV_DATA ?= dev-data

.PHONY: dev test lint tools unit clients unit-shared bench bench-peers bench-cli build schemathesis

## Run a development server on the embedded stores (SQLite + ./dev-data/blobs).
dev:
	cargo build --release -p artifactstore
	@echo ""
	@echo "artifactstore dev server on http://$(DEV_LISTEN)  (data in ./$(DEV_DATA))"
	@echo "  tenant: dev   token: $(DEV_TOKEN)   (reads also work without a token)"
	@echo "  try:    curl -H 'Authorization: Bearer $(DEV_TOKEN)' http://$(DEV_LISTEN)/packages"
	@echo "  docs:   http://$(DEV_LISTEN)/docs    walkthrough: README.md"
	@echo ""
	ARTIFACTSTORE_TOKENS=dev:$(DEV_TOKEN) ARTIFACTSTORE_ANON_READ=true \
	ARTIFACTSTORE_LISTEN=$(DEV_LISTEN) ARTIFACTSTORE_DATA_DIR=$(DEV_DATA) \
	./target/release/artifactstore serve

## Everything CI checks: formatting, lints, the whole test suite (with the OpenAPI validator),
## on the embedded stores and again on the shared ones (PostgreSQL).
test: lint tools unit clients unit-shared

## Python tools some tests use (openapi-spec-validator, oras), in .venv-tools: the test that needs
## it is #[ignore]d, run by unit-shared, and fails saying so where the tool is missing.
VALIDATOR := .venv-tools/bin/openapi-spec-validator
## PyPI's oras, the OCI client the /v2/ tests drive (a stamp file marks it installed).
ORAS := .venv-tools/.oras-installed
tools: $(VALIDATOR) $(ORAS)
$(VALIDATOR):
	@if command -v python3 >/dev/null 2>&1; then \
	  python3 -m venv .venv-tools && .venv-tools/bin/pip install -q openapi-spec-validator \
	  || echo "could not install openapi-spec-validator: its test will fail"; \
	else echo "no python3: the OpenAPI validator test will fail"; fi
$(ORAS): $(VALIDATOR)
	@.venv-tools/bin/pip install -q 'oras>=0.2.40,<0.3' && touch $(ORAS) \
	  || echo "could not install oras: the OCI client tests will fail"

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit:
	cargo test --workspace

## The real OCI clients (skopeo, podman, oras; #[ignore]d for needing them) on the embedded
## stores; unit-shared runs them again on the shared ones.
clients:
	cargo test -p artifactstore --test oci_clients -- --include-ignored

## The integration suites again, on a throwaway PostgreSQL server and S3 (tools/with-backends.sh),
## with the tests #[ignore]d for needing them (or chromium, or the validator) included.
unit-shared:
	tools/with-backends.sh cargo test --workspace --test '*' -- --include-ignored

## The ingest benchmark of the core (1 GiB; BENCH_MIB to change).
bench:
	cargo bench -p artifactstore-storage --bench ingest

## Workloads W1-W7 beside docker-registry and nginx (BENCHMARKS.md); QUICK=1 for the short run.
bench-peers:
	bench/run.sh $(if $(QUICK),--quick,)

## `artifactstore push` beside curl.
bench-cli:
	bench/cli_push.sh $(if $(QUICK),--quick,)

build:
	cargo build --release -p artifactstore

## schemathesis (all checks, all phases) against a fresh release server; EXAMPLES per operation.
schemathesis:
	tools/schemathesis.sh $(or $(EXAMPLES),100)
