//go:build !race

package handoff_test

// raceDetector says whether the race detector is built in: it multiplies
// a process's memory, so measurements of it mean less.
const raceDetector = false
