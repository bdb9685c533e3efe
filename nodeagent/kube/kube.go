// Package kube runs the node agent under Kubernetes: a controller-runtime
// manager whose cache holds only the Migrations labelled with this node and
// the Pods on this node, and a reconciler that performs each such Migration
// as a transaction of the agent between the processes the kernel places in
// the named containers. It writes the agent's part of the status (the
// Transferred condition, counts, pause, container IDs) and nothing else.
package kube

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/internal/migstatus"
	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/nodeagent/podid"
	"github.com/handoff-dev/handoff/wire"
)

// Name is the agent's name in Events.
const Name = "handoff-nodeagent"

// DefaultPoll is how often the reconciler looks for the named containers'
// processes among the agent's sessions while it waits for them to join.
const DefaultPoll = 50 * time.Millisecond

// Reconciler performs the Migrations scheduled to Node.
type Reconciler struct {
	Client client.Client
	Agent  *nodeagent.Agent
	// Node is this node's name (NODE_NAME from the downward API).
	Node string
	// Recorder records Events; nil records none.
	Recorder events.EventRecorder
	// Poll defaults to DefaultPoll.
	Poll time.Duration
	// ControllerName defaults to "nodeagent-migration"; controller names
	// must be unique in a process (tests run several agents in one).
	ControllerName string

	// Reader reads a Migration past the cache before the agent declares
	// that an earlier agent process died mid-transfer; nil uses Client.
	Reader client.Reader

	mu      sync.Mutex
	running map[types.UID]bool
	done    map[types.UID]time.Time // ran to an outcome here, and when; until the cache shows it

	backoff restartBackoff // kubelet's restart back-off, for in-place restarts
}

// +kubebuilder:rbac:groups=handoff.dev,resources=migrations,verbs=get;list;watch
// +kubebuilder:rbac:groups=handoff.dev,resources=migrations/status,verbs=get;patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile starts the transfer of a Migration scheduled to this node, or
// reports why it cannot. It blocks for the transfer (bounded by the
// Migration's deadline); the manager runs several at once.
func (r *Reconciler) Reconcile(ctx context.Context, req reconcile.Request) (reconcile.Result, error) {
	mig := &v1alpha1.Migration{}
	if err := r.Client.Get(ctx, req.NamespacedName, mig); err != nil {
		return reconcile.Result{}, client.IgnoreNotFound(err)
	}
	if r.Agent.HandedOver() {
		// The successor agent runs this node's Migrations now.
		return reconcile.Result{}, nil
	}
	x := meta.FindStatusCondition(mig.Status.Conditions, v1alpha1.ConditionTransferred)
	if mig.Status.Phase.Final() || x != nil && x.Status != metav1.ConditionUnknown {
		// The cache has caught up with the outcome: nothing to remember.
		r.forget(mig.UID)
		return reconcile.Result{}, nil
	}
	if mig.Labels[v1alpha1.NodeLabel] != r.Node || mig.Status.StartTime == nil ||
		!meta.IsStatusConditionTrue(mig.Status.Conditions, v1alpha1.ConditionScheduled) {
		return reconcile.Result{}, nil
	}
	if !r.claim(mig.UID) {
		return reconcile.Result{}, nil
	}
	var again time.Duration // not done yet: look again after it
	defer func() { r.unclaim(mig.UID, again == 0) }()
	if x != nil && !notStarted(x.Reason) {
		// Either the cache is behind our own final report, or an earlier
		// agent process started this transfer and died: then the source
		// resumed when it lost the agent, and the target dropped what it
		// had. Read past the cache, and say so rather than start over
		// behind the user's back.
		fresh := &v1alpha1.Migration{}
		if err := r.reader().Get(ctx, req.NamespacedName, fresh); err != nil {
			return reconcile.Result{}, client.IgnoreNotFound(err)
		}
		if x := meta.FindStatusCondition(fresh.Status.Conditions, v1alpha1.ConditionTransferred); x == nil || x.Status != metav1.ConditionUnknown || fresh.Status.Phase.Final() {
			return reconcile.Result{}, nil
		}
		mig = fresh
		return reconcile.Result{}, r.report(ctx, mig, metav1.ConditionFalse, v1alpha1.ReasonTransferFailed,
			fmt.Sprintf("the node agent on %s restarted during the transfer (%s); the source resumed with all its sockets: create a new Migration to try again", r.Node, x.Reason))
	}
	deadline := mig.Status.StartTime.Add(mig.Spec.TimeoutOrDefault())
	if x == nil && !time.Now().Before(deadline) {
		return reconcile.Result{}, r.report(ctx, mig, metav1.ConditionFalse, v1alpha1.ReasonDeadlineExceeded,
			fmt.Sprintf("the deadline passed before the node agent on %s could start; nothing was moved", r.Node))
	}
	var err error
	again, err = r.run(ctx, mig, deadline)
	return reconcile.Result{RequeueAfter: again}, err
}

