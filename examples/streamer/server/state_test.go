package server

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

func TestStateRoundTrip(t *testing.T) {
	states := []connState{
		{Phase: phaseRequest},
		{Phase: phaseRequest, Request: []byte("GET /streams/a HT")},
		{Phase: phaseRequest, Request: bytes.Repeat([]byte{'x'}, maxRequest)},
		{Phase: phaseStream, Name: "a", Next: 0},
		{Phase: phaseStream, Name: "s-1.x~_", Next: 1638, Unsent: []byte{1, 2, 3}},
		{Phase: phaseStream, Name: "due", Next: 32, Due: 1_790_000_000_123_456_789},
		{Phase: phaseStream, Name: strings.Repeat("n", maxName), Next: 1 << 62, Unsent: bytes.Repeat([]byte{0xff}, 100000)},
		{Phase: phaseClosing, Unsent: respNotFound},
		{Phase: phaseClosing},
		{Phase: phaseEcho},
		{Phase: phaseEcho, Seq: 41, Request: []byte("hello, w"), Unsent: []byte(okHeader)},
		{Phase: phaseEcho, Seq: echoMaxSeq - 1, Request: make([]byte, echoRequestLen), Unsent: make([]byte, echoReplyLen)},
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		st := connState{Phase: phase(1 + r.IntN(4))}
		switch st.Phase {
		case phaseRequest:
			st.Request = randBytes(r, r.IntN(maxRequest+1))
		case phaseStream:
			st.Name = "r" + strings.Repeat("z", r.IntN(maxName))
			st.Next = r.Int64N(1 << 62)
			st.Unsent = randBytes(r, r.IntN(5000))
			st.Due = r.Int64N(1 << 62)
		case phaseClosing:
			st.Unsent = randBytes(r, r.IntN(500))
		case phaseEcho:
			st.Seq = r.Uint64N(echoMaxSeq)
			st.Request = randBytes(r, r.IntN(echoRequestLen+1))
			st.Unsent = randBytes(r, r.IntN(maxEchoUnsent+1))
		}
		states = append(states, st)
	}
	for i, st := range states {
		b := appendState(nil, &st)
		got, err := decodeState(b)
		if err != nil {
			t.Fatalf("state %d (%s): decode: %v", i, st.Phase, err)
		}
		if !sameState(got, st) {
			t.Fatalf("state %d: round trip gave %+v, want %+v", i, brief(got), brief(st))
		}
		// Every strict prefix is truncated and must be refused.
		for n := range len(b) {
			if n > 64 && n < len(b)-64 {
				continue
			}
			if _, err := decodeState(b[:n]); !errors.Is(err, errBadState) {
				t.Fatalf("state %d: prefix of %d/%d bytes decoded (err %v)", i, n, len(b), err)
			}
		}
		if _, err := decodeState(append(b, 0)); !errors.Is(err, errBadState) {
			t.Fatalf("state %d: trailing byte accepted", i)
		}
	}
}

