package handoff

import (
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/wire"
)

// TestOutboxFillsBodies: every batch the outbox seals fits the body limit
// and the descriptor limit, whatever the keys and states: long keys
// (listeners' addresses) fill the body before the descriptors do, even
// with the states in a memfd; large states move to a memfd with a slot
// left for it.
func TestOutboxFillsBodies(t *testing.T) {
	cases := []struct {
		name          string
		n, key, state int
	}{
		{"connections", 1000, 3, 100},
		{"long keys", 600, 1000, 0},
		{"long keys and states", 600, 1000, 2000},
		{"big states", 600, 3, 60 << 10},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := &outbox{kick: make(chan struct{}, 1)}
			key := strings.Repeat("k", tc.key)
			state := make([]byte, tc.state)
			for i := 0; i < tc.n; i++ {
				b.add(item{entry: wire.Entry{Kind: wire.KindListener, Key: key, State: state}, fd: 100 + i, copy: -1})
			}
			b.close()
			total := 0
			for _, m := range b.full {
				es := make([]wire.Entry, len(m.its))
				for i, it := range m.its {
					es[i] = it.entry
				}
				body, flags, _ := wire.AppendBatch(nil, es)
				nfds := len(es)
				if flags&wire.BatchMemfd != 0 {
					nfds++
				}
				if len(body) > wire.MaxBody || nfds > wire.MaxFDs {
					t.Fatalf("a batch of %d entries has a body of %d bytes and %d descriptors; limits %d and %d", len(es), len(body), nfds, wire.MaxBody, wire.MaxFDs)
				}
				total += len(es)
			}
			if total != tc.n {
				t.Fatalf("%d entries in the batches, want %d", total, tc.n)
			}
		})
	}
}
