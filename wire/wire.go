// Package wire is the protocol spoken on the handoff agent's unix socket.
//
// Every message is one SOCK_SEQPACKET datagram: a fixed 32-byte header
// (HeaderLen) followed by a body of at most MaxBody bytes, optionally with up
// to MaxFDs file descriptors attached as SCM_RIGHTS. The byte layouts, the
// message sequences and every abort path are specified in docs/protocol.md;
// this package is the reference implementation used by the agent and the Go
// SDK. It depends only on the standard library and golang.org/x/sys.
//
// A Conn sends and receives whole messages. Descriptors that arrive with a
// message belong to the caller; descriptors that arrive with a message that
// fails to decode are closed before the error is returned, so no error path
// leaks a descriptor.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Magic opens every message: the ASCII bytes "HOFF".
var Magic = [4]byte{'H', 'O', 'F', 'F'}

const (
	// HeaderLen is the size of the fixed header that opens every message.
	HeaderLen = 32
	// MaxBody bounds a message body so a datagram stays well under the
	// default socket buffer; bulk state travels in a memfd instead.
	MaxBody = 64 << 10
	// MaxMessage is the largest datagram a peer may send.
	MaxMessage = HeaderLen + MaxBody
	// MaxFDs is the kernel's SCM_MAX_FD: the most descriptors one sendmsg
	// may carry.
	MaxFDs = 253
	// MinVersion and MaxVersion are the protocol versions this package
	// speaks; peers agree on the highest common one in Hello/Welcome.
	MinVersion = 1
	// MaxVersion is the newest protocol version this package speaks.
	// Version 2 adds HelloAsk and WelcomeStandby: the agent tells a
	// joining process whether a predecessor will hand over to it.
	// Version 3 adds the pre-copy: the source sends its descriptors while
	// it serves, and only the state records (Seal) inside the pause.
	MaxVersion = 3
)

// Type says what a message is. Values are stable: they are on the wire.
type Type uint8

// Message types. The direction each travels is given in docs/protocol.md.
const (
	TypeHello     Type = 1  // app or admin → agent: first message
	TypeWelcome   Type = 2  // agent → app/admin: accepted, version chosen
	TypeError     Type = 3  // any → any: refusal with a code and a reason
	TypePrepare   Type = 4  // agent → source: freeze and export (fd: pair end)
	TypeBatch     Type = 5  // source → agent → target: descriptors + state
	TypeExported  Type = 6  // source → agent: export finished, totals
	TypeBegin     Type = 7  // agent → target: a handoff starts (fd: pair end)
	TypeEnd       Type = 8  // agent → target: all batches sent, totals
	TypeAbort     Type = 9  // any → any: the transaction is off
	TypeReady     Type = 10 // target → source (pair): imported everything
	TypeCommit    Type = 11 // source → target (pair): copies closed, serve
	TypeCommitted Type = 12 // source → agent: committed
	TypeServing   Type = 13 // target → agent: serving, with a timestamp
	TypeSeal      Type = 14 // source → agent → target (version 3): states of pre-copied descriptors
	TypeRequest   Type = 20 // admin → agent: JSON request
	TypeResponse  Type = 21 // agent → admin: JSON response
	TypeProgress  Type = 22 // agent → admin: JSON progress of a long request
	// Agent upgrades (docs/protocol.md, "Agent upgrades"): an agent hands
	// what it holds to its successor; bodies in handover.go.
	TypeHandover      Type = 23 // old agent → successor: handover begins (fd: the listening socket)
	TypeHandoverEntry Type = 24 // old agent → successor: one fd-store entry; its batches follow
	TypeTaken         Type = 25 // successor → old agent: took everything; the old one stops
)

var typeNames = map[Type]string{
	TypeHello: "Hello", TypeWelcome: "Welcome", TypeError: "Error",
	TypePrepare: "Prepare", TypeBatch: "Batch", TypeExported: "Exported",
	TypeBegin: "Begin", TypeEnd: "End", TypeAbort: "Abort", TypeReady: "Ready",
	TypeCommit: "Commit", TypeCommitted: "Committed", TypeServing: "Serving",
	TypeSeal:    "Seal",
	TypeRequest: "Request", TypeResponse: "Response", TypeProgress: "Progress",
	TypeHandover: "Handover", TypeHandoverEntry: "HandoverEntry", TypeTaken: "Taken",
}

