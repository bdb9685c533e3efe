package wire

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// fuzzSeeds are valid and almost-valid datagrams, with the descriptor
// count they arrive with. testdata/fuzz/FuzzDecode holds more.
func fuzzSeeds() []struct {
	b    []byte
	nfds int
} {
	msg := func(typ Type, flags uint16, nfds int, body []byte) []byte {
		b := make([]byte, HeaderLen, HeaderLen+len(body))
		PutHeader(b, Header{Version: 1, Type: typ, Flags: flags, TxID: 1, NFDs: uint16(nfds), BodyLen: uint32(len(body))})
		return append(b, body...)
	}
	inline, _, _ := MarshalBatch([]Entry{{Kind: KindListener, Key: "tcp|:8080"}, {Kind: KindConn, State: []byte("state")}, {Kind: KindPacket, Key: "udp|:53"}})
	memfd := specBatch([]Entry{{Kind: KindConn}, {Kind: KindConn}}, []uint32{100, 200}, true)
	return []struct {
		b    []byte
		nfds int
	}{
		{msg(TypeHello, 0, 0, Hello{MinVersion: 1, MaxVersion: 1, Role: RoleApp, Flags: HelloStandby, Name: "web"}.Marshal()), 0},
		{msg(TypeWelcome, WelcomePending, 0, Welcome{Version: 1, Flags: 1, SessionID: 4, PID: 100}.Marshal()), 0},
		{msg(TypeError, 0, 0, Failure{Code: CodeRefused, Reason: "no"}.Marshal()), 0},
		{msg(TypePrepare, 0, 1, Prepare{What: MoveAll, TimeoutMS: 1000, Target: 2}.Marshal()), 1},
		{msg(TypeBegin, 0, 1, Begin{TimeoutMS: 1000, Source: 1, SourceName: "web"}.Marshal()), 1},
		{msg(TypeBatch, 0, 3, inline), 3},
		{msg(TypeBatch, BatchMemfd, 3, memfd), 3},
		{msg(TypeExported, 0, 0, Summary{Listeners: 1, Conns: 2, Batches: 1, StateBytes: 5}.Marshal()), 0},
		{msg(TypeServing, 0, 0, Stamp{MonoNS: 12345}.Marshal()), 0},
		{msg(TypeRequest, 0, 0, []byte(`{"op":"sessions"}`)), 0},
		{msg(TypeCommit, 0, 0, nil), 0},
		{[]byte("HOFF"), 0},
		{nil, 0},
		{inline, 3},
		{memfd, 3},
	}
}

// FuzzDecode feeds arbitrary bytes and descriptor counts to Decode, to
// every body decoder and to DecodeBatch. Nothing may panic, and whatever
// decodes must encode back to the same bytes (reserved bytes as zero).
func FuzzDecode(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s.b, s.nfds)
	}
	f.Fuzz(func(t *testing.T, b []byte, nfds int) {
		h, body, err := Decode(b, nfds)
		if err == nil {
			if len(body) != int(h.BodyLen) || int(h.NFDs) != nfds || h.BodyLen > MaxBody || nfds > MaxFDs || !h.Type.Known() ||
				h.Version < MinVersion || h.Version > MaxVersion {
				t.Fatalf("decoded an inconsistent header %+v with %d body bytes and %d descriptors", h, len(body), nfds)
			}
			out := make([]byte, HeaderLen, len(b))
			PutHeader(out, h)
			out = append(out, body...)
			want := bytes.Clone(b)
			clear(want[22:24])
			clear(want[28:32])
			if !bytes.Equal(out, want) {
				t.Fatalf("header re-encodes as % x, want % x", out[:HeaderLen], want[:HeaderLen])
			}
			h2, body2, err := Decode(out, nfds)
			if err != nil || h2 != h || !bytes.Equal(body2, body) {
				t.Fatalf("re-encoded message decodes as %+v, %v", h2, err)
			}
			checkBodies(t, body, nfds)
		}
		checkBodies(t, b, nfds)
	})
}

