package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// specBatch encodes a batch body from the layout in docs/protocol.md,
// independently of MarshalBatch: 8-byte batch header, then per entry kind,
// reserved, key length, state length, key, and the state when inline.
func specBatch(entries []Entry, stateLens []uint32, memfd bool) []byte {
	b := binary.LittleEndian.AppendUint16(nil, uint16(len(entries)))
	flags := uint16(0)
	if memfd {
		flags = BatchMemfd
	}
	b = binary.LittleEndian.AppendUint16(b, flags)
	b = append(b, 0, 0, 0, 0)
	for i, e := range entries {
		b = append(b, e.Kind, 0)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(e.Key)))
		b = binary.LittleEndian.AppendUint32(b, stateLens[i])
		b = append(b, e.Key...)
		if !memfd {
			b = append(b, e.State...)
		}
	}
	return b
}

func lens(entries []Entry) []uint32 {
	out := make([]uint32, len(entries))
	for i, e := range entries {
		out[i] = uint32(len(e.State))
	}
	return out
}

func sameEntries(t *testing.T, got, want []Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].Kind != want[i].Kind || got[i].Key != want[i].Key || !bytes.Equal(got[i].State, want[i].State) {
			t.Fatalf("entry %d: kind %d key %q state %d bytes; want kind %d key %q state %d bytes",
				i, got[i].Kind, got[i].Key, len(got[i].State), want[i].Kind, want[i].Key, len(want[i].State))
		}
	}
}

func TestBatchLayout(t *testing.T) {
	entries := []Entry{
		{Kind: KindListener, Key: "tcp|:80"},
		{Kind: KindConn, State: []byte{0xaa, 0xbb}},
		{Kind: KindPacket, Key: "udp|:53"},
	}
	body, flags, states := MarshalBatch(entries)
	want := []byte{
		3, 0, 0, 0, 0, 0, 0, 0, // count 3, flags 0, reserved
		1, 0, 7, 0, 0, 0, 0, 0, 't', 'c', 'p', '|', ':', '8', '0',
		2, 0, 0, 0, 2, 0, 0, 0, 0xaa, 0xbb,
		3, 0, 7, 0, 0, 0, 0, 0, 'u', 'd', 'p', '|', ':', '5', '3',
	}
	if !bytes.Equal(body, want) || flags != 0 || states != nil {
		t.Fatalf("inline batch\n got % x flags %d states %v\nwant % x", body, flags, states, want)
	}
	if len(body) != InlineSize(entries) {
		t.Fatalf("InlineSize %d, body %d", InlineSize(entries), len(body))
	}
	bi, err := DecodeBatch(body, 3)
	if err != nil {
		t.Fatal(err)
	}
	sameEntries(t, bi.Entries, entries)
	if bi.Memfd || bi.StateSum != 2 || !equalU32(bi.StateLens, []uint32{0, 2, 0}) {
		t.Fatalf("decoded %+v", bi)
	}
}