// notStarted reports whether an agent that reported reason had moved
// nothing yet: it waited, the processes serving on.
func notStarted(reason string) bool {
	switch reason {
	case v1alpha1.ReasonWaitingForProcesses, v1alpha1.ReasonWaitingForAgentHandover, v1alpha1.ReasonWaitingForRestartBackoff:
		return true
	}
	return false
}

// handingOver handles a transfer the agent would not start because it
// hands over to its successor: the successor starts it. The Migration
// says so, and is looked at again; by then the successor owns it.
func (r *Reconciler) handingOver(ctx context.Context, mig *v1alpha1.Migration) (time.Duration, error) {
	return r.poll(), r.report(ctx, mig, metav1.ConditionUnknown, v1alpha1.ReasonWaitingForAgentHandover,
		fmt.Sprintf("the node agent on %s is handing over to its successor (an upgrade of the agent), which will start the transfer; nothing was moved", r.Node))
}

func (r *Reconciler) poll() time.Duration {
	if r.Poll > 0 {
		return r.Poll
	}
	return DefaultPoll
}

func (r *Reconciler) reader() client.Reader {
	if r.Reader != nil {
		return r.Reader
	}
	return r.Client
}

// doneTTL bounds how long the reconciler remembers a Migration it ran to
// an outcome whose final status its cache never showed (it was deleted
// first): the cache catches up in seconds.
const doneTTL = 10 * time.Minute

// claim marks a Migration as this process's to run, unless it runs or ran
// here already (the cache may still show it unfinished after our report).
func (r *Reconciler) claim(uid types.UID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running == nil {
		r.running, r.done = map[types.UID]bool{}, map[types.UID]time.Time{}
	}
	for id, at := range r.done {
		if time.Since(at) > doneTTL {
			delete(r.done, id)
		}
	}
	if _, done := r.done[uid]; r.running[uid] || done {
		return false
	}
	r.running[uid] = true
	return true
}

// unclaim ends a reconcile of a Migration: finished when it ran to an
// outcome, else it is claimed again when it is requeued.
func (r *Reconciler) unclaim(uid types.UID, finished bool) {
	r.mu.Lock()
	delete(r.running, uid)
	if finished {
		r.done[uid] = time.Now()
	}
	r.mu.Unlock()
}

// forget drops a Migration whose outcome the cache now shows.
func (r *Reconciler) forget(uid types.UID) {
	r.mu.Lock()
	delete(r.done, uid)
	r.mu.Unlock()
}

// Remembered is how many finished Migrations the reconciler still
// remembers (for tests: it must not grow with every Migration).
func (r *Reconciler) Remembered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.done)
}

// endpoint is one side of a Migration as found on this node.
type endpoint struct {
	role, pod, container string
	statusID             string    // runtime://id of the running container
	lastExit             time.Time // when the container's last exited instance finished (zero: none)
	lastChange           time.Time // the pod's latest status change kubelet made (a sync)
	podUID               types.UID
	session              admin.Session
}

func (e *endpoint) String() string {
	return fmt.Sprintf("container %s of %s pod %s", e.container, e.role, e.pod)
}

