package nodeagent

import "time"

// PidfdOfPeer is the identification PeerOf falls back to on kernels
// without SO_PEERPIDFD, which the test machine's kernel has.
var PidfdOfPeer = pidfdOfPeer

// SetHandoverTakenWait shortens how long an agent waits for its
// successor's Taken; the returned func restores it.
func SetHandoverTakenWait(d time.Duration) func() {
	old := handoverTakenWait
	handoverTakenWait = d
	return func() { handoverTakenWait = old }
}
