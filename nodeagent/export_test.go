package nodeagent

// PidfdOfPeer is the identification PeerOf falls back to on kernels
// without SO_PEERPIDFD, which the test machine's kernel has.
var PidfdOfPeer = pidfdOfPeer
