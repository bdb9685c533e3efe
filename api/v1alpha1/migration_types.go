package v1alpha1

import (
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MoveKind names a kind of socket a Migration moves.
// +kubebuilder:validation:Enum=Listeners;Connections;PacketSockets
type MoveKind string

// The kinds of socket a Migration can move.
const (
	MoveListeners     MoveKind = "Listeners"
	MoveConnections   MoveKind = "Connections"
	MovePacketSockets MoveKind = "PacketSockets"
)

// SourcePolicy says what happens to the source pod after a completed
// migration.
// +kubebuilder:validation:Enum=Delete;Keep
type SourcePolicy string

// Source policies.
const (
	// SourcePolicyDelete deletes the source pod gracefully once the target
	// serves. It is the default when source and target are different pods.
	SourcePolicyDelete SourcePolicy = "Delete"
	// SourcePolicyKeep leaves the source pod alone. It is the default, and
	// the only choice, when source and target are the same pod.
	SourcePolicyKeep SourcePolicy = "Keep"
)

// DefaultTimeout is a Migration's deadline when spec.timeout is not set.
const DefaultTimeout = 60 * time.Second

// Endpoint names a container of a pod in the Migration's namespace.
type Endpoint struct {
	// pod is the name of the pod.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Pod string `json:"pod,omitempty"`

	// container is the name of the container in the pod.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Container string `json:"container,omitempty"`
}

// TargetEndpoint names the container that takes the sockets over.
type TargetEndpoint struct {
	Endpoint `json:",inline"`

	// image, when set, updates the target container's image in place: the
	// node agent holds the sockets while the container restarts with this
	// image, and hands them to its new process. Source and target must
	// then name the same container.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=4096
	Image string `json:"image,omitempty"`
}

// MigrationSpec declares a handoff.
// +kubebuilder:validation:XValidation:rule="!(self.source.pod == self.target.pod && self.source.container == self.target.container) || has(self.target.image)",message="source and target name the same container: set target.image to restart it in place with a new image, or name another container"
// +kubebuilder:validation:XValidation:rule="!has(self.target.image) || (self.source.pod == self.target.pod && self.source.container == self.target.container)",message="target.image restarts a container in place: source and target must name the same pod and container"
// +kubebuilder:validation:XValidation:rule="!has(self.sourcePolicy) || self.sourcePolicy != 'Delete' || self.source.pod != self.target.pod",message="sourcePolicy Delete would delete the target too: source and target are the same pod"
type MigrationSpec struct {
	// source is the container whose process gives its sockets away.
	// +required
	Source Endpoint `json:"source,omitzero"`

	// target is the container whose process takes the sockets over.
	// +required
	Target TargetEndpoint `json:"target,omitzero"`

	// timeout bounds the whole migration, from scheduling to the target
	// serving. Past it the migration fails and the source keeps serving.
	// Between 1s and 1h; 60s when not set.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Format=duration
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1s') && duration(self) <= duration('1h')",message="timeout must be between 1s and 1h"
	Timeout *metav1.Duration `json:"timeout,omitempty"`

	// move lists what to move; all kinds when empty.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=3
	Move []MoveKind `json:"move,omitempty"`

	// sourcePolicy says what to do with the source pod after success:
	// Delete (the default for two different pods) or Keep (the default,
	// and the only choice, when source and target are the same pod).
	// +optional
	SourcePolicy SourcePolicy `json:"sourcePolicy,omitempty"`
}

// Phase is where a Migration stands.
// +kubebuilder:validation:Enum=Pending;Scheduled;Preparing;Transferring;Completed;Failed
type Phase string

// Phases of a Migration, in order; Completed and Failed are final.
const (
	PhasePending      Phase = "Pending"
	PhaseScheduled    Phase = "Scheduled"
	PhasePreparing    Phase = "Preparing"
	PhaseTransferring Phase = "Transferring"
	PhaseCompleted    Phase = "Completed"
	PhaseFailed       Phase = "Failed"
)

// Final reports whether no further transition can happen.
func (p Phase) Final() bool { return p == PhaseCompleted || p == PhaseFailed }

// Moved counts what a migration moved.
type Moved struct {
	// listeners is the number of listening sockets moved.
	// +optional
	Listeners int32 `json:"listeners,omitempty"`
	// connections is the number of established connections moved.
	// +optional
	Connections int32 `json:"connections,omitempty"`
	// packetSockets is the number of datagram sockets moved.
	// +optional
	PacketSockets int32 `json:"packetSockets,omitempty"`
	// stateBytes is the size of all per-connection state records.
	// +optional
	StateBytes int64 `json:"stateBytes,omitempty"`
	// batches is the number of SCM_RIGHTS messages the sockets took.
	// +optional
	Batches int32 `json:"batches,omitempty"`
}

// MigrationStatus tells the story of a Migration. The controller writes
// phase, nodeName, message, startTime, completionTime, observedGeneration
// and its conditions; the node agent writes the transfer's condition,
// counts, pause and container IDs. Each patches only its own fields, with
// its own field manager.
type MigrationStatus struct {
	// phase summarises the conditions.
	// +optional
	Phase Phase `json:"phase,omitempty"`

	// nodeName is the node both pods run on, whose agent performs the
	// migration.
	// +optional
	NodeName string `json:"nodeName,omitempty"`

	// message says, for a person, what happened last and what to do.
	// +optional
	Message string `json:"message,omitempty"`

	// observedGeneration is the generation the controller last acted on.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready (the summary), Validated, Scheduled, Transferred
	// (the agent's), SourceHandled.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// startTime is when the migration was scheduled to its node; the
	// deadline runs from here.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`

	// completionTime is when the migration reached a final phase.
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`

	// moved counts what the agent moved.
	// +optional
	Moved *Moved `json:"moved,omitempty"`

	// pause is how long no process served: from the source stopping to
	// the target serving.
	// +optional
	Pause *metav1.Duration `json:"pause,omitempty"`

	// sourceContainerID is the container the agent found the source
	// process in, as the kernel reported it (runtime://id).
	// +optional
	SourceContainerID string `json:"sourceContainerID,omitempty"`

	// targetContainerID is the container the agent found the target
	// process in.
	// +optional
	TargetContainerID string `json:"targetContainerID,omitempty"`
}

// Migration moves the listening sockets, established connections and
// per-connection state of one container's process to another's, on the
// same node, so that clients see a pause and never a reset.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=mig,categories=handoff
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="Connections",type=integer,JSONPath=`.status.moved.connections`
// +kubebuilder:printcolumn:name="Pause",type=string,JSONPath=`.status.pause`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase == 'Pending' || self.spec == oldSelf.spec",message="spec is immutable once the migration is scheduled: delete it and create a new one"
type Migration struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec declares the handoff.
	// +required
	Spec MigrationSpec `json:"spec,omitzero"`

	// status tells what happened.
	// +optional
	Status MigrationStatus `json:"status,omitzero"`
}

// MigrationList is a list of Migrations.
// +kubebuilder:object:root=true
type MigrationList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitzero"`
	Items           []Migration `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Migration{}, &MigrationList{})
}
