// Package stream is the byte oracle of the example streaming workload.
//
// The body of stream NAME is the concatenation, for k = 0, 1, 2, …, of the
// 32-byte SHA-256 digest of the ASCII string "NAME:k" (k in decimal). Every
// byte is therefore a pure function of (name, offset): a server can resume a
// stream at any offset without remembering anything else, and a client can
// prove that it received every byte exactly once and in order.
package stream

import (
	"crypto/sha256"
	"fmt"
	"strconv"
)

// BlockSize is the number of stream bytes produced by one digest.
const BlockSize = sha256.Size

// maxStackName is the longest name whose hash input is built in a stack
// buffer; longer names still work but allocate.
const maxStackName = 200

// block returns block k of stream name: sha256(name + ":" + k).
func block(name string, k int64) [BlockSize]byte {
	var a [maxStackName + 1 + 20]byte
	var in []byte
	if len(name) <= maxStackName {
		in = a[:0]
	} else {
		in = make([]byte, 0, len(name)+21)
	}
	in = append(in, name...)
	in = append(in, ':')
	in = strconv.AppendInt(in, k, 10)
	return sha256.Sum256(in)
}

// Fill writes the bytes of stream name starting at byte offset off into p,
// computing only the blocks that p covers. off must not be negative.
func Fill(name string, off int64, p []byte) {
	if off < 0 {
		panic("stream: negative offset")
	}
	for len(p) > 0 {
		k, r := off/BlockSize, int(off%BlockSize)
		b := block(name, k)
		n := copy(p, b[r:])
		p = p[n:]
		off += int64(n)
	}
}

// MismatchError reports the first byte of a stream that did not match the
// oracle.
type MismatchError struct {
	Stream   string // stream name
	Offset   int64  // byte offset of the first wrong byte in the stream body
	Expected byte   // oracle byte at Offset
	Got      byte   // byte received at Offset
}

// Error implements error.
func (e *MismatchError) Error() string {
	return fmt.Sprintf("stream %q: byte at offset %d: expected 0x%02x, got 0x%02x (data lost, duplicated or corrupted)",
		e.Stream, e.Offset, e.Expected, e.Got)
}

// Verifier checks the bytes of one stream, received in order, against the
// oracle. It is not safe for concurrent use.
type Verifier struct {
	name   string
	off    int64
	cached int64 // index of the block in cur, or -1
	cur    [BlockSize]byte
}

// NewVerifier returns a Verifier for stream name whose next expected byte
// is at offset off.
func NewVerifier(name string, off int64) *Verifier {
	return &Verifier{name: name, off: off, cached: -1}
}

// Name returns the stream name.
func (v *Verifier) Name() string { return v.name }

// Offset returns the offset of the next expected byte.
func (v *Verifier) Offset() int64 { return v.off }

// Check verifies that p is the next len(p) bytes of the stream and advances
// the expected offset by len(p) whatever the outcome. At the first byte
// that differs it returns a *MismatchError.
func (v *Verifier) Check(p []byte) error {
	end := v.off + int64(len(p))
	for len(p) > 0 {
		k, r := v.off/BlockSize, int(v.off%BlockSize)
		if k != v.cached {
			v.cur = block(v.name, k)
			v.cached = k
		}
		want := v.cur[r:]
		n := min(len(want), len(p))
		if string(want[:n]) != string(p[:n]) {
			for i := range n {
				if want[i] != p[i] {
					err := &MismatchError{Stream: v.name, Offset: v.off + int64(i), Expected: want[i], Got: p[i]}
					v.off = end
					return err
				}
			}
		}
		p = p[n:]
		v.off += int64(n)
	}
	return nil
}