// run looks for both processes and, once both have joined, performs the
// transfer. Until then it reports that it waits and returns how soon to
// look again (a requeue, not a worker held for up to the deadline).
func (r *Reconciler) run(ctx context.Context, mig *v1alpha1.Migration, deadline time.Time) (again time.Duration, err error) {
	src := &endpoint{role: "source", pod: mig.Spec.Source.Pod, container: mig.Spec.Source.Container}
	dst := &endpoint{role: "target", pod: mig.Spec.Target.Pod, container: mig.Spec.Target.Container}
	eps := []*endpoint{src, dst}
	waiting := fmt.Sprintf("waiting for the processes of %v and %v to join the agent socket", src, dst)
	if mig.Spec.Target.Image != "" {
		eps = eps[:1]
		waiting = fmt.Sprintf("waiting for the process of %v to join the agent socket", src)
	}
	last := r.find(ctx, mig, eps...)
	if last == nil {
		return r.transfer(ctx, mig, src, dst, deadline)
	}
	var fatal *fatalError
	if errors.As(last, &fatal) {
		return 0, r.report(ctx, mig, metav1.ConditionFalse, fatal.reason, fatal.msg)
	}
	wait := time.Until(deadline)
	if wait <= 0 {
		hint := ""
		var nj *notJoinedError
		if errors.As(last, &nj) {
			hint = " Does the application link the handoff SDK, and does its pod mount the agent's socket directory?"
		}
		return 0, r.report(ctx, mig, metav1.ConditionFalse, v1alpha1.ReasonProcessNotFound,
			fmt.Sprintf("%v by the deadline; nothing was moved.%s", last, hint))
	}
	if c := meta.FindStatusCondition(mig.Status.Conditions, v1alpha1.ConditionTransferred); c == nil || c.Reason != v1alpha1.ReasonWaitingForProcesses || c.Message != waiting {
		if err := r.report(ctx, mig, metav1.ConditionUnknown, v1alpha1.ReasonWaitingForProcesses, waiting); err != nil {
			return 0, err
		}
	}
	return min(wait, r.poll()), nil
}

// transfer performs the Migration between the processes found.
func (r *Reconciler) transfer(ctx context.Context, mig *v1alpha1.Migration, src, dst *endpoint, deadline time.Time) (again time.Duration, err error) {
	if mig.Spec.Target.Image != "" {
		return r.restartInPlace(ctx, mig, src, deadline)
	}
	mig.Status.SourceContainerID, mig.Status.TargetContainerID = src.statusID, dst.statusID
	// Preparing is reported once the agent started the transaction (a
	// handover then waits for it), not before: an agent that refuses it
	// while it hands over must not leave a Preparing for its successor
	// to take for a transfer cut short.
	rep := r.startReporter(ctx, mig)
	res, err := r.Agent.Migrate(src.session.ID, dst.session.ID, moveMask(&mig.Spec), time.Until(deadline), func(phase, msg string) {
		switch phase {
		case "Preparing":
			rep.send(v1alpha1.ReasonPreparing, fmt.Sprintf("asking pid %d (%v) to freeze and export to pid %d (%v)", src.session.PID, src, dst.session.PID, dst))
		case "Transferring":
			rep.send(v1alpha1.ReasonTransferring, msg)
		}
	})
	rep.stop()
	if errors.Is(err, nodeagent.ErrHandingOver) {
		return r.handingOver(ctx, mig)
	}
	if err != nil {
		return 0, r.report(ctx, mig, metav1.ConditionFalse, v1alpha1.ReasonTransferFailed, fmt.Sprintf("could not start: %v; nothing was moved", err))
	}
	mig.Status.Moved = &v1alpha1.Moved{Listeners: int32(res.Listeners), Connections: int32(res.Connections),
		PacketSockets: int32(res.Packets), StateBytes: int64(res.StateBytes), Batches: int32(res.Batches)}
	if res.Phase == nodeagent.PhaseCompleted {
		mig.Status.Pause = &metav1.Duration{Duration: res.Pause()}
		return 0, r.report(ctx, mig, metav1.ConditionTrue, v1alpha1.ReasonTransferred,
			fmt.Sprintf("moved %d listeners, %d connections and %d packet sockets (%d state bytes) in %d batches; pause %v, whole transfer %v",
				res.Listeners, res.Connections, res.Packets, res.StateBytes, res.Batches, res.Pause(), res.Duration()))
	}
	return 0, r.report(ctx, mig, metav1.ConditionFalse, failureReason(res.Code),
		fmt.Sprintf("%s: %s; the source resumed with all its sockets", res.Code, res.Message))
}

