# tandem — the whole set-up of a fresh machine is `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
BIN := bin/tandem
# Debian packages the tests, benchmarks and demo use; installed only when missing.
DEB_PACKAGES := qemu-utils libnbd-bin python3-libnbd nbdkit nbdfuse fio fuse3 e2fsprogs util-linux iproute2 kmod openssl curl
TEST_TIMEOUT ?= 30m

.PHONY: all deps build test unit e2e fuzz bench demo lint clean

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(GO) mod download

build:
	$(GO) build -o $(BIN) ./cmd/tandem

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@if command -v staticcheck >/dev/null; then staticcheck ./...; fi

# The unit and fuzz-seed tests beside the code, then the end-to-end tests
# against the real binary and real clients.
test: deps build lint
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

unit: build
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /tests)

e2e: deps build
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./tests/

# A short coverage-guided run of every fuzz target.
FUZZTIME ?= 20s
fuzz: build
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

bench: deps build
	$(GO) run ./tests/bench -bin $(BIN)

demo: deps build
	./$(BIN) demo

clean:
	rm -rf bin
