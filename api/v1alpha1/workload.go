package v1alpha1

// Workloads opt in to handoff with labels and annotations on their pod
// template (or, for EnabledLabel, on their namespace). These are the names;
// the injection webhook and the rollout controllers in the manager read
// them, and the node agent reads the readiness gate.

// EnabledLabel opts a pod (through its template) or a namespace in: the
// manager's webhook injects the agent's socket directory, HANDOFF_SOCKET,
// the socket group and the readiness gate into each pod created with it.
// The only value that enables is "true".
const EnabledLabel = "handoff.dev/enabled"

// ContainerAnnotation names the application's container in a pod with
// several (default: the only container).
const ContainerAnnotation = "handoff.dev/container"

// InjectedAnnotation is set by the webhook on the pods it changed: the
// application's container and what was added to the pod, e.g.
// "streamer: volume,mount,env,group,gate".
const InjectedAnnotation = "handoff.dev/injected"

// OnFailureAnnotation says what a rollout does when a pod's handoff fails:
// OnFailurePause (the default) or OnFailureRecreate.
const OnFailureAnnotation = "handoff.dev/on-failure"

// OnFailure is the value of OnFailureAnnotation.
type OnFailure string

const (
	// OnFailurePause leaves the new pod's readiness gate False: the old
	// pod serves on and the rollout stops where it is.
	OnFailurePause OnFailure = "Pause"
	// OnFailureRecreate opens the gate anyway: the rollout replaces the
	// old pod as Kubernetes would without handoff, and its clients are
	// disconnected.
	OnFailureRecreate OnFailure = "Recreate"
)

// UpdateAnnotation, on a StatefulSet with updateStrategy OnDelete, hands
// its rollouts to handoff: each pod whose template change is one of
// images only is updated in place (its container restarts while the node
// agent holds its sockets) from the highest ordinal down. On a Deployment,
// an image-only change pauses it while handoff updates the current
// ReplicaSet's pods in place (see InPlaceRolloutAnnotation).
const UpdateAnnotation = "handoff.dev/update"

// InPlaceRolloutAnnotation is set, with spec.paused, by the manager's
// Deployment webhook when it takes an image-only change of an opted-in
// Deployment to roll out in place, and removed with the pause when the
// rollout ends: its presence says handoff paused the Deployment. Its value
// is JSON: {"id", "container", "from", "to"} (the rollout's id, the
// application's container, its image before and after).
const InPlaceRolloutAnnotation = "handoff.dev/in-place-rollout"

// UpdateMode is the value of UpdateAnnotation.
type UpdateMode string

const (
	// InPlaceIfPossible updates in place what can be, and deletes the
	// other pods so that the workload controller recreates them, as
	// Kubernetes would without handoff.
	InPlaceIfPossible UpdateMode = "InPlaceIfPossible"
	// InPlaceOnly updates in place or not at all: the rollout stops at
	// the first pod that cannot be, with an Event that says why.
	InPlaceOnly UpdateMode = "InPlaceOnly"
)

// PartitionAnnotation: pods with an ordinal below it are not updated
// (default 0), as spec.updateStrategy.rollingUpdate.partition does for
// RollingUpdate.
const PartitionAnnotation = "handoff.dev/partition"

// MaxUnavailableAnnotation: how many pods may be unready or updating at
// once (default 1).
const MaxUnavailableAnnotation = "handoff.dev/max-unavailable"

// AppliedAnnotation marks a rollout's Migration whose outcome the rollout
// controller has applied to the pod (its revision label, or its
// replacement), so that a later rollout to the same revision does not
// mistake it for its own.
const AppliedAnnotation = "handoff.dev/applied"

// TimeoutAnnotation, on a workload (or its pod template), sets the
// timeout of the Migrations its rollouts create (a duration from 1s to
// 1h, as spec.timeout). Default: 5m for the DaemonSet surge, 2m in place.
const TimeoutAnnotation = "handoff.dev/timeout"

// ConditionMigrated is the pod condition, and readiness gate, that a pod
// of an opted-in workload waits for: True once its predecessor on the node
// handed it every socket, or at once when it has no predecessor.
const ConditionMigrated = "handoff.dev/migrated"

// Labels on the Migrations a rollout creates, so that
// `kubectl get mig -l handoff.dev/workload=<name>` lists one rollout's.
const (
	// WorkloadLabel is the name of the workload whose rollout created
	// the Migration.
	WorkloadLabel = "handoff.dev/workload"
	// WorkloadKindLabel is its kind (DaemonSet, StatefulSet, Deployment).
	WorkloadKindLabel = "handoff.dev/workload-kind"
	// RevisionLabel is the revision the Migration moves to (the target
	// pod's controller-revision-hash; for a Deployment, the in-place
	// rollout's id).
	RevisionLabel = "handoff.dev/revision"
)

// Reasons of the Migrated pod condition and of the Events the rollout and
// the webhook record on pods and workloads.
const (
	// ReasonNoPredecessor: no older pod of the workload runs on the
	// node, so there is nothing to take over: the gate opens at once.
	ReasonNoPredecessor = "NoPredecessor"
	// ReasonMigrating: the Migration from the node's old pod runs.
	ReasonMigrating = "Migrating"
	// ReasonMigrated: the predecessor handed over every socket.
	ReasonMigrated = "Migrated"
	// ReasonMigrationFailed: the Migration failed; with OnFailurePause
	// the gate stays closed and the old pod serves on.
	ReasonMigrationFailed = "MigrationFailed"
	// ReasonRecreated: the Migration failed and OnFailureRecreate opened
	// the gate; the old pod's clients are disconnected when it goes.
	ReasonRecreated = "Recreated"
	// ReasonInjected: the webhook added the socket, env, group and gate.
	ReasonInjected = "Injected"
	// ReasonNotInjectable: the webhook could not tell which container
	// is the application's, or the pod cannot take part as written.
	ReasonNotInjectable = "NotInjectable"
	// ReasonUnsupportedWorkload: the workload's spec cannot keep its
	// connections through a rollout (the message says what to change).
	ReasonUnsupportedWorkload = "UnsupportedWorkload"
	// ReasonUpdatingInPlace: a pod's Migration with target.image runs.
	ReasonUpdatingInPlace = "UpdatingInPlace"
	// ReasonUpdatedInPlace: a pod was updated in place and now counts as
	// of the update revision.
	ReasonUpdatedInPlace = "UpdatedInPlace"
	// ReasonNotInPlace: a pod cannot be updated in place (the message
	// says why); InPlaceIfPossible deletes it, InPlaceOnly stops.
	ReasonNotInPlace = "NotInPlace"
	// ReasonRolloutDone: every pod is of the update revision.
	ReasonRolloutDone = "RolloutDone"
	// ReasonPausedInPlace: the webhook paused a Deployment to roll an
	// image-only change out in place, or moved its target.
	ReasonPausedInPlace = "PausedInPlace"
	// ReasonNotImageOnly: a Deployment's change is more than its
	// application's image; its own controller rolls it out.
	ReasonNotImageOnly = "NotImageOnly"
	// ReasonTemplateMoved: the current ReplicaSet now holds the
	// Deployment's new template, so that its controller counts the pods
	// updated in place as new.
	ReasonTemplateMoved = "TemplateMoved"
	// ReasonHistoryKept: the template an in-place rollout replaced is
	// kept, with its revision, in a ReplicaSet without pods, for kubectl
	// rollout undo.
	ReasonHistoryKept = "HistoryKept"
	// ReasonHandedBack: the in-place rollout of a Deployment ended before
	// it was done; handoff unpaused it and its controller rolls out.
	ReasonHandedBack = "HandedBack"
)
