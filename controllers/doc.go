// Package controllers holds the cluster-wide Migration reconciler, which
// runs in the manager Deployment. It checks what CEL cannot (both pods
// exist, run, share a node and a network namespace), stamps the Migration
// with its node so that only that node's agent acts on it, enforces the
// deadline even when the agent is gone, summarises the agent's report into
// a phase, and applies the source policy after success.
package controllers
