// Package childproc holds the small helpers the tests share for talking
// to child processes they re-exec: reading key=value report lines and
// forwarding a child's stderr to the test log.
package childproc

import (
	"strings"
	"testing"
)

// Field extracts the value of key=value from a child's report line, or "".
func Field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// LogWriter writes each line it gets to t's log, prefixed with the
// child's role, so a failing test shows what its children said.
type LogWriter struct {
	T      testing.TB
	Prefix string
}

// Write logs each line of b; it never fails.
func (w *LogWriter) Write(b []byte) (int, error) {
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		w.T.Logf("[%s] %s", w.Prefix, l)
	}
	return len(b), nil
}