// restartInPlace updates the container's image while the agent holds its
// sockets: the source exports into the agent's store; only then, before
// the source lets go, the agent patches the image (so the container cannot
// restart with the old one, and a failed patch aborts with the source
// serving on); kubelet restarts the container, and its new process, in the
// same pod with the same name and uid, claims the sockets.
func (r *Reconciler) restartInPlace(ctx context.Context, mig *v1alpha1.Migration, src *endpoint, deadline time.Time) (again time.Duration, err error) {
	mig.Status.SourceContainerID = src.statusID
	key := backoffKey{pod: src.podUID, container: src.container, image: mig.Spec.Target.Image}
	if err := r.awaitBackoff(ctx, mig, src, key, deadline); err != nil {
		return 0, err
	}
	r.awaitKubeletQuiet(ctx, src, deadline)
	var at steps // the pause's steps, for the breakdown in the final report
	// patchErr is what the patch last returned; when it is an error, the
	// store aborted for it.
	var patchErr error
	// The patch carries the resourceVersion it was made from, so that it
	// cannot land on a pod that changed since (a restart, a new pod of the
	// same name). Status writes change it too, readiness probes among
	// them, so a conflict is read again and retried while the container
	// that exported is still the one running.
	// The patch runs on the store's goroutine while a reporter may write
	// mig: it reads only these.
	ns, image := mig.Namespace, mig.Spec.Target.Image
	patch := func() error {
		at.exported = time.Now()
		patchErr = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			pod := &corev1.Pod{}
			if err := r.reader().Get(ctx, types.NamespacedName{Namespace: ns, Name: src.pod}, pod); err != nil {
				return fmt.Errorf("get pod %s/%s: %w", ns, src.pod, err)
			}
			if pod.UID != src.podUID {
				return fmt.Errorf("pod %s/%s was replaced (uid %s, was %s)", ns, src.pod, pod.UID, src.podUID)
			}
			if id := runningContainerID(pod, src.container); id != src.statusID {
				return fmt.Errorf("container %s of pod %s/%s is now %q, not the %q that exported", src.container, ns, src.pod, id, src.statusID)
			}
			orig := pod.DeepCopy()
			for i := range pod.Spec.Containers {
				if pod.Spec.Containers[i].Name == src.container {
					pod.Spec.Containers[i].Image = image
				}
			}
			tracked := orig.Status.ObservedGeneration > 0
			if err := r.Client.Patch(ctx, pod, client.StrategicMergeFrom(orig, client.MergeFromWithOptimisticLock{}), client.FieldOwner(v1alpha1.AgentFieldManager)); err != nil {
				return fmt.Errorf("set the image of container %s of pod %s/%s to %s: %w", src.container, ns, src.pod, image, err)
			}
			at.patched = time.Now()
			r.backoff.started(key, src.lastExit, at.patched)
			if tracked {
				r.awaitKubelet(ctx, pod, deadline)
			}
			at.observed = time.Now()
			return nil
		})
		return patchErr
	}
	outcome := make(chan admin.Result, 1)
	start := time.Now()
	hold := max(time.Until(deadline), nodeagent.DefaultStoreHold)
	// Preparing once the store started (see transfer).
	rep := r.startReporter(ctx, mig)
	res, err := r.Agent.StoreFromWith(src.session.ID, moveMask(&mig.Spec), time.Until(deadline), hold, func(phase, _ string) {
		if phase == "Preparing" {
			rep.send(v1alpha1.ReasonPreparing, fmt.Sprintf("asking pid %d (%v) to freeze and export into the node agent's store", src.session.PID, src))
		}
	}, nodeagent.StoreOptions{BeforeReady: patch, Delivered: func(res admin.Result) { outcome <- res }})
	rep.stop()
	if errors.Is(err, nodeagent.ErrHandingOver) {
		return r.handingOver(ctx, mig)
	}
	if err != nil {
		return 0, r.report(ctx, mig, metav1.ConditionFalse, v1alpha1.ReasonTransferFailed, fmt.Sprintf("could not start: %v; nothing was moved", err))
	}
	at.released = time.Now()
	if res.Phase != nodeagent.PhaseCompleted {
		reason := failureReason(res.Code)
		if patchErr != nil {
			// The store aborted because the image could not be set.
			reason = v1alpha1.ReasonImageUpdateFailed
		}
		return 0, r.report(ctx, mig, metav1.ConditionFalse, reason, fmt.Sprintf("%s: %s; the source resumed with all its sockets", res.Code, res.Message))
	}
	mig.Status.Moved = &v1alpha1.Moved{Listeners: int32(res.Listeners), Connections: int32(res.Connections),
		PacketSockets: int32(res.Packets), StateBytes: int64(res.StateBytes), Batches: int32(res.Batches)}
	if err := r.report(ctx, mig, metav1.ConditionUnknown, v1alpha1.ReasonTransferring,
		fmt.Sprintf("the node agent holds %d listeners, %d connections and %d packet sockets while container %s restarts with image %s",
			res.Listeners, res.Connections, res.Packets, src.container, mig.Spec.Target.Image)); err != nil {
		return 0, err
	}
	var got admin.Result
	select {
	case got = <-outcome:
		at.claimed = time.Now()
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	if got.Phase != nodeagent.PhaseCompleted {
		return 0, r.report(ctx, mig, metav1.ConditionFalse, failureReason(got.Code),
			fmt.Sprintf("no restarted process of %v claimed the sockets: %s. Its clients were disconnected", src, got.Message))
	}
	for _, s := range r.Agent.Sessions() {
		if s.ID == got.To {
			at.joined = s.Since
			if s.ContainerID != "" {
				mig.Status.TargetContainerID = s.ContainerID
				if s.Runtime != "" {
					mig.Status.TargetContainerID = s.Runtime + "://" + s.ContainerID
				}
			}
		}
	}
	mig.Status.Pause = &metav1.Duration{Duration: at.claimed.Sub(start)}
	return 0, r.report(ctx, mig, metav1.ConditionTrue, v1alpha1.ReasonTransferred,
		fmt.Sprintf("container %s restarted with image %s and took over %d listeners, %d connections and %d packet sockets; pause %v (the restart included: %s)",
			src.container, mig.Spec.Target.Image, got.Listeners, got.Connections, got.Packets, mig.Status.Pause.Duration, at.breakdown(start)))
}