func (t Type) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Known reports whether t is a message type of this protocol version.
func (t Type) Known() bool { _, ok := typeNames[t]; return ok }

// Header is the fixed part of every message.
type Header struct {
	Version uint8  // protocol version of the sender (the agreed one after Welcome)
	Type    Type   // what the message is
	Flags   uint16 // per-type flags
	TxID    uint64 // transaction the message belongs to, 0 outside one
	Seq     uint32 // per-transaction sequence number of batches, else 0
	NFDs    uint16 // descriptors attached, must equal what arrived
	BodyLen uint32 // bytes following the header
}

// Errors a decoder returns. They are wrapped with details; test with errors.Is.
var (
	ErrShort       = errors.New("message shorter than its header")
	ErrMagic       = errors.New("bad magic")
	ErrVersion     = errors.New("unsupported protocol version")
	ErrType        = errors.New("unknown message type")
	ErrBodyLen     = errors.New("body length does not match datagram")
	ErrTooLarge    = errors.New("message too large")
	ErrFDCount     = errors.New("descriptor count does not match header")
	ErrTruncated   = errors.New("datagram or control data truncated by the kernel")
	ErrMalformed   = errors.New("malformed body")
	ErrClosed      = errors.New("peer closed the connection")
	ErrUnsupported = errors.New("no common protocol version")
)

// PutHeader encodes h into the first HeaderLen bytes of b.
func PutHeader(b []byte, h Header) {
	_ = b[HeaderLen-1]
	copy(b[0:4], Magic[:])
	b[4] = h.Version
	b[5] = byte(h.Type)
	binary.LittleEndian.PutUint16(b[6:], h.Flags)
	binary.LittleEndian.PutUint64(b[8:], h.TxID)
	binary.LittleEndian.PutUint32(b[16:], h.Seq)
	binary.LittleEndian.PutUint16(b[20:], h.NFDs)
	binary.LittleEndian.PutUint16(b[22:], 0)
	binary.LittleEndian.PutUint32(b[24:], h.BodyLen)
	binary.LittleEndian.PutUint32(b[28:], 0)
}

// Decode parses one datagram that arrived with nfds descriptors and returns
// its header and body (aliasing b). It checks everything the header alone
// can tell: magic, version range, type, lengths and the descriptor count.
func Decode(b []byte, nfds int) (Header, []byte, error) {
	var h Header
	if len(b) < HeaderLen {
		return h, nil, fmt.Errorf("%w: %d bytes", ErrShort, len(b))
	}
	if [4]byte(b[0:4]) != Magic {
		return h, nil, fmt.Errorf("%w: %q", ErrMagic, b[0:4])
	}
	h.Version = b[4]
	h.Type = Type(b[5])
	h.Flags = binary.LittleEndian.Uint16(b[6:])
	h.TxID = binary.LittleEndian.Uint64(b[8:])
	h.Seq = binary.LittleEndian.Uint32(b[16:])
	h.NFDs = binary.LittleEndian.Uint16(b[20:])
	h.BodyLen = binary.LittleEndian.Uint32(b[24:])
	if h.Version < MinVersion || h.Version > MaxVersion {
		return h, nil, fmt.Errorf("%w: %d (this side speaks %d..%d)", ErrVersion, h.Version, MinVersion, MaxVersion)
	}
	if !h.Type.Known() {
		return h, nil, fmt.Errorf("%w: %d", ErrType, uint8(h.Type))
	}
	if h.BodyLen > MaxBody {
		return h, nil, fmt.Errorf("%w: body of %d bytes, limit %d", ErrTooLarge, h.BodyLen, MaxBody)
	}
	if int(h.BodyLen) != len(b)-HeaderLen {
		return h, nil, fmt.Errorf("%w: header says %d, datagram carries %d", ErrBodyLen, h.BodyLen, len(b)-HeaderLen)
	}
	if int(h.NFDs) != nfds {
		return h, nil, fmt.Errorf("%w: header says %d, %d arrived", ErrFDCount, h.NFDs, nfds)
	}
	if nfds > MaxFDs {
		return h, nil, fmt.Errorf("%w: %d descriptors, limit %d", ErrTooLarge, nfds, MaxFDs)
	}
	return h, b[HeaderLen:], nil
}
