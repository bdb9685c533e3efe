package server

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// stateVersion is the first byte of every encoded connection state. Version
// 1 had no Due; it is still decoded, as due at once.
const stateVersion = 2

// Limits enforced when decoding a state record received from another
// process.
const (
	maxRequest = 8 << 10  // request bytes buffered before the header ends
	maxName    = 128      // stream name length
	maxUnsent  = 64 << 20 // bytes produced but not yet written
)

// phase is where a connection was when it was frozen.
type phase byte

const (
	// phaseRequest: still reading the request; Request holds the bytes read.
	phaseRequest phase = 1
	// phaseStream: streaming; Unsent is written first, then the body from Next.
	phaseStream phase = 2
	// phaseClosing: an error response is being written; write Unsent, close.
	phaseClosing phase = 3
	// phaseEcho: request/response (GET /echo); Unsent is written first,
	// then Request holds the part of the next request read so far, and
	// Seq is the sequence number of the next reply.
	phaseEcho phase = 4
)

// maxEchoUnsent is the most an echo connection can owe: the header, or
// one reply.
const maxEchoUnsent = max(len(okHeader), echoReplyLen)

func (p phase) String() string {
	switch p {
	case phaseRequest:
		return "request"
	case phaseStream:
		return "stream"
	case phaseClosing:
		return "closing"
	case phaseEcho:
		return "echo"
	}
	return fmt.Sprintf("phase(%d)", byte(p))
}

// connState is the per-connection state carried across a handoff.
//
// Encoding (all integers unsigned varints):
//
//	version(1 byte)=2 phase(1 byte)
//	phaseRequest: len(Request) Request
//	phaseStream:  len(Name) Name Next len(Unsent) Unsent Due
//	phaseClosing: len(Unsent) Unsent
//	phaseEcho:    Seq len(Request) Request len(Unsent) Unsent
//
// A process that predates phaseEcho refuses such a record as an unknown
// phase and closes that connection only.
type connState struct {
	Phase   phase
	Request []byte // phaseRequest; phaseEcho: the part of the next request read
	Name    string // phaseStream
	Next    int64  // phaseStream: body offset of the next byte to generate
	Seq     uint64 // phaseEcho: sequence number of the next reply
	Unsent  []byte // phaseStream, phaseClosing, phaseEcho: bytes to write first
	// Due, in phaseStream, is when the next chunk is due, in Unix
	// nanoseconds (0: at once). The next process keeps the connection's
	// pace where it was, so that the chunks of thousands of connections
	// stay spread over the tick instead of all falling due at the handoff.
	Due int64
}

// errBadState is wrapped by every decoding error.
var errBadState = errors.New("bad connection state")

// appendState appends the encoding of s to b.
func appendState(b []byte, s *connState) []byte {
	b = append(b, stateVersion, byte(s.Phase))
	switch s.Phase {
	case phaseRequest:
		b = binary.AppendUvarint(b, uint64(len(s.Request)))
		b = append(b, s.Request...)
	case phaseStream:
		b = binary.AppendUvarint(b, uint64(len(s.Name)))
		b = append(b, s.Name...)
		b = binary.AppendUvarint(b, uint64(s.Next))
		b = binary.AppendUvarint(b, uint64(len(s.Unsent)))
		b = append(b, s.Unsent...)
		b = binary.AppendUvarint(b, uint64(max(s.Due, 0)))
	case phaseClosing:
		b = binary.AppendUvarint(b, uint64(len(s.Unsent)))
		b = append(b, s.Unsent...)
	case phaseEcho:
		b = binary.AppendUvarint(b, s.Seq)
		b = binary.AppendUvarint(b, uint64(len(s.Request)))
		b = append(b, s.Request...)
		b = binary.AppendUvarint(b, uint64(len(s.Unsent)))
		b = append(b, s.Unsent...)
	}
	return b
}

// decodeState parses an encoded state. The returned slices alias b.
func decodeState(b []byte) (connState, error) {
	var s connState
	if len(b) < 2 {
		return s, fmt.Errorf("%w: %d bytes, too short", errBadState, len(b))
	}
	version := b[0]
	if version != 1 && version != stateVersion {
		return s, fmt.Errorf("%w: version %d, want 1 or %d", errBadState, b[0], stateVersion)
	}
	s.Phase = phase(b[1])
	d := decoder{b: b[2:]}
	switch s.Phase {
	case phaseRequest:
		s.Request = d.bytes("request", maxRequest)
	case phaseStream:
		s.Name = string(d.bytes("name", maxName))
		next := d.uvarint("next offset")
		if d.err == nil && next > 1<<62 {
			d.err = fmt.Errorf("next offset %d out of range", next)
		}
		s.Next = int64(next)
		s.Unsent = d.bytes("unsent", maxUnsent)
		if version >= 2 {
			due := d.uvarint("due time")
			if d.err == nil && due > 1<<62 {
				d.err = fmt.Errorf("due time %d out of range", due)
			}
			s.Due = int64(due)
		}
		if d.err == nil && !validName(s.Name) {
			d.err = fmt.Errorf("invalid stream name %q", s.Name)
		}
	case phaseClosing:
		s.Unsent = d.bytes("unsent", maxUnsent)
	case phaseEcho:
		s.Seq = d.uvarint("sequence number")
		if d.err == nil && s.Seq >= echoMaxSeq {
			d.err = fmt.Errorf("sequence number %d has more than %d digits", s.Seq, echoSeqDigits)
		}
		s.Request = d.bytes("request", echoRequestLen)
		s.Unsent = d.bytes("unsent", maxEchoUnsent)
	default:
		return connState{}, fmt.Errorf("%w: unknown phase %d", errBadState, b[1])
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return connState{}, fmt.Errorf("%w: %s: %w", errBadState, s.Phase, d.err)
	}
	return s, nil
}

// decoder reads varints and length-prefixed fields, remembering the first
// error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 || n > 1 && d.b[n-1] == 0 {
		d.err = fmt.Errorf("truncated, overlong or non-minimal %s", what)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(what string, limit int) []byte {
	n := d.uvarint(what + " length")
	if d.err != nil {
		return nil
	}
	if n > uint64(limit) {
		d.err = fmt.Errorf("%s length %d exceeds %d", what, n, limit)
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = fmt.Errorf("%s truncated: %d of %d bytes", what, len(d.b), n)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}
