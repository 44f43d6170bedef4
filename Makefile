# Palisade: `make run` sets everything up on a fresh machine and starts the demo server; `make test` runs every test.
SHELL := /bin/bash
SWIFT ?= swift
PYTHON ?= python3
VENV := .venv
CONFIG ?= deploy/local/palisade.yaml
# Debian packages the build, the dev PKI and the tests need; iproute2 and nftables for make run's network namespace
# (with nft the namespace reaches the sidecar's port only, without it any port the host binds).
APT_PACKAGES := protobuf-compiler openssl libzstd-dev zstd curl gnutls-bin libtss2-dev swtpm swtpm-tools tpm2-tools \
  iproute2 nftables
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help deps venv build release release-repro sbom pki demo-bundle run test test-image fuzz fuzz-seeds check generate format format-check clean

help:
	@echo "make run       install what is missing, build, make the dev PKI, start the server ($(CONFIG))"
	@echo "make test      run every test (Swift tests, interop with Python clients, real processes)"
	@echo "make test-image  build the static release binary and run it from a minimal root filesystem (root)"
	@echo "make pki       (re)make the dev PKI in certs/out"
	@echo "make release   release build (.build/release/palisade)"
	@echo "make release-repro  build HEAD twice from two clean clones and check the binaries are identical (slow)"
	@echo "make sbom      the reproducible release binary and its CycloneDX SBOM in .build-release-repro/out"
	@echo "make fuzz      build the libFuzzer driver and fuzz every parser FUZZ_SECONDS each (default 60; Fuzz/README.md)"
	@echo "make generate  regenerate Swift code from proto/ (needs protoc; not needed for building)"
	@echo "make format    lay out the Swift sources as .swift-format says (make test checks it)"

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@# kubectl renders the Kubernetes manifests in the deploy tests (any kubectl; Debian's is kubernetes-client).
	@if ! command -v kubectl >/dev/null; then \
	  echo "installing Debian package: kubernetes-client (kubectl)"; \
	  $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client; \
	fi

$(VENV)/.installed: Tests/Interop/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r Tests/Interop/requirements.txt
	touch $@

venv: $(VENV)/.installed

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

# docs/release.md: the reproducible release build, checked from two clean clones (two full builds: slow).
release-repro: deps
	deploy/release/repro.sh

sbom: deps
	deploy/release/build.sh .build-release-repro/out
	deploy/release/sbom.py --binary .build-release-repro/out/palisade --out .build-release-repro/out/sbom.cdx.json \
	  --libs $$(ldd .build-release-repro/out/palisade | awk '{ for (i = 1; i <= NF; i++) if ($$i ~ /^\//) print $$i }' | sort -u) \
	  /etc/ssl/certs/ca-certificates.crt

# The dev PKI lives 30 days; it is remade when missing, within a day of expiry, or without the local namespace's
# server address (10.231.0.2, deploy/local/netns-up.sh).
pki: deps
	@if [ ! -f certs/out/server.pem ] || [ ! -f certs/out/audit.key ] || [ ! -f certs/out/attestation.key ] \
	  || ! openssl x509 -checkend 86400 -noout -in certs/out/server.pem >/dev/null \
	  || ! openssl x509 -noout -ext subjectAltName -in certs/out/server.pem | grep -q 10.231.0.2; then \
	  certs/make-dev-pki.sh certs/out; \
	fi

# The demo bundle: the scikit-learn digits MLP from the engine's fixtures, signed with the dev publisher key
# into run/models/digits/1 (remade when the PKI is newer than its signature).
DEMO_BUNDLE := run/models/digits/1
demo-bundle: build pki
	@if [ ! -f $(DEMO_BUNDLE)/model.sig ] || [ certs/out/publisher.key -nt $(DEMO_BUNDLE)/model.sig ]; then \
	  rm -rf run/models/digits run/state && mkdir -p run/models/digits && \
	  $(SWIFT) run palisade bundle init --model Tests/Fixtures/mlp_digits.onnx --name digits --version 1 --max-batch 64 --stats Tests/Fixtures/digits_reference.npy --out $(DEMO_BUNDLE) && \
	  $(SWIFT) run palisade bundle sign $(DEMO_BUNDLE) --key certs/out/publisher.key; \
	fi

# deploy/local/run.sh: as root (with iproute2 and a palisade that has `egress`) the server runs in its own network
# namespace reaching only the egress sidecar; otherwise plain processes on loopback, and it says why.
run: build pki demo-bundle
	deploy/local/run.sh $(CONFIG)

check: build pki
	$(SWIFT) run palisade serve --config $(CONFIG) --check

# Tests run one at a time: many start real servers, sidecars and TLS handshakes with short connection ages and
# deadlines, and on a 2-core CI machine running them all at once starves them into spurious timeouts.
# The import check refuses a target importing one of ours it does not depend on (SwiftPM checks it while planning
# the build, so on a clean clone or after a manifest change; it reports and builds on, then exits 1).
# PalisadeLayeringTests checks the layering rules themselves (docs/architecture.md).
test: deps venv format-check
	$(SWIFT) build --build-tests --explicit-target-dependency-import-check error
	$(SWIFT) test --skip-build --no-parallel

# The image's runtime without a container engine (root): the static-stdlib release build the image uses, its
# root filesystem (deploy/container/make-rootfs.sh) served read-only from a chroot as UID 65532 and called over
# mTLS. Not part of `make test`: the static release build alone takes longer than the rest of the suite.
test-image: deps venv
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path .build-static --product palisade
	$(SWIFT) build --build-tests
	PALISADE_IMAGE_TEST=1 PALISADE_STATIC_BIN=$(CURDIR)/.build-static/release/palisade \
	  $(SWIFT) test --skip-build --filter DeployTests

# libFuzzer over every parser that sees outside bytes (Fuzz/README.md): a sanitized release build in .build-fuzz,
# then each target for FUZZ_SECONDS, one at a time. Not part of `make test`, which replays the committed corpora.
FUZZ_SECONDS ?= 60
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_RUNS=$(FUZZ_RUNS) Fuzz/run.sh $(FUZZ_TARGETS)

# Remakes the seed corpora and the public keys they are checked against (throwaway keys; no private key is kept).
fuzz-seeds: venv
	$(VENV)/bin/python Fuzz/make-seeds.py

generate:
	scripts/generate-protos.sh

# The house layout (.swift-format): `make format` applies it, `make test` refuses a tree that does not follow it.
# Generated code (protobuf, the fuzz seed keys) is left as its generator writes it.
FORMAT_FILES = $(shell find Sources Tests Fuzz Benchmarks -name '*.swift' -not -path 'Sources/PalisadeProto/*' \
  -not -path 'Sources/PalisadeONNXProto/*' -not -name 'FuzzKeys.swift' | sort)

format:
	$(SWIFT) format --in-place --parallel $(FORMAT_FILES)

format-check:
	@$(SWIFT) format lint --strict --parallel $(FORMAT_FILES) || \
	  { echo "the tree does not follow .swift-format: run 'make format'" >&2; exit 1; }

clean:
	rm -rf .build certs/out run $(VENV)
