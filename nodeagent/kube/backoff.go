package kube

import (
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// kubelet's container restart back-off, as kubelet 1.37 applies it with
// its default settings (pkg/kubelet/kuberuntime doBackOff, kubelet.go
// newCrashLoopBackOff). Whenever kubelet starts a container of which an
// exited instance is still kept (there always is one after the first
// restart), it looks up an entry keyed by the pod, the container's name,
// its image and its resources. If that entry is younger than ten minutes
// and the exited instance finished less than the entry's back-off ago,
// kubelet does not start the container: "back-off restarting failed
// container", for that long. Otherwise it starts it and doubles the
// entry's back-off (10 s at first, at most 5 min). It does not matter who
// stopped the exited instance: an in-place restart back to an image the
// container ran before (a rollback, or A → B → A) within that window is
// held back, while the agent holds every socket and every client waits.
const (
	kubeletInitialBackoff = 10 * time.Second
	kubeletMaxBackoff     = 5 * time.Minute
	kubeletBackoffExpiry  = 10 * time.Minute
	// backoffMargin covers the API's one-second resolution of
	// finishedAt, and kubelet's own sync delay.
	backoffMargin = 1500 * time.Millisecond
)

// backoffKey is kubelet's key, without the resources: an image update
// leaves them as they are.
type backoffKey struct {
	pod       types.UID
	container string
	image     string
}

type backoffEntry struct {
	backoff    time.Duration
	lastUpdate time.Time
}

// restartBackoff tracks kubelet's back-off entries for the restarts this
// agent caused, so that it can wait, before it freezes anything, until
// kubelet will restart the container at once. kubelet's state lives in
// kubelet's memory; this model knows only the restarts this agent process
// performed (a crash restart, or an agent restart, is unknown to it).
type restartBackoff struct {
	mu      sync.Mutex
	entries map[backoffKey]backoffEntry
}

// wait is how long to wait from now before restarting the container with
// image, given that its last exited instance finished at lastExit (zero:
// none is kept, so kubelet does not look).
func (b *restartBackoff) wait(k backoffKey, lastExit, now time.Time) time.Duration {
	if lastExit.IsZero() {
		return 0
	}
	b.mu.Lock()
	e, ok := b.entries[k]
	b.mu.Unlock()
	if !ok || lastExit.Sub(e.lastUpdate) > kubeletBackoffExpiry {
		return 0
	}
	return max(0, lastExit.Add(e.backoff+backoffMargin).Sub(now))
}

// started records that kubelet started the container with image at now,
// after an instance that finished at lastExit, as kubelet records it.
func (b *restartBackoff) started(k backoffKey, lastExit, now time.Time) {
	if lastExit.IsZero() {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.entries == nil {
		b.entries = map[backoffKey]backoffEntry{}
	}
	e, ok := b.entries[k]
	if !ok || lastExit.Sub(e.lastUpdate) > kubeletBackoffExpiry {
		e = backoffEntry{backoff: kubeletInitialBackoff}
	} else {
		e.backoff = min(2*e.backoff, kubeletMaxBackoff)
	}
	e.lastUpdate = now
	b.entries[k] = e
	for key, old := range b.entries {
		if now.Sub(old.lastUpdate) > kubeletBackoffExpiry {
			delete(b.entries, key)
		}
	}
}
