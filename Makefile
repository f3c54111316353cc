# Orchard: one binary, bin/orchard.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

.PHONY: build test bench lint dev fuzz clean

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/orchard ./cmd/orchard

# The test command the README and .ci/run use.
test:
	$(GO) vet ./...
	$(GO) test -race ./...

# Benchmarks; figures and how to read them are in docs/benchmarks.md.
bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 1x -count 1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# A whole cluster on this machine: controller and one worker, no set-up.
dev: build
	./bin/orchard dev

# Each fuzz target for a short while.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime 20s $$pkg || exit 1; \
	  done; \
	done

clean:
	rm -rf bin
