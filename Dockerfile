# One image for both Kubernetes components: the manager Deployment runs
# /manager, the node agent DaemonSet runs /nodeagent (as root: it needs
# hostPID to see the applications' processes and owns the hostPath socket).
# The example streamer has its own target (docker build --target streamer).
# Static binaries on an empty base, so the images hold nothing else to patch.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ENV CGO_ENABLED=0
RUN go build -trimpath -ldflags "-s -w" -o /out/manager ./cmd/manager && \
    go build -trimpath -ldflags "-s -w" -o /out/nodeagent ./cmd/nodeagent && \
    go build -trimpath -ldflags "-s -w" -o /out/handoffctl ./cmd/handoffctl && \
    go build -trimpath -ldflags "-s -w" -o /out/streamer ./examples/streamer

FROM scratch AS streamer
COPY --from=build /out/streamer /streamer
USER 65532:65532
ENTRYPOINT ["/streamer"]

FROM scratch
COPY --from=build /out/manager /out/nodeagent /out/handoffctl /
USER 65532:65532
ENTRYPOINT ["/manager"]