func equalU32(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBatchInlineMemfdBoundary(t *testing.T) {
	// One connection whose state makes the inline body exactly MaxBody.
	fit := MaxBody - 8 - entryFixed
	for _, n := range []int{fit, fit + 1} {
		entries := []Entry{{Kind: KindConn, State: bytes.Repeat([]byte{7}, n)}}
		body, flags, states := MarshalBatch(entries)
		memfd := n > fit
		if (flags == BatchMemfd) != memfd {
			t.Fatalf("state of %d bytes: flags %d, want memfd %v", n, flags, memfd)
		}
		if memfd {
			if len(body) != 16 || !bytes.Equal(states, entries[0].State) {
				t.Fatalf("memfd batch: body %d bytes, states %d", len(body), len(states))
			}
			if !bytes.Equal(body, specBatch(entries, lens(entries), true)) {
				t.Fatal("memfd body differs from the specified layout")
			}
			if _, err := DecodeBatch(body, 1); !errors.Is(err, ErrFDCount) {
				t.Fatalf("memfd batch without its memfd: %v", err)
			}
			bi, err := DecodeBatch(body, 2)
			if err != nil || !bi.Memfd || bi.StateSum != uint64(n) || bi.Entries[0].State != nil {
				t.Fatalf("decode memfd batch: %+v, %v", bi, err)
			}
		} else {
			if len(body) != MaxBody || states != nil {
				t.Fatalf("inline batch: body %d bytes, states %d", len(body), len(states))
			}
			bi, err := DecodeBatch(body, 1)
			if err != nil || bi.Memfd {
				t.Fatalf("decode inline batch: %v", err)
			}
			sameEntries(t, bi.Entries, entries)
		}
	}
}

// A batch whose states take several MiB travels through a real socket
// with its descriptors and a sealed memfd, and comes out intact.
func TestBatchMemfdThroughSocket(t *testing.T) {
	a, b := socketPair(t)
	rng := rand.New(rand.NewPCG(1, 2))
	var entries []Entry
	entries = append(entries, Entry{Kind: KindListener, Key: "tcp|127.0.0.1:0"}, Entry{Kind: KindPacket, Key: "unixgram|/run/x.sock"})
	for i := range 40 {
		st := make([]byte, rng.IntN(300<<10))
		for j := range st {
			st[j] = byte(rng.Uint32())
		}
		if i%7 == 0 {
			st = nil
		}
		entries = append(entries, Entry{Kind: KindConn, State: st})
	}
	body, flags, states := MarshalBatch(entries)
	if flags != BatchMemfd || len(states) < 4<<20 {
		t.Fatalf("flags %d, %d state bytes: want a memfd batch of several MiB", flags, len(states))
	}
	if !bytes.Equal(body, specBatch(entries, lens(entries), true)) {
		t.Fatal("body differs from the specified layout")
	}
	memfd, err := NewStateMemfd(states)
	if err != nil {
		t.Fatal(err)
	}
	fds := append(pipes(t, len(entries)), memfd)
	if err := a.Send(Msg{Header: Header{Type: TypeBatch, Flags: flags, TxID: 1}, Body: body, FDs: fds}); err != nil {
		t.Fatal(err)
	}
	CloseAll(fds)
	base := fdCount(t)

	m, err := recvBounded(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if m.Flags != BatchMemfd {
		t.Fatalf("header flags %d", m.Flags)
	}
	bi, err := DecodeBatch(m.Body, len(m.FDs))
	if err != nil {
		t.Fatal(err)
	}
	if !bi.Memfd || bi.StateSum != uint64(len(states)) {
		t.Fatalf("decoded memfd %v, %d state bytes; want %d", bi.Memfd, bi.StateSum, len(states))
	}
	all, err := ReadStateMemfd(m.FDs[len(m.FDs)-1], bi.StateSum)
	if err != nil {
		t.Fatal(err)
	}
	SplitStates(&bi, all)
	sameEntries(t, bi.Entries, entries)
	// A state is capped: appending to it cannot overwrite the next one.
	if len(bi.Entries) > 3 && cap(bi.Entries[3].State) != len(bi.Entries[3].State) {
		t.Fatal("SplitStates left spare capacity in a state")
	}
	m.CloseFDs()
	assertFDs(t, base, "after closing the batch")
}

func TestStateMemfd(t *testing.T) {
	base := fdCount(t)
	data := bytes.Repeat([]byte("0123456789abcdef"), 3<<16) // 3 MiB
	fd, err := NewStateMemfd(data)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		unix.Close(fd)
		assertFDs(t, base, "after closing the memfd")
	}()
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL
	if err != nil || seals&want != want {
		t.Fatalf("seals %#x, %v; want %#x", seals, err, want)
	}
	if _, err := unix.Pwrite(fd, []byte("x"), 0); err == nil {
		t.Fatal("write to a sealed memfd succeeded")
	}
	if err := unix.Ftruncate(fd, 1); err == nil {
		t.Fatal("shrinking a sealed memfd succeeded")
	}
	got, err := ReadStateMemfd(fd, uint64(len(data)))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	for _, size := range []uint64{uint64(len(data)) - 1, uint64(len(data)) + 1, 0} {
		if _, err := ReadStateMemfd(fd, size); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "batch announces") {
			t.Fatalf("memfd of %d bytes read as %d: %v, want ErrMalformed", len(data), size, err)
		}
	}

	empty, err := NewStateMemfd(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ReadStateMemfd(empty, 0); err != nil || len(got) != 0 {
		t.Fatalf("empty memfd: %d bytes, %v", len(got), err)
	}
	unix.Close(empty)

	// A memfd (or any regular file) the sender could still change.
	for _, seals := range []int{0, unix.F_SEAL_SHRINK | unix.F_SEAL_GROW, unix.F_SEAL_WRITE | unix.F_SEAL_GROW} {
		open, err := unix.MemfdCreate("unsealed", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Pwrite(open, data, 0); err != nil {
			t.Fatal(err)
		}
		if seals != 0 {
			if _, err := unix.FcntlInt(uintptr(open), unix.F_ADD_SEALS, seals); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := ReadStateMemfd(open, uint64(len(data))); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "not sealed") {
			t.Fatalf("memfd with seals %#x read: %v, want ErrMalformed naming the seals", seals, err)
		}
		unix.Close(open)
	}

	p := pipes(t, 1)
	if _, err := ReadStateMemfd(p[0], 0); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("pipe as state memfd: %v", err)
	}
	unix.Close(p[0])
	if _, err := ReadStateMemfd(-1, 0); err == nil {
		t.Fatal("bad descriptor accepted")
	}
}

func TestSplitStates(t *testing.T) {
	bi := BatchInfo{Entries: make([]Entry, 3), StateLens: []uint32{2, 0, 3}, Memfd: true, StateSum: 5}
	SplitStates(&bi, []byte("abcde"))
	if string(bi.Entries[0].State) != "ab" || len(bi.Entries[1].State) != 0 || string(bi.Entries[2].State) != "cde" {
		t.Fatalf("split %q %q %q", bi.Entries[0].State, bi.Entries[1].State, bi.Entries[2].State)
	}
}

func TestDecodeBatchRejects(t *testing.T) {
	good := func() []byte {
		b, _, _ := MarshalBatch([]Entry{{Kind: KindListener, Key: "tcp|:1"}, {Kind: KindConn, State: []byte("s")}})
		return b
	}
	set := func(b []byte, off int, v ...byte) []byte { copy(b[off:], v); return b }
	cases := []struct {
		name string
		b    []byte
		nfds int
		want error
		msg  string
	}{
		{"empty body", nil, 0, ErrMalformed, "need 2 bytes"},
		{"short batch header", []byte{1, 0, 0, 0}, 1, ErrMalformed, ""},
		{"one fd too few", good(), 1, ErrFDCount, "2 entries (memfd false) but 1 descriptors"},
		{"one fd too many", good(), 3, ErrFDCount, ""},
		{"memfd flag without the memfd", set(good(), 2, 1), 2, ErrFDCount, "memfd true"},
		{"unknown flag", set(good(), 2, 4), 2, ErrMalformed, "unknown flags 0x4"},
		{"copy and memfd", set(good(), 2, 3), 3, ErrMalformed, "unknown flags 0x3"},
		{"copy entry with a state", set(good(), 2, 2), 2, ErrMalformed, "copy entry 1 carries a state of 1 bytes"},
		{"empty batch", []byte{0, 0, 0, 0, 0, 0, 0, 0}, 0, ErrMalformed, "empty batch"},
		{"empty memfd batch", []byte{0, 0, 1, 0, 0, 0, 0, 0}, 1, ErrMalformed, "empty batch"},
		{"kind 0", set(good(), 8, 0), 2, ErrMalformed, "entry 0 has unknown kind 0"},
		{"kind 4", set(good(), 8, 4), 2, ErrMalformed, "unknown kind 4"},
		{"key beyond MaxKey", append([]byte{1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x01, 0x04, 0, 0, 0, 0}, make([]byte, 1025)...), 1, ErrTooLarge, "key of 1025 bytes"},
		{"state beyond MaxState", []byte{1, 0, 1, 0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 4}, 2, ErrTooLarge, "state of 67108865 bytes"},
		{"count beyond the entries", set(good(), 0, 3), 3, ErrMalformed, ""},
		{"key past the end", good()[:14], 2, ErrMalformed, ""},
		{"state past the end", good()[:len(good())-1], 2, ErrMalformed, ""},
		{"trailing bytes", append(good(), 9), 2, ErrMalformed, "1 trailing bytes"},
		{"memfd batch carrying inline states", append(specBatch([]Entry{{Kind: KindConn}}, []uint32{1}, true), 'x'), 2, ErrMalformed, "trailing"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeBatch(tc.b, tc.nfds)
			if !errors.Is(err, tc.want) {
				t.Fatalf("DecodeBatch: %v, want %v", err, tc.want)
			}
			if tc.msg != "" && !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not say %q", err, tc.msg)
			}
		})
	}
	// Keys of exactly MaxKey and a state of exactly MaxState are allowed.
	key := strings.Repeat("k", MaxKey)
	if _, err := DecodeBatch(specBatch([]Entry{{Kind: KindListener, Key: key}}, []uint32{0}, false), 1); err != nil {
		t.Fatalf("key of MaxKey: %v", err)
	}
	if _, err := DecodeBatch(specBatch([]Entry{{Kind: KindConn}}, []uint32{MaxState}, true), 2); err != nil {
		t.Fatalf("memfd state of MaxState: %v", err)
	}
}

func TestBatchOfMaxFDs(t *testing.T) {
	// 253 connections inline, or 252 plus the memfd: both fit one message.
	inline := make([]Entry, MaxFDs)
	for i := range inline {
		inline[i] = Entry{Kind: KindConn, State: []byte{byte(i)}}
	}
	body, flags, _ := MarshalBatch(inline)
	if flags != 0 {
		t.Fatal("small states went to a memfd")
	}
	bi, err := DecodeBatch(body, MaxFDs)
	if err != nil {
		t.Fatal(err)
	}
	sameEntries(t, bi.Entries, inline)

	big := make([]Entry, MaxFDs-1)
	for i := range big {
		big[i] = Entry{Kind: KindConn, State: bytes.Repeat([]byte{byte(i)}, 1000)}
	}
	body, flags, states := MarshalBatch(big)
	if flags != BatchMemfd || len(states) != 252000 {
		t.Fatalf("flags %d, states %d", flags, len(states))
	}
	if _, err := DecodeBatch(body, MaxFDs); err != nil {
		t.Fatal(err)
	}
}
