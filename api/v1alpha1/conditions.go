package v1alpha1

import "time"

// NodeLabel carries the node a Migration was scheduled to. The controller
// sets it once; each node agent's cache holds only Migrations with its own
// node's value, so the API server is the only channel to the agents.
const NodeLabel = "handoff.dev/node"

// Field managers: the controller and the agent each patch only their own
// status fields, under their own name.
const (
	ControllerFieldManager = "handoff-controller"
	AgentFieldManager      = "handoff-nodeagent"
)

// Condition types.
const (
	// ConditionReady summarises the Migration: True once completed, False
	// once failed (with the failure's reason), Unknown meanwhile.
	ConditionReady = "Ready"
	// ConditionValidated says whether the pods and containers named in the
	// spec exist, run, and can share sockets. Written by the controller.
	ConditionValidated = "Validated"
	// ConditionScheduled says whether the Migration was handed to its
	// node's agent. Written by the controller.
	ConditionScheduled = "Scheduled"
	// ConditionTransferred is the node agent's account of the transfer.
	ConditionTransferred = "Transferred"
	// ConditionSourceHandled says whether the source policy was applied
	// after success. Written by the controller.
	ConditionSourceHandled = "SourceHandled"
)

// Condition reasons. Each failure has its own, so a user (or a script) can
// tell what to fix. EndReasons lists those a Migration can end with.
const (
	// ReasonPending: the controller has not validated the pods yet.
	ReasonPending = "Pending"
	// ReasonValid: both pods and containers exist, run and share a node
	// and a network namespace.
	ReasonValid = "Valid"
	// ReasonSourcePodNotFound: spec.source.pod does not exist.
	ReasonSourcePodNotFound = "SourcePodNotFound"
	// ReasonTargetPodNotFound: spec.target.pod does not exist.
	ReasonTargetPodNotFound = "TargetPodNotFound"
	// ReasonPodNotRunning: a pod is not in phase Running.
	ReasonPodNotRunning = "PodNotRunning"
	// ReasonPodTerminating: a pod is being deleted.
	ReasonPodTerminating = "PodTerminating"
	// ReasonContainerNotFound: a pod has no container of the given name.
	ReasonContainerNotFound = "ContainerNotFound"
	// ReasonContainerNotRunning: the container exists but is not running.
	ReasonContainerNotRunning = "ContainerNotRunning"
	// ReasonNotScheduled: a pod has not been placed on a node yet.
	ReasonNotScheduled = "PodNotScheduled"
	// ReasonDifferentNodes: the pods run on different nodes; descriptors
	// only move between processes of one host.
	ReasonDifferentNodes = "DifferentNodes"
	// ReasonNetworkNamespaceNotShared: the pods have different network
	// namespaces, so a moved socket would serve an address the CNI has
	// taken away from its new owner.
	ReasonNetworkNamespaceNotShared = "NetworkNamespaceNotShared"

	// ReasonNodeAssigned: the node label is set; the agent takes over.
	ReasonNodeAssigned = "NodeAssigned"
	// ReasonNodeNotFound: the node the Migration was scheduled to is gone.
	ReasonNodeNotFound = "NodeNotFound"
	// ReasonAgentUnavailable: no node agent pod runs on the node, so no
	// agent can perform the migration.
	ReasonAgentUnavailable = "AgentUnavailable"
	// ReasonDeadlineExceeded: the timeout passed before the agent reported
	// an outcome.
	ReasonDeadlineExceeded = "DeadlineExceeded"

	// ReasonWaitingForProcesses: the agent waits for the source and target
	// processes to join its socket.
	ReasonWaitingForProcesses = "WaitingForProcesses"
	// ReasonWaitingForRestartBackoff: before an in-place restart, the
	// agent waits (the process serving on) until kubelet's restart
	// back-off for the new image has passed, so that kubelet restarts the
	// container at once rather than while the agent holds its sockets.
	ReasonWaitingForRestartBackoff = "WaitingForRestartBackoff"
	// ReasonWaitingForAgentHandover: the node agent is handing over to its
	// successor (an upgrade of the agent's DaemonSet); the successor
	// starts the transfer. Nothing was moved.
	ReasonWaitingForAgentHandover = "WaitingForAgentHandover"
	// ReasonPreparing: the source is quiescing and exporting.
	ReasonPreparing = "Preparing"
	// ReasonTransferring: descriptors and state are moving.
	ReasonTransferring = "Transferring"
	// ReasonTransferred: the target serves; the source let go.
	ReasonTransferred = "Transferred"
	// ReasonProcessNotFound: no process of the named container joined the
	// agent before the deadline (does it link the SDK and mount the
	// agent's socket directory?).
	ReasonProcessNotFound = "ProcessNotFound"
	// ReasonContainerMismatch: the process the kernel reports in a
	// container is not the one the Pod's status names.
	ReasonContainerMismatch = "ContainerMismatch"
	// ReasonTargetLost: the target process died or left mid-transfer; the
	// source resumed.
	ReasonTargetLost = "TargetLost"
	// ReasonSourceLost: the source process died or left before exporting.
	ReasonSourceLost = "SourceLost"
	// ReasonTransferFailed: the transaction aborted for another reason
	// (the message says which); the source resumed.
	ReasonTransferFailed = "TransferFailed"
	// ReasonImageUpdateFailed: the in-place image update could not be
	// applied; the source resumed.
	ReasonImageUpdateFailed = "ImageUpdateFailed"

	// ReasonSourceDeleted: the source pod was deleted gracefully.
	ReasonSourceDeleted = "SourceDeleted"
	// ReasonSourceKept: the source pod was left as asked.
	ReasonSourceKept = "SourceKept"
	// ReasonSourceDeleteFailed: deleting the source pod failed; retried.
	ReasonSourceDeleteFailed = "SourceDeleteFailed"
)