func TestStateRejects(t *testing.T) {
	cases := map[string][]byte{
		"empty":             nil,
		"version only":      {stateVersion},
		"bad version":       {3, byte(phaseStream), 1, 'a', 0, 0, 0},
		"due too big":       {stateVersion, byte(phaseStream), 1, 'a', 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
		"due missing":       {stateVersion, byte(phaseStream), 1, 'a', 0, 0},
		"unknown phase":     {stateVersion, 9},
		"zero phase":        {stateVersion, 0},
		"empty name":        {stateVersion, byte(phaseStream), 0, 0, 0},
		"bad name":          {stateVersion, byte(phaseStream), 1, '/', 0, 0},
		"name too long":     appendState(nil, &connState{Phase: phaseStream, Name: strings.Repeat("a", maxName+1)}),
		"huge unsent":       {stateVersion, byte(phaseClosing), 0xff, 0xff, 0xff, 0xff, 0x0f},
		"overlong varint":   {stateVersion, byte(phaseClosing), 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
		"offset too big":    {stateVersion, byte(phaseStream), 1, 'a', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0},
		"request too long":  appendState(nil, &connState{Phase: phaseRequest, Request: make([]byte, maxRequest+1)}),
		"echo seq too big":  appendState(nil, &connState{Phase: phaseEcho, Seq: echoMaxSeq}),
		"echo request long": appendState(nil, &connState{Phase: phaseEcho, Request: make([]byte, echoRequestLen+1)}),
		"echo unsent long":  appendState(nil, &connState{Phase: phaseEcho, Unsent: make([]byte, maxEchoUnsent+1)}),
		"echo truncated":    {stateVersion, byte(phaseEcho), 5, 0},
	}
	for name, b := range cases {
		if st, err := decodeState(b); !errors.Is(err, errBadState) {
			t.Errorf("%s: decodeState(%x) = %+v, %v; want errBadState", name, b, brief(st), err)
		}
	}
}

// TestStateVersion1 decodes a state from a process that predates Due: the
// next chunk is due at once.
func TestStateVersion1(t *testing.T) {
	st, err := decodeState([]byte{1, byte(phaseStream), 1, 'a', 64, 2, 7, 8})
	if err != nil {
		t.Fatal(err)
	}
	want := connState{Phase: phaseStream, Name: "a", Next: 64, Unsent: []byte{7, 8}}
	if !sameState(st, want) {
		t.Fatalf("version 1 state decoded as %+v, want %+v", st, want)
	}
}

// reencodes checks that an accepted state encodes back to b, or for a
// version 1 record, to a state that decodes the same.
func reencodes(b []byte, st connState) bool {
	re := appendState(nil, &st)
	if b[0] == 1 {
		again, err := decodeState(re)
		return err == nil && sameState(again, st)
	}
	return bytes.Equal(re, b)
}

// TestStateGarbage feeds random and mutated bytes: decoding must never
// panic, and whatever it accepts must re-encode to the same bytes.
func TestStateGarbage(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	valid := appendState(nil, &connState{Phase: phaseStream, Name: "abc", Next: 99999, Unsent: []byte("hello")})
	for i := range 20000 {
		var b []byte
		if i%2 == 0 {
			b = randBytes(r, r.IntN(40))
			if len(b) > 0 {
				b[0] = stateVersion
			}
		} else {
			b = append([]byte{}, valid...)
			b[r.IntN(len(b))] = byte(r.Uint32())
		}
		st, err := decodeState(b)
		if err != nil {
			continue
		}
		if !reencodes(b, st) {
			t.Fatalf("decodeState(%x) accepted %+v which re-encodes to %x", b, brief(st), appendState(nil, &st))
		}
	}
}

func FuzzDecodeState(f *testing.F) {
	f.Add(appendState(nil, &connState{Phase: phaseRequest, Request: []byte("GET /")}))
	f.Add(appendState(nil, &connState{Phase: phaseStream, Name: "a", Next: 64, Unsent: []byte{1}}))
	f.Add(appendState(nil, &connState{Phase: phaseClosing, Unsent: respBadRequest}))
	f.Add([]byte{1, byte(phaseStream), 1, 'a', 64, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b)
		if err != nil {
			return
		}
		if !reencodes(b, st) {
			t.Fatalf("accepted %x re-encodes to %x", b, appendState(nil, &st))
		}
	})
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sameState(a, b connState) bool {
	norm := func(s connState) connState {
		if len(s.Request) == 0 {
			s.Request = nil
		}
		if len(s.Unsent) == 0 {
			s.Unsent = nil
		}
		return s
	}
	return reflect.DeepEqual(norm(a), norm(b))
}

// brief shortens a state for messages.
func brief(s connState) connState {
	if len(s.Request) > 32 {
		s.Request = s.Request[:32]
	}
	if len(s.Unsent) > 32 {
		s.Unsent = s.Unsent[:32]
	}
	return s
}