// reporter writes a transaction's progress to the Migration on a
// goroutine of its own: progress arrives on the transaction's goroutine,
// some of it in the middle of the pause, where no API call may wait. Each
// reason is written at most once, and send never blocks.
type reporter struct {
	ch   chan [2]string
	done chan struct{}
	sent map[string]bool // touched by send only, on the transaction's goroutine
}

// reporterReasons is how many reasons a reporter writes at most.
const reporterReasons = 2

func (r *Reconciler) startReporter(ctx context.Context, mig *v1alpha1.Migration) *reporter {
	p := &reporter{ch: make(chan [2]string, reporterReasons), done: make(chan struct{}), sent: map[string]bool{}}
	go func() {
		defer close(p.done)
		for m := range p.ch {
			if err := r.report(ctx, mig, metav1.ConditionUnknown, m[0], m[1]); err != nil {
				log.FromContext(ctx).Error(err, "report progress", "reason", m[0])
			}
		}
	}()
	return p
}

func (p *reporter) send(reason, msg string) {
	if p.sent[reason] || len(p.sent) == reporterReasons {
		return
	}
	p.sent[reason] = true
	p.ch <- [2]string{reason, msg}
}

// stop waits until everything sent is written: reports after it come
// later.
func (p *reporter) stop() {
	close(p.ch)
	<-p.done
}

// steps are when an in-place restart passed each of its steps.
type steps struct {
	exported, patched, observed, released, joined, claimed time.Time
}

