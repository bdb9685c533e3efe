package nodeagent

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/wire"
)

// socketPairs returns n connected socket pairs' first ends, closing the
// other ends when the test ends.
func socketPairs(t *testing.T, n int) []int {
	t.Helper()
	var fds []int
	for range n {
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(p[1]) })
		fds = append(fds, p[0])
	}
	return fds
}

// describedEntry is a store entry of three connections and its
// description as the agent keeps it in systemd's fd store.
func describedEntry(t *testing.T) (*stored, int) {
	t.Helper()
	entries := []wire.Entry{{Kind: wire.KindConn, State: []byte("a")}, {Kind: wire.KindConn, State: []byte("bb")}, {Kind: wire.KindConn, State: []byte("ccc")}}
	body, flags, _ := wire.MarshalBatch(entries)
	e := &stored{key: storeKey{"svc", 1000, "pod"}, expires: time.Now().Add(time.Minute).Round(0), hold: time.Minute,
		batches: []wire.Msg{{Header: wire.Header{Type: wire.TypeBatch, Flags: flags}, Body: body, FDs: socketPairs(t, 3)}}}
	e.sum = wire.Summary{Conns: 3, Batches: 1, StateBytes: 6}
	meta, err := encodeEntryMeta(e)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := wire.NewStateMemfd(meta)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return e, fd
}

// isOpen reports whether fd is an open descriptor.
func isOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

// TestSystemdEntryRoundTrip: an entry rebuilt from its description and
// its descriptors, handed over in another order (systemd keeps none), is
// the entry that was stored, each descriptor in its place.
func TestSystemdEntryRoundTrip(t *testing.T) {
	e, meta := describedEntry(t)
	fds := e.batches[0].FDs
	got, err := decodeEntry([]int{meta}, []int{fds[2], fds[0], fds[1]})
	if err != nil {
		t.Fatal(err)
	}
	defer got.batches[0].CloseFDs()
	if got.key != e.key || !got.expires.Equal(e.expires) || got.hold != e.hold || got.sum != e.sum {
		t.Fatalf("rebuilt %+v, want %+v", got, e)
	}
	if len(got.batches) != 1 || string(got.batches[0].Body) != string(e.batches[0].Body) || got.batches[0].Flags != e.batches[0].Flags {
		t.Fatalf("rebuilt batches %+v, want %+v", got.batches, e.batches)
	}
	for i, fd := range got.batches[0].FDs {
		if fd != fds[i] {
			t.Fatalf("descriptor %d of the rebuilt batch is %d, want %d", i, fd, fds[i])
		}
	}
}

// TestSystemdEntryMissingDescriptor: an entry one of whose descriptors
// systemd did not keep is not rebuilt, and the descriptors it did keep
// are closed.
func TestSystemdEntryMissingDescriptor(t *testing.T) {
	e, meta := describedEntry(t)
	fds := e.batches[0].FDs
	_, err := decodeEntry([]int{meta}, []int{fds[0], fds[2]})
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("rebuild without a descriptor: %v, want it missing", err)
	}
	for _, fd := range []int{fds[0], fds[2]} {
		if isOpen(fd) {
			t.Fatalf("descriptor %d is still open after the entry was dropped", fd)
		}
	}
	unix.Close(fds[1])
	if !isOpen(meta) {
		t.Fatal("decodeEntry closed the description, which its caller owns")
	}
}
