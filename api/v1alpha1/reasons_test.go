package v1alpha1

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestEndReasonsInREADME keeps the README's table of the reasons a
// Migration ends with in step with EndReasons: one row for each, and no
// row for anything else.
func TestEndReasonsInREADME(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatalf("read the README: %v", err)
	}
	const head = "| reason | what happened | what to do |"
	text := string(b)
	i := strings.Index(text, head)
	if i < 0 {
		t.Fatalf("the README has no table starting %q", head)
	}
	row := regexp.MustCompile("^\\| `([A-Za-z]+)` \\|")
	var rows []string
	for _, line := range strings.Split(text[i:], "\n")[2:] {
		if !strings.HasPrefix(line, "|") {
			break
		}
		m := row.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("README row names no single reason: %s", line)
			continue
		}
		rows = append(rows, m[1])
	}
	want := EndReasons()
	for _, r := range want {
		if n := countOf(rows, r); n != 1 {
			t.Errorf("the README's table has %d rows for %s, want 1", n, r)
		}
	}
	for _, r := range rows {
		if !slices.Contains(want, r) {
			t.Errorf("the README's table has a row for %s, which is not in EndReasons", r)
		}
	}
}

func countOf(s []string, v string) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}
