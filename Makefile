# handoff — zero-downtime socket handoff between processes.
# `make help` lists the targets.

GO      ?= go
BIN     := $(CURDIR)/bin
# Every package but the real-cluster suite, which make test-e2e runs on a cluster.
PKGS    := $(shell $(GO) list ./... | grep -v '/test/e2e/cluster$$')
FUZZTIME ?= 60s

# Pinned tool versions; builds are cached under bin/ keyed by version.
CONTROLLER_GEN_VERSION ?= v0.23.0
CONTROLLER_GEN := $(BIN)/tools/controller-gen-$(CONTROLLER_GEN_VERSION)/controller-gen
# hack/lib.sh holds the versions every hack/ script builds and looks for.
K8S_VERSION  ?= $(shell bash -c '. hack/lib.sh && echo $$K8S_VERSION')
ETCD_VERSION ?= $(shell bash -c '. hack/lib.sh && echo $$ETCD_VERSION')
KUBEBUILDER_ASSETS ?= $(BIN)/k8s/v$(K8S_VERSION)
# The chart's tests live in their own module, so the Helm and kustomize
# libraries stay out of the main module's graph.
HELM_TOOL := $(GO) -C hack/tools/helm
export K8S_VERSION ETCD_VERSION

.DEFAULT_GOAL := help

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} \
		/^[a-zA-Z0-9_-]+:.*?##/ { printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2 } \
		/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Build

.PHONY: build
build: ## Build every binary into bin/ (nodeagent, handoffctl, streamer, handoff-load, handoff-demo, handoff-bench).
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ ./cmd/... ./examples/streamer

##@ Generate

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRD and the manager's and agent's RBAC from kubebuilder markers.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=handoff-manager paths=./controllers/... output:rbac:artifacts:config=config/rbac/manager
	$(CONTROLLER_GEN) rbac:roleName=handoff-nodeagent paths=./nodeagent/kube/... output:rbac:artifacts:config=config/rbac/nodeagent

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate the API's DeepCopy methods.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: verify-generated
verify-generated: manifests generate ## Fail if generated files are not up to date with the markers.
	hack/sync-chart-crds.sh --check
	@if [ -n "$$(git status --porcelain -- api config)" ]; then \
		echo "generated files are stale: run make manifests generate and commit"; git status --porcelain -- api config; git diff -- api config | head -50; exit 1; fi

$(CONTROLLER_GEN):
	GOBIN=$(dir $(CONTROLLER_GEN)) $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)

.PHONY: envtest-bins
envtest-bins: ## Build kube-apiserver, etcd and kubectl for the integration tests from the Go module proxy (cached in bin/k8s).
	hack/envtest-bins.sh

##@ Chart

.PHONY: test-chart
test-chart: ## Render, lint --strict and check the Helm chart and config/ (Helm library, no helm binary).
	$(HELM_TOOL) test -count=1 ./...

.PHONY: chart-sync
chart-sync: manifests ## Copy the generated CRD and ClusterRole rules into charts/handoff/files.
	hack/sync-chart-crds.sh

.PHONY: chart-lint
chart-lint: ## helm lint --strict of charts/handoff, without a helm binary.
	$(HELM_TOOL) run . lint

.PHONY: chart-template
chart-template: ## Print charts/handoff as helm template would (ARGS='--set image.tag=v0.2.0').
	@$(HELM_TOOL) run . template $(ARGS)

##@ Local cluster (root; not run by make test)

IMAGE_TAG   ?= dev
CLUSTER_DIR ?= /tmp/handoff-cluster
export IMAGE_TAG CLUSTER_DIR

.PHONY: cluster-bins
cluster-bins: ## Build everything a local single-node cluster needs from the Go module proxy (cached in bin/k8s, bin/cluster).
	hack/cluster-bins.sh

.PHONY: images
images: ## Build the handoff and handoff-streamer images (OCI tarballs in bin/images) without docker.
	hack/cluster-images.sh

.PHONY: cluster-up
cluster-up: cluster-bins ## Start a single-node Kubernetes on this host (root: changes iptables, mounts, sysctls; undone by cluster-down).
	hack/cluster-up.sh
	hack/cluster-images.sh --import

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and undo every host change cluster-up made.
	hack/cluster-down.sh

##@ Run

.PHONY: demo
demo: build ## Live migrations of a streaming server under verifying clients, with a summary.
	$(BIN)/handoff-demo

.PHONY: bench
bench: build ## Pause, all resumed and request round trips against the SCM_RIGHTS floor at N=1000, 5000, 15000 (BENCH_ARGS=-reps 3).
	$(BIN)/handoff-bench $(BENCH_ARGS)

.PHONY: bench-python
bench-python: build ## The benchmark, plus migrations to a Python streamer and back (python3 3.11+).
	$(BIN)/handoff-bench -n 1000,5000 -python examples/pystreamer/pystreamer.py

##@ Test

.PHONY: test
test: lint verify-generated envtest-bins test-race test-chart test-python ## All unit and integration tests, race detector on (safe on a laptop).

.PHONY: test-unit
test-unit: ## The fast unit layer only (no race detector, short mode).
	$(GO) test -short -count=1 $(PKGS)

.PHONY: test-race
test-race:
	KUBEBUILDER_ASSETS=$(KUBEBUILDER_ASSETS) $(GO) test -race -count=1 -timeout 20m $(PKGS)

# The Python SDK's unit tests (stdlib unittest; python3 3.11 or newer). Its
# interop tests against the Go agent and streamer are test/interop, in test-race.
.PHONY: test-python
test-python: ## The Python SDK's unit tests (python3 -m unittest).
	python3 -m unittest discover -s sdk/python/tests -t sdk/python -v

.PHONY: test-e2e
test-e2e: test-e2e-host test-e2e-cluster ## End-to-end: the built binaries on this host, then the real-cluster suite.

.PHONY: test-e2e-host
test-e2e-host: build ## The agent, streamer and handoffctl binaries on this host, under load (no cluster).
	HANDOFF_BIN=$(BIN) $(GO) test -count=1 -timeout 20m -v ./test/e2e/

.PHONY: test-e2e-cluster
test-e2e-cluster: ## The real-cluster suite: kind where Docker runs, else a local cluster (root; undone on exit).
	hack/e2e-cluster.sh

.PHONY: fuzz
fuzz: ## Fuzz the wire decoder for FUZZTIME (default 60s).
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME) ./wire

.PHONY: lint
lint: ## go vet and gofmt.
	$(GO) vet $(PKGS)
	$(HELM_TOOL) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

.PHONY: clean
clean: ## Remove built binaries.
	rm -rf $(BIN)