// breakdown says what the pause from start was made of: the freeze and
// export, the image patch, kubelet reporting that it saw the new spec
// (kubelet's), the old container stopped and the new one started until
// its process joined (mostly kubelet's and the runtime's), and the
// sockets claimed.
func (s steps) breakdown(start time.Time) string {
	part := func(from, to time.Time) string {
		if from.IsZero() || to.IsZero() || to.Before(from) {
			return "?"
		}
		return to.Sub(from).Round(time.Millisecond).String()
	}
	return fmt.Sprintf("freeze and export %s, image patch %s, until kubelet saw it %s, old container stopped and new process joined %s, sockets claimed %s",
		part(start, s.exported), part(s.exported, s.patched), part(s.patched, s.observed), part(s.released, s.joined), part(s.joined, s.claimed))
}

// awaitBackoff waits, before anything is frozen, until kubelet will
// restart the container with the new image at once rather than hold the
// restart back (see restartBackoff), while the process serves on. It
// fails the Migration, nothing moved, when that is after the deadline.
func (r *Reconciler) awaitBackoff(ctx context.Context, mig *v1alpha1.Migration, src *endpoint, key backoffKey, deadline time.Time) error {
	d := r.backoff.wait(key, src.lastExit, time.Now())
	if d <= 0 {
		return nil
	}
	why := fmt.Sprintf("kubelet would hold the restart of %v with image %s back for up to %v (its restart back-off: the container ran that image before, and its last instance stopped at %s)",
		src, key.image, d.Round(100*time.Millisecond), src.lastExit.Format(time.RFC3339))
	if time.Now().Add(d).After(deadline) {
		return r.report(ctx, mig, metav1.ConditionFalse, v1alpha1.ReasonDeadlineExceeded,
			why+"; that is past the deadline, so nothing was moved: try again later, or with a longer timeout")
	}
	if r.Recorder != nil {
		r.Recorder.Eventf(mig, nil, corev1.EventTypeNormal, v1alpha1.ReasonWaitingForRestartBackoff, "Restart", "%s", why)
	}
	if err := r.report(ctx, mig, metav1.ConditionUnknown, v1alpha1.ReasonWaitingForRestartBackoff, why+"; the process serves on meanwhile"); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
	}
	return nil
}

// kubeletQuiet is how long after kubelet last synced a pod the agent
// starts its in-place restart. kubelet starts each sync of a pod only once
// its runtime cache was refreshed after the previous sync ended (the pod
// worker's GetNewerThan: a relist every second, and the relist's own
// time); an image patch that lands within that window waits for it with
// every socket held: "until kubelet saw it" in the pause's breakdown
// (the README has the numbers).
const kubeletQuiet = 3 * time.Second

// lastChange is the latest status change kubelet reported for pod (a
// container started, a condition changed): each came from a sync. The
// API's timestamps are whole seconds, cut down: the change may have come
// up to a second later.
func lastChange(pod *corev1.Pod) time.Time {
	var t time.Time
	for _, c := range pod.Status.Conditions {
		t = later(t, c.LastTransitionTime.Time)
	}
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.State.Running != nil {
			t = later(t, cs.State.Running.StartedAt.Time)
		}
	}
	if t.IsZero() {
		return t
	}
	return t.Add(time.Second)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// awaitKubeletQuiet waits, before anything is frozen and while the
// process serves on, until kubelet's last sync of the pod is kubeletQuiet
// old, so that kubelet acts on the image patch at once (see kubeletQuiet).
// It gives up at the deadline's half; the restart then only takes longer.
func (r *Reconciler) awaitKubeletQuiet(ctx context.Context, src *endpoint, deadline time.Time) {
	if src.lastChange.IsZero() {
		return
	}
	d := time.Until(src.lastChange.Add(kubeletQuiet))
	d = min(d, time.Until(deadline)/2)
	if d <= 0 {
		return
	}
	log.FromContext(ctx).V(1).Info("waiting for kubelet's last sync of the pod to age before the restart", "wait", d.String())
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// notJoinedError: the container runs, but no process of it joined the
// agent.
type notJoinedError struct{ msg string }

func (e *notJoinedError) Error() string { return e.msg }

// notRunningWhy says what kubelet reports about a container that does not
// run: why it waits, and how its last instance ended.
func notRunningWhy(pod *corev1.Pod, container string) string {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name != container {
			continue
		}
		why := ""
		if w := cs.State.Waiting; w != nil && w.Reason != "" {
			why = " (" + w.Reason
			if t := cs.LastTerminationState.Terminated; t != nil {
				why += fmt.Sprintf(", its last run exited with code %d", t.ExitCode)
				if t.Reason != "" {
					why += ", " + t.Reason
				}
			}
			why += ")"
		}
		return why
	}
	return ""
}

