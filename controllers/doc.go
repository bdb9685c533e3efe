// Package controllers holds the cluster-wide Migration reconciler, which
// runs in the manager Deployment. It checks what CEL cannot (both pods
// exist, run, share a node and a network namespace), stamps the Migration
// with its node so that only that node's agent acts on it, enforces the
// deadline even when the agent is gone, summarises the agent's report into
// a phase, and applies the source policy after success.
//
// Beside it run the rollout controllers of opted-in workloads: the surge
// path of hostNetwork DaemonSets (SurgeReconciler: one Migration from the
// node's old pod to each new pod, whose handoff.dev/migrated readiness gate
// opens when it completes), DaemonSetChecker, which names in an Event
// what keeps a DaemonSet's rollout from keeping its connections, and the
// in-place rollouts of StatefulSets (InPlaceReconciler) and of Deployments
// paused by controllers/deployhook (DeploymentReconciler).
package controllers