// EndReasons lists every reason the Ready condition of a finished
// Migration (phase Completed or Failed) can carry: Transferred for
// success, and each failure's. The README's table has one row for each.
func EndReasons() []string {
	return []string{
		ReasonTransferred,
		// The controller's validation, failing at once or at the deadline.
		ReasonSourcePodNotFound, ReasonTargetPodNotFound, ReasonPodTerminating, ReasonContainerNotFound,
		ReasonNotScheduled, ReasonPodNotRunning, ReasonContainerNotRunning,
		ReasonDifferentNodes, ReasonNetworkNamespaceNotShared, ReasonPending,
		// The controller, once the Migration was scheduled.
		ReasonNodeNotFound, ReasonAgentUnavailable, ReasonDeadlineExceeded,
		// The node agent's Transferred condition.
		ReasonProcessNotFound, ReasonContainerMismatch, ReasonSourceLost, ReasonTargetLost,
		ReasonTransferFailed, ReasonImageUpdateFailed,
	}
}

// TimeoutOrDefault is spec.timeout, or DefaultTimeout.
func (s *MigrationSpec) TimeoutOrDefault() time.Duration {
	if s.Timeout == nil || s.Timeout.Duration <= 0 {
		return DefaultTimeout
	}
	return s.Timeout.Duration
}

// SamePod reports whether source and target are one pod.
func (s *MigrationSpec) SamePod() bool { return s.Source.Pod == s.Target.Pod }

// SourcePolicyOrDefault is spec.sourcePolicy, or its default: Delete for
// two pods, Keep for one.
func (s *MigrationSpec) SourcePolicyOrDefault() SourcePolicy {
	if s.SourcePolicy != "" {
		return s.SourcePolicy
	}
	if s.SamePod() {
		return SourcePolicyKeep
	}
	return SourcePolicyDelete
}

// Moves reports whether spec.move asks for kind k (an empty list asks for all).
func (s *MigrationSpec) Moves(k MoveKind) bool {
	if len(s.Move) == 0 {
		return true
	}
	for _, m := range s.Move {
		if m == k {
			return true
		}
	}
	return false
}