// fatalError is a lookup failure that waiting cannot fix.
type fatalError struct{ reason, msg string }

func (e *fatalError) Error() string { return e.msg }

// find looks up both pods' running containers and the agent sessions the
// kernel places in them.
// awaitKubelet waits until kubelet reports that it saw the patched spec
// (status.observedGeneration), at most until the deadline. A source that
// exits before that can be restarted from the old spec, with the old
// image; that container would claim the sockets, then be killed for the
// new image, and every connection would be lost with it. Once kubelet saw
// the new spec it stops the container itself (SIGTERM), so the source may
// be told Ready while it shuts down: the SDK and the store both treat an
// exit after Exported as letting go.
func (r *Reconciler) awaitKubelet(ctx context.Context, patched *corev1.Pod, deadline time.Time) {
	logger := log.FromContext(ctx)
	want, start := patched.Generation, time.Now()
	poll := r.Poll
	if poll <= 0 {
		poll = DefaultPoll
	}
	for {
		pod := &corev1.Pod{}
		err := r.reader().Get(ctx, client.ObjectKeyFromObject(patched), pod)
		switch {
		case err != nil:
			logger.Error(err, "reading the pod for kubelet's observed generation; letting the source go")
			return
		case pod.UID != patched.UID || pod.Status.ObservedGeneration >= want:
			logger.V(1).Info("kubelet saw the new image", "generation", want, "after", time.Since(start).String())
			return
		}
		if time.Now().After(deadline) {
			logger.Info("kubelet did not report the new spec before the deadline; letting the source go", "generation", want, "observed", pod.Status.ObservedGeneration)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(poll):
		}
	}
}

// lastExit is when the last exited instance of the named container
// finished, zero when none is known.
func lastExit(pod *corev1.Pod, container string) time.Time {
	for _, cs := range pod.Status.ContainerStatuses {
		if t := cs.LastTerminationState.Terminated; cs.Name == container && t != nil {
			return t.FinishedAt.Time
		}
	}
	return time.Time{}
}

// runningContainerID is the runtime://id of the named container if it
// runs, else "".
func runningContainerID(pod *corev1.Pod, container string) string {
	for _, cs := range pod.Status.ContainerStatuses {
		if cs.Name == container && cs.State.Running != nil {
			return cs.ContainerID
		}
	}
	return ""
}

func (r *Reconciler) find(ctx context.Context, mig *v1alpha1.Migration, eps ...*endpoint) error {
	sessions := r.Agent.Sessions()
	for _, e := range eps {
		pod := &corev1.Pod{}
		err := r.Client.Get(ctx, types.NamespacedName{Namespace: mig.Namespace, Name: e.pod}, pod)
		if apierrors.IsNotFound(err) {
			return &fatalError{v1alpha1.ReasonProcessNotFound, fmt.Sprintf("%s pod %s is gone from node %s; nothing was moved", e.role, e.pod, r.Node)}
		}
		if err != nil {
			return fmt.Errorf("get %s pod %s/%s: %w", e.role, mig.Namespace, e.pod, err)
		}
		if pod.Spec.NodeName != r.Node {
			return &fatalError{v1alpha1.ReasonContainerMismatch, fmt.Sprintf("%s pod %s runs on node %s, not on %s; nothing was moved", e.role, e.pod, pod.Spec.NodeName, r.Node)}
		}
		e.podUID = pod.UID
		e.statusID = runningContainerID(pod, e.container)
		e.lastExit = lastExit(pod, e.container)
		e.lastChange = lastChange(pod)
		if e.statusID == "" {
			return fmt.Errorf("%v is not running%s", e, notRunningWhy(pod, e.container))
		}
		var found []admin.Session
		for _, s := range sessions {
			id := podid.Identity{PodUID: s.PodUID, ContainerID: s.ContainerID, Runtime: s.Runtime}
			if s.PodUID == string(pod.UID) && id.MatchesStatus(e.statusID) {
				found = append(found, s)
			}
		}
		switch {
		case len(found) == 0:
			return &notJoinedError{fmt.Sprintf("no process of %v (%s) has joined the agent", e, e.statusID)}
		case len(found) > 1:
			// Two processes in one container: prefer the one in the role's
			// expected state (active source, standby target).
			var pick []admin.Session
			for _, s := range found {
				if s.Standby == (e.role == "target") {
					pick = append(pick, s)
				}
			}
			if len(pick) != 1 {
				return &fatalError{v1alpha1.ReasonContainerMismatch, fmt.Sprintf("%d processes of %v joined the agent and none stands out as the %s; nothing was moved", len(found), e, e.role)}
			}
			found = pick
		}
		e.session = found[0]
	}
	return nil
}

