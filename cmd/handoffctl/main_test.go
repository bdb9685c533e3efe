package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestUsage checks the exit status and stream of each way to ask for, or
// earn, the usage text; none of them may dial the agent.
func TestUsage(t *testing.T) {
	nowhere := filepath.Join(t.TempDir(), "no-agent.sock")
	for _, c := range []struct {
		args     []string
		code     int
		out, err string // substrings expected on stdout and stderr
		notOut   bool   // stdout must stay empty
	}{
		{args: []string{"--help"}, code: 0, out: "Usage:"},
		{args: []string{"-h"}, code: 0, out: "Usage:"},
		{args: []string{"help"}, code: 0, out: "Usage:"},
		{args: []string{}, code: 2, err: "Usage:", notOut: true},
		{args: []string{"bogus"}, code: 2, err: `unknown command "bogus"`, notOut: true},
		{args: []string{"--no-such-flag"}, code: 2, err: "no-such-flag", notOut: true},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append([]string{"--socket", nowhere}, c.args...), &stdout, &stderr)
		if code != c.code || !strings.Contains(stdout.String(), c.out) || !strings.Contains(stderr.String(), c.err) ||
			(c.notOut && stdout.Len() > 0) || strings.Contains(stderr.String(), "no-agent.sock") {
			t.Errorf("handoffctl %q: status %d, stdout %q, stderr %q; want status %d, %q on stdout, %q on stderr, and no dial",
				c.args, code, stdout.String(), stderr.String(), c.code, c.out, c.err)
		}
	}
}
