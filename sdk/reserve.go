package handoff

import (
	"unsafe"
)

// DefaultExpect is how many connections a standby process prepares memory
// for when Options.Expect is zero.
const DefaultExpect = 1024

// withSlack is how many connections a reserve for expect holds: an eighth
// more, and 64, for the connections a server accepted since its operator
// counted them and for its listeners. Without it, a handoff of a few more
// than expected moved the whole slice of adopted connections to fresh
// memory on its last batch, 1-2 ms at 5000 connections.
func withSlack(expect int) int {
	if expect <= 0 {
		return expect
	}
	return expect + expect/8 + 64
}

// reserveStateBytes is the room a reserve keeps per connection for the
// batch bodies that carry the states: an entry's header and key, and a
// state of about a hundred bytes. Bigger states take fresh memory when
// the room runs out.
const reserveStateBytes = 128

// reserve is memory a standby process prepares, and touches, before it
// joins, for the connections it expects to receive: their sockConns,
// the slice Ready returns, and the batch bodies their states live in.
//
// Why: a process that has just started has little memory of its own, so
// nearly everything it allocates while adopting thousands of connections
// is fresh pages, and on a virtual machine the first touch of a fresh page
// costs about ten microseconds even after the kernel mapped it. In the
// benchmark that was a third of the target's work during the pause.
// Touching the pages while waiting in standby moves that cost out of it.
//
// A reserve is used by one incoming handoff, from the goroutine that
// receives (bodies) and the one that adopts (slabs, the slice); each part
// is taken from the front, and a request it cannot fill gets fresh memory.
type reserve struct {
	conns []Imported // the slice Ready returns: appended to
	slab  []sockConn // taken from the front
	bytes []byte     // taken from the front
}

// newReserve prepares memory for n connections; nil if n <= 0.
func newReserve(n int) *reserve {
	if n <= 0 {
		return nil
	}
	r := &reserve{
		conns: makePopulated[Imported](0, n),
		slab:  makePopulated[sockConn](n, n),
		bytes: makePopulated[byte](n*reserveStateBytes, n*reserveStateBytes),
	}
	touch(unsafe.Pointer(unsafe.SliceData(r.conns)), uintptr(n)*unsafe.Sizeof(Imported{}))
	touch(unsafe.Pointer(unsafe.SliceData(r.slab)), uintptr(n)*unsafe.Sizeof(sockConn{}))
	touch(unsafe.Pointer(unsafe.SliceData(r.bytes)), uintptr(len(r.bytes)))
	return r
}

// touch writes a zero byte to every page under the n bytes at p, which
// are all zero: the values do not change, but the pages are then this
// process's for real. Populating them (makePopulated) first makes this
// cheaper, not free.
func touch(p unsafe.Pointer, n uintptr) {
	if n == 0 {
		return
	}
	b := unsafe.Slice((*byte)(p), n)
	for i := uintptr(0); i < n; i += pageSize {
		b[i] = 0
	}
	b[n-1] = 0
}

// body returns n bytes for a batch body, from the reserve if they fit.
func (r *reserve) body(n int) []byte {
	if r == nil || n > len(r.bytes) {
		return make([]byte, n)
	}
	b := r.bytes[:n:n]
	r.bytes = r.bytes[n:]
	return b
}

// takeSlab returns n zero sockConns, from the reserve if they fit.
func (r *reserve) takeSlab(n int) []sockConn {
	if r == nil || n > len(r.slab) {
		return makePopulated[sockConn](n, n)
	}
	s := r.slab[:n:n]
	r.slab = r.slab[n:]
	return s
}

// importedSlice returns the empty slice adopted connections are appended
// to: the reserve's, or a new one.
func (r *reserve) importedSlice() []Imported {
	if r == nil {
		return nil
	}
	s := r.conns
	r.conns = nil
	return s
}