// moveMask turns spec.move into the protocol's mask.
func moveMask(s *v1alpha1.MigrationSpec) uint32 {
	var m uint32
	if s.Moves(v1alpha1.MoveListeners) {
		m |= wire.MoveListeners
	}
	if s.Moves(v1alpha1.MoveConnections) {
		m |= wire.MoveConns
	}
	if s.Moves(v1alpha1.MovePacketSockets) {
		m |= wire.MovePackets
	}
	return m
}

// failureReason maps the agent's failure code to the reason the
// Transferred condition ends with: codeReason's, and TransferFailed for a
// code this agent does not know (its own results never carry one).
func failureReason(c wire.Code) string {
	if reason, ok := codeReason(c); ok {
		return reason
	}
	return v1alpha1.ReasonTransferFailed
}

// codeReason is the reason for each failure code this agent knows; every
// one of wire.Codes has its case (a test checks), so a new code must be
// given its reason here.
func codeReason(c wire.Code) (string, bool) {
	switch c {
	case wire.CodeTargetLost:
		return v1alpha1.ReasonTargetLost, true
	case wire.CodeSourceLost:
		return v1alpha1.ReasonSourceLost, true
	case wire.CodeDeadline:
		return v1alpha1.ReasonDeadlineExceeded, true
	case wire.CodeNotClaimed:
		// No restarted process claimed what the store held.
		return v1alpha1.ReasonProcessNotFound, true
	case wire.CodeVersion, wire.CodeMalformed, wire.CodeRefused, wire.CodeBusy, wire.CodeInternal,
		wire.CodeNotFound, wire.CodeImport, wire.CodeExport, wire.CodeCancelled, wire.CodeUnexpected,
		wire.CodeAgentClosed:
		// The transaction aborted; the message says why.
		return v1alpha1.ReasonTransferFailed, true
	}
	return "", false
}

// report applies the agent's part of the status with the Transferred
// condition, and records an Event when the outcome is final.
func (r *Reconciler) report(ctx context.Context, mig *v1alpha1.Migration, status metav1.ConditionStatus, reason, msg string) error {
	if status == metav1.ConditionUnknown && reason != v1alpha1.ReasonWaitingForAgentHandover && r.Agent.HandedOver() {
		// Progress is the successor's to report now; outcomes this agent
		// owes (an in-place restart it waited for) are still written.
		return nil
	}
	meta.SetStatusCondition(&mig.Status.Conditions, metav1.Condition{
		Type: v1alpha1.ConditionTransferred, Status: status, Reason: reason, Message: msg, ObservedGeneration: mig.Generation,
	})
	log.FromContext(ctx).Info("transfer", "status", status, "reason", reason, "message", msg)
	if r.Recorder != nil && status != metav1.ConditionUnknown {
		kind := corev1.EventTypeNormal
		if status == metav1.ConditionFalse {
			kind = corev1.EventTypeWarning
		}
		r.Recorder.Eventf(mig, nil, kind, reason, "Transfer", "%s", msg)
	}
	return migstatus.Agent.Apply(ctx, r.Client, mig)
}
