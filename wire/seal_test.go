package wire

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestSealRoundTrip(t *testing.T) {
	entries := []SealEntry{
		{Index: 0, Verdict: SealKeep, State: []byte("abc")},
		{Index: 7, Verdict: SealDrop},
		{Index: 3, Verdict: SealKeep},
	}
	body, flags, states := AppendSeal(nil, entries)
	if flags != 0 || states != nil {
		t.Fatalf("small seal: flags %#x, %d memfd bytes; want inline", flags, len(states))
	}
	if len(body) != SealInlineSize(entries) {
		t.Fatalf("body %d bytes, SealInlineSize %d", len(body), SealInlineSize(entries))
	}
	var si SealInfo
	if err := DecodeSealInto(&si, body, 0); err != nil {
		t.Fatal(err)
	}
	for i, e := range si.Entries {
		if e.Index != entries[i].Index || e.Verdict != entries[i].Verdict || !bytes.Equal(e.State, entries[i].State) {
			t.Fatalf("entry %d: got %+v, want %+v", i, e, entries[i])
		}
	}
}

func TestSealMemfd(t *testing.T) {
	big := bytes.Repeat([]byte{'s'}, 40000)
	entries := []SealEntry{{Index: 1, Verdict: SealKeep, State: big}, {Index: 2, Verdict: SealKeep, State: big[:30000]}}
	body, flags, states := AppendSeal(nil, entries)
	if flags != BatchMemfd || len(states) != 70000 || len(body) != 8+2*SealEntryFixed {
		t.Fatalf("large seal: flags %#x, body %d, states %d", flags, len(body), len(states))
	}
	var si SealInfo
	if err := DecodeSealInto(&si, body, 1); err != nil {
		t.Fatal(err)
	}
	if si.StateSum != 70000 {
		t.Fatalf("state sum %d", si.StateSum)
	}
	SplitSealStates(&si, states)
	if !bytes.Equal(si.Entries[0].State, big) || len(si.Entries[1].State) != 30000 {
		t.Fatal("states not split back in order")
	}
	if err := DecodeSealInto(&si, body, 0); !errors.Is(err, ErrFDCount) {
		t.Fatalf("memfd seal without its descriptor: %v, want ErrFDCount", err)
	}
}

func TestDecodeSealRejects(t *testing.T) {
	good := func() []byte {
		b, _, _ := AppendSeal(nil, []SealEntry{{Index: 0, Verdict: SealKeep, State: []byte("x")}, {Index: 1, Verdict: SealDrop}})
		return b
	}
	set := func(b []byte, off int, v byte) []byte { b[off] = v; return b }
	cases := []struct {
		name string
		body []byte
		nfds int
		want error
		says string
	}{
		{"short header", []byte{1, 0, 0}, 0, ErrMalformed, "seal"},
		{"empty", []byte{0, 0, 0, 0, 0, 0, 0, 0}, 0, ErrMalformed, "empty seal"},
		{"unknown flag", set(good(), 2, 2), 0, ErrMalformed, "unknown flags 0x2"},
		{"descriptor without memfd flag", good(), 1, ErrFDCount, "memfd false"},
		{"verdict 0", set(good(), 8+4, 0), 0, ErrMalformed, "entry 0 has unknown verdict 0"},
		{"dropped with a state", set(good(), 8+4, SealDrop), 0, ErrMalformed, "dropped entry 0 carries a state"},
		{"trailing bytes", append(good(), 0), 0, ErrMalformed, "seal"},
		{"truncated", good()[:20], 0, ErrMalformed, "seal"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var si SealInfo
			err := DecodeSealInto(&si, tc.body, tc.nfds)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.says) {
				t.Fatalf("DecodeSealInto: %v, want %v saying %q", err, tc.want, tc.says)
			}
		})
	}
}

func TestSummaryCopyCounts(t *testing.T) {
	s := Summary{Conns: 3, Batches: 2, Copies: 5, Seals: 1}
	b := s.Marshal()
	if len(b) != summaryCopyLen {
		t.Fatalf("summary with copies is %d bytes, want %d", len(b), summaryCopyLen)
	}
	var got Summary
	if err := got.Unmarshal(b); err != nil || got != s {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, s)
	}
	if n := len(Summary{Conns: 3}.Marshal()); n != summaryLen {
		t.Fatalf("summary without copies is %d bytes, want %d (versions 1 and 2)", n, summaryLen)
	}
}