// checkBodies runs every body decoder on p and checks what decodes.
func checkBodies(t *testing.T, p []byte, nfds int) {
	var hello Hello
	if hello.Unmarshal(p) == nil {
		want := bytes.Clone(p)
		clear(want[6:8])
		if got := hello.Marshal(); !bytes.Equal(got, want) {
			t.Fatalf("hello %+v re-encodes as % x, want % x", hello, got, want)
		}
	}
	var w Welcome
	if w.Unmarshal(p) == nil && !bytes.Equal(w.Marshal(), p) {
		t.Fatalf("welcome %+v re-encodes differently", w)
	}
	var f Failure
	if f.Unmarshal(p) == nil {
		got := f.Marshal()
		if len(f.Reason) <= 4096 && !bytes.Equal(got, p) {
			t.Fatalf("failure %+v re-encodes differently", f)
		}
		if len(f.Reason) > 4096 && (len(got) != 6+4096 || !bytes.Equal(got[6:], p[6:6+4096])) {
			t.Fatalf("failure with a %d-byte reason re-encodes as %d bytes", len(f.Reason), len(got))
		}
	}
	var pr Prepare
	if pr.Unmarshal(p) == nil && !bytes.Equal(pr.Marshal(), p) {
		t.Fatalf("prepare %+v re-encodes differently", pr)
	}
	var bg Begin
	if bg.Unmarshal(p) == nil {
		want := bytes.Clone(p)
		clear(want[4:8])
		if !bytes.Equal(bg.Marshal(), want) {
			t.Fatalf("begin %+v re-encodes differently", bg)
		}
	}
	var s Summary
	if s.Unmarshal(p) == nil && !bytes.Equal(s.Marshal(), p) {
		t.Fatalf("summary %+v re-encodes differently", s)
	}
	var st Stamp
	if st.Unmarshal(p) == nil && !bytes.Equal(st.Marshal(), p) {
		t.Fatalf("stamp %+v re-encodes differently", st)
	}
	checkBatch(t, p, nfds)
	if len(p) >= 4 {
		// The count the body itself implies, so the fuzzer gets past the
		// descriptor check without having to guess it.
		implied := int(binary.LittleEndian.Uint16(p))
		if binary.LittleEndian.Uint16(p[2:])&BatchMemfd != 0 {
			implied++
		}
		if implied != nfds {
			checkBatch(t, p, implied)
		}
	}
}

func checkBatch(t *testing.T, p []byte, nfds int) {
	bi, err := DecodeBatch(p, nfds)
	if err != nil {
		return
	}
	n := len(bi.Entries)
	if n == 0 || len(bi.StateLens) != n || n+boolInt(bi.Memfd) != nfds {
		t.Fatalf("batch of %d entries, %d lengths, memfd %v decoded with %d descriptors", n, len(bi.StateLens), bi.Memfd, nfds)
	}
	var sum uint64
	for i, e := range bi.Entries {
		if e.Kind < KindListener || e.Kind > KindPacket || len(e.Key) > MaxKey || bi.StateLens[i] > MaxState {
			t.Fatalf("entry %d out of limits: kind %d, key %d bytes, state %d bytes", i, e.Kind, len(e.Key), bi.StateLens[i])
		}
		if bi.Memfd && e.State != nil {
			t.Fatalf("memfd batch entry %d has an inline state", i)
		}
		if !bi.Memfd && len(e.State) != int(bi.StateLens[i]) {
			t.Fatalf("entry %d: state of %d bytes, length says %d", i, len(e.State), bi.StateLens[i])
		}
		sum += uint64(bi.StateLens[i])
	}
	if sum != bi.StateSum {
		t.Fatalf("state sum %d, lengths add up to %d", bi.StateSum, sum)
	}
	// The bytes are exactly the specified layout, reserved bytes aside.
	if got := specBatch(bi.Entries, bi.StateLens, bi.Memfd); !bytes.Equal(got, zeroBatchReserved(p, bi)) {
		t.Fatalf("batch re-encodes as % x, want % x", got, p)
	}
	if bi.Memfd {
		if bi.StateSum > 1<<20 {
			return // too big to rebuild in a fuzz iteration
		}
		all := make([]byte, bi.StateSum)
		for i := range all {
			all[i] = byte(i)
		}
		SplitStates(&bi, all)
		for i, e := range bi.Entries {
			if len(e.State) != int(bi.StateLens[i]) {
				t.Fatalf("split state %d: %d bytes, want %d", i, len(e.State), bi.StateLens[i])
			}
		}
	}
	// MarshalBatch picks inline or memfd by size; either way the result
	// decodes to the same entries.
	body, flags, states := MarshalBatch(bi.Entries)
	memfd := flags&BatchMemfd != 0
	if memfd != (InlineSize(bi.Entries) > MaxBody) {
		t.Fatalf("MarshalBatch chose memfd %v for an inline size of %d", memfd, InlineSize(bi.Entries))
	}
	if !memfd && !bi.Memfd && !bytes.Equal(body, zeroBatchReserved(p, bi)) {
		t.Fatalf("inline batch re-marshals differently")
	}
	back, err := DecodeBatch(body, n+boolInt(memfd))
	if err != nil {
		t.Fatalf("re-marshalled batch does not decode: %v", err)
	}
	if memfd {
		SplitStates(&back, states)
	}
	for i := range bi.Entries {
		if back.Entries[i].Kind != bi.Entries[i].Kind || back.Entries[i].Key != bi.Entries[i].Key || !bytes.Equal(back.Entries[i].State, bi.Entries[i].State) {
			t.Fatalf("entry %d changed in a marshal round trip", i)
		}
	}
}

// zeroBatchReserved returns p with the batch's reserved bytes cleared.
func zeroBatchReserved(p []byte, bi BatchInfo) []byte {
	q := bytes.Clone(p)
	clear(q[4:8])
	off := 8
	for i, e := range bi.Entries {
		q[off+1] = 0
		off += entryFixed + len(e.Key)
		if !bi.Memfd {
			off += int(bi.StateLens[i])
		}
	}
	return q
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
