package wire

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"
)

func fileFromFD(fd int, name string) *os.File { return os.NewFile(uintptr(fd), name) }

// Role says what kind of peer opens a session with Hello.
type Role uint8

// Roles.
const (
	RoleApp   Role = 1 // an application linking the SDK
	RoleAdmin Role = 2 // handoffctl or another administrator
)

// Hello flags.
const (
	// HelloStandby: the process waits to receive a handoff before serving.
	HelloStandby uint8 = 1
	// HelloAsk (version 2): the process does not know whether a
	// predecessor will hand over to it and asks the agent, which answers
	// with WelcomeStandby or without it. Ignored with HelloStandby, and by
	// agents that agree on version 1.
	HelloAsk uint8 = 2
)

// Welcome flags.
const (
	// WelcomePending: a handoff for this process follows at once (Begin).
	WelcomePending uint16 = 1
	// WelcomeStandby (version 2, only in answer to HelloAsk): a
	// predecessor will hand over to this process; it waits in standby as
	// if it had sent HelloStandby.
	WelcomeStandby uint16 = 2
)

// Kinds of descriptor in a batch entry.
const (
	KindListener uint8 = 1 // a listening stream socket (TCP or unix)
	KindConn     uint8 = 2 // an established stream connection
	KindPacket   uint8 = 3 // a datagram socket (UDP or unixgram)
)

// What to move, a bit set carried by Prepare.
const (
	MoveListeners uint32 = 1
	MoveConns     uint32 = 2
	MovePackets   uint32 = 4
	MoveAll              = MoveListeners | MoveConns | MovePackets
)

// Batch flags.
const (
	// BatchMemfd: the last descriptor is a sealed memfd holding the state
	// records of all entries, concatenated in entry order.
	BatchMemfd uint16 = 1
	// BatchCopy (version 3, pre-copy): the entries are copies the source
	// sent while it still serves; they carry no state, and a Seal later
	// says which of them move and with what state. Never with BatchMemfd.
	BatchCopy uint16 = 2
)

// Header flags of Prepare and Begin.
const (
	// PrepareCopy (version 3): pre-copy. The source sends every
	// descriptor it will move in copy batches while it serves, then
	// freezes and sends the states in Seal messages.
	PrepareCopy uint16 = 1
	// BeginCopy (version 3): the transfer that follows is a pre-copy.
	BeginCopy uint16 = 1
)

// Limits of batch contents.
const (
	MaxKey   = 1024     // bytes in a listener key
	MaxState = 64 << 20 // bytes in one connection's state record
)

// Code says why a transaction or a session failed. It travels in Error
// and Abort as a uint32; a receiver accepts any value, known or not.
type Code uint32

// Codes carried by Error and Abort, and by the agent's results.
const (
	CodeVersion     Code = 1  // no common protocol version
	CodeMalformed   Code = 2  // a message did not decode
	CodeRefused     Code = 3  // not allowed for this peer
	CodeBusy        Code = 4  // the session is in another transaction
	CodeInternal    Code = 5  // the agent failed
	CodeNotFound    Code = 6  // no such session
	CodeDeadline    Code = 7  // the transaction's deadline passed
	CodeSourceLost  Code = 8  // the source went away before exporting everything
	CodeTargetLost  Code = 9  // the target went away before it was ready
	CodeImport      Code = 10 // the target could not take the descriptors (EMFILE …)
	CodeExport      Code = 11 // the source could not export
	CodeCancelled   Code = 12 // an administrator or shutdown cancelled it
	CodeUnexpected  Code = 13 // a message arrived that the state does not allow
	CodeAgentClosed Code = 14 // the agent is shutting down
	// CodeNotClaimed: descriptors the agent stored for a restarting
	// process were closed before any process claimed them (the hold
	// expired, or the agent shut down). Only in the agent's results,
	// never sent.
	CodeNotClaimed Code = 15
)

var codeNames = map[Code]string{
	CodeVersion: "Version", CodeMalformed: "Malformed", CodeRefused: "Refused",
	CodeBusy: "Busy", CodeInternal: "Internal", CodeNotFound: "NotFound",
	CodeDeadline: "DeadlineExceeded", CodeSourceLost: "SourceLost", CodeTargetLost: "TargetLost",
	CodeImport: "ImportFailed", CodeExport: "ExportFailed", CodeCancelled: "Cancelled",
	CodeUnexpected: "UnexpectedMessage", CodeAgentClosed: "AgentClosed", CodeNotClaimed: "NotClaimed",
}

// String is a short CamelCase name of c, for logs and reports; a code
// this side does not know is "Code<n>".
func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("Code%d", uint32(c))
}

// Codes lists every code this side knows, in ascending order: for the
// tables that must cover each one.
func Codes() []Code {
	cs := make([]Code, 0, len(codeNames))
	for c := range codeNames {
		cs = append(cs, c)
	}
	slices.Sort(cs)
	return cs
}

// enc appends little-endian fields.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.LittleEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) str(s string) { e.u16(uint16(len(s))); e.b = append(e.b, s...) }

// dec reads little-endian fields; the first overrun sticks as err.
type dec struct {
	b   []byte
	err error
}

func (d *dec) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.err = fmt.Errorf("%w: need %d bytes, %d left", ErrMalformed, n, len(d.b))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) u8() uint8 {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}
func (d *dec) u16() uint16 {
	if v := d.take(2); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}
func (d *dec) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}
func (d *dec) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}
func (d *dec) str() string { return string(d.take(int(d.u16()))) }

// done reports the sticky error, or trailing bytes as malformed.
func (d *dec) done(what string) error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.b))
	}
	if d.err != nil {
		return fmt.Errorf("decode %s: %w", what, d.err)
	}
	return nil
}

// Hello opens a session.
type Hello struct {
	MinVersion, MaxVersion uint16
	Role                   Role
	Flags                  uint8
	Name                   string // a label for people and for the fd store; not an identity
}

// Marshal encodes h.
func (h Hello) Marshal() []byte {
	e := enc{make([]byte, 0, 16+len(h.Name))}
	e.u16(h.MinVersion)
	e.u16(h.MaxVersion)
	e.u8(uint8(h.Role))
	e.u8(h.Flags)
	e.u16(0)
	e.str(h.Name)
	return e.b
}

// Unmarshal decodes b into h.
func (h *Hello) Unmarshal(b []byte) error {
	d := dec{b: b}
	h.MinVersion, h.MaxVersion = d.u16(), d.u16()
	h.Role, h.Flags = Role(d.u8()), d.u8()
	d.u16()
	h.Name = d.str()
	return d.done("hello")
}

// Negotiate picks the highest version both sides speak.
func Negotiate(peerMin, peerMax uint16) (uint8, error) {
	hi := min(peerMax, MaxVersion)
	lo := max(peerMin, MinVersion)
	if hi < lo {
		return 0, fmt.Errorf("%w: peer speaks %d..%d, this side %d..%d", ErrUnsupported, peerMin, peerMax, MinVersion, MaxVersion)
	}
	return uint8(hi), nil
}

// Welcome accepts a session.
type Welcome struct {
	Version   uint16
	Flags     uint16
	SessionID uint64
	PID       uint32 // the peer's pid as the kernel told the agent
}

// Marshal encodes w.
func (w Welcome) Marshal() []byte {
	e := enc{make([]byte, 0, 24)}
	e.u16(w.Version)
	e.u16(w.Flags)
	e.u32(w.PID)
	e.u64(w.SessionID)
	return e.b
}

// Unmarshal decodes b into w.
func (w *Welcome) Unmarshal(b []byte) error {
	d := dec{b: b}
	w.Version, w.Flags, w.PID, w.SessionID = d.u16(), d.u16(), d.u32(), d.u64()
	return d.done("welcome")
}

// Failure is the body of Error and Abort: a code and a reason a person can
// act on.
type Failure struct {
	Code   Code
	Reason string
}

// Marshal encodes f; reasons longer than 4 KiB are cut.
func (f Failure) Marshal() []byte {
	r := f.Reason
	if len(r) > 4096 {
		r = r[:4096]
	}
	e := enc{make([]byte, 0, 8+len(r))}
	e.u32(uint32(f.Code))
	e.str(r)
	return e.b
}

// Unmarshal decodes b into f.
func (f *Failure) Unmarshal(b []byte) error {
	d := dec{b: b}
	f.Code = Code(d.u32())
	f.Reason = d.str()
	return d.done("failure")
}

// Error is the code's name and the reason.
func (f Failure) Error() string { return f.Code.String() + ": " + f.Reason }

// Prepare asks a source to freeze and export. It carries one descriptor:
// the source's end of the private pair to the target (or to the agent,
// when the agent keeps the descriptors itself).
type Prepare struct {
	What      uint32 // Move* bits
	TimeoutMS uint32 // time left for the whole transaction
	Target    uint64 // target session, 0 for the agent's fd store
}

// Marshal encodes p.
func (p Prepare) Marshal() []byte {
	e := enc{make([]byte, 0, 16)}
	e.u32(p.What)
	e.u32(p.TimeoutMS)
	e.u64(p.Target)
	return e.b
}

// Unmarshal decodes b into p.
func (p *Prepare) Unmarshal(b []byte) error {
	d := dec{b: b}
	p.What, p.TimeoutMS, p.Target = d.u32(), d.u32(), d.u64()
	return d.done("prepare")
}

// Begin announces a handoff to a target. It carries one descriptor: the
// target's end of the private pair.
type Begin struct {
	TimeoutMS  uint32
	Source     uint64 // source session, 0 when the descriptors come from the store
	SourceName string
}

// Marshal encodes b.
func (b Begin) Marshal() []byte {
	e := enc{make([]byte, 0, 24+len(b.SourceName))}
	e.u32(b.TimeoutMS)
	e.u32(0)
	e.u64(b.Source)
	e.str(b.SourceName)
	return e.b
}

// Unmarshal decodes p into b.
func (b *Begin) Unmarshal(p []byte) error {
	d := dec{b: p}
	b.TimeoutMS = d.u32()
	d.u32()
	b.Source = d.u64()
	b.SourceName = d.str()
	return d.done("begin")
}

// Summary is the body of Exported and End: what a whole export contained,
// so the receiver can check it got everything.
type Summary struct {
	Listeners, Conns, Packets uint32
	Batches                   uint32
	StateBytes                uint64
	FreezeStartNS             uint64 // CLOCK_MONOTONIC when the source stopped serving
	ExportDoneNS              uint64 // CLOCK_MONOTONIC when the last batch was sent
	// Copies and Seals (version 3, pre-copy only): the entries of copy
	// batches, and the Seal messages. With both 0 the body is the 40
	// bytes of versions 1 and 2.
	Copies, Seals uint32
}

// summaryLen and summaryCopyLen are the Summary body sizes without and
// with the pre-copy counts.
const (
	summaryLen     = 40
	summaryCopyLen = 48
)

// Marshal encodes s.
func (s Summary) Marshal() []byte {
	e := enc{make([]byte, 0, summaryCopyLen)}
	e.u32(s.Listeners)
	e.u32(s.Conns)
	e.u32(s.Packets)
	e.u32(s.Batches)
	e.u64(s.StateBytes)
	e.u64(s.FreezeStartNS)
	e.u64(s.ExportDoneNS)
	if s.Copies != 0 || s.Seals != 0 {
		e.u32(s.Copies)
		e.u32(s.Seals)
	}
	return e.b
}

// Unmarshal decodes b into s.
func (s *Summary) Unmarshal(b []byte) error {
	d := dec{b: b}
	s.Listeners, s.Conns, s.Packets, s.Batches = d.u32(), d.u32(), d.u32(), d.u32()
	s.StateBytes, s.FreezeStartNS, s.ExportDoneNS = d.u64(), d.u64(), d.u64()
	s.Copies, s.Seals = 0, 0
	if len(b) == summaryCopyLen {
		s.Copies, s.Seals = d.u32(), d.u32()
	}
	return d.done("summary")
}

// Total is the number of descriptors (other than memfds) s accounts for.
func (s Summary) Total() int { return int(s.Listeners) + int(s.Conns) + int(s.Packets) }

// Stamp carries a CLOCK_MONOTONIC time: the body of Committed and Serving.
type Stamp struct {
	MonoNS uint64
}

// Marshal encodes s.
func (s Stamp) Marshal() []byte {
	return binary.LittleEndian.AppendUint64(make([]byte, 0, 8), s.MonoNS)
}

// Unmarshal decodes b into s.
func (s *Stamp) Unmarshal(b []byte) error {
	d := dec{b: b}
	s.MonoNS = d.u64()
	return d.done("stamp")
}

// Entry describes one descriptor of a batch.
type Entry struct {
	Kind  uint8
	Key   string // listeners and packet sockets: the SDK's "network|address" key
	State []byte // conns: the application's state record
}

// Batch is the body of a Batch message: entries matching the attached
// descriptors one for one, in order. When the states do not fit in the
// body, Memfd is set and the states travel in a memfd attached last.
type Batch struct {
	Entries []Entry
	Memfd   bool
}

// AppendCopyBatch encodes entries (their states are ignored) as a copy
// batch (BatchCopy): the body and its flags, which the header repeats.
func AppendCopyBatch(dst []byte, entries []Entry) (body []byte, flags uint16) {
	size := 8
	for i := range entries {
		size += entryFixed + len(entries[i].Key)
	}
	e := enc{slices.Grow(dst, size)}
	e.u16(uint16(len(entries)))
	e.u16(BatchCopy)
	e.u32(0)
	for i := range entries {
		en := &entries[i]
		e.u8(en.Kind)
		e.u8(0)
		e.u16(uint16(len(en.Key)))
		e.u32(0)
		e.b = append(e.b, en.Key...)
	}
	return e.b, BatchCopy
}

const entryFixed = 8 // kind, reserved, key length, state length

// InlineSize is the body size of a batch with these entries and inline states.
func InlineSize(entries []Entry) int {
	n := 8
	for i := range entries {
		n += entryFixed + len(entries[i].Key) + len(entries[i].State)
	}
	return n
}

// MarshalBatch encodes entries. When the states fit (InlineSize ≤ MaxBody)
// they are inline and states is nil; otherwise the body holds only lengths,
// flags has BatchMemfd, and states is the concatenation to put in a memfd.
func MarshalBatch(entries []Entry) (body []byte, flags uint16, states []byte) {
	return AppendBatch(nil, entries)
}

// AppendBatch is MarshalBatch appending the body to dst, so that a sender
// can reuse one buffer for every batch of a transfer: in a process that
// sends thousands of connections, fresh buffers cost a page fault each.
func AppendBatch(dst []byte, entries []Entry) (body []byte, flags uint16, states []byte) {
	inline := InlineSize(entries) <= MaxBody
	size := 8
	for i := range entries {
		size += entryFixed + len(entries[i].Key)
		if inline {
			size += len(entries[i].State)
		}
	}
	e := enc{slices.Grow(dst, size)}
	e.u16(uint16(len(entries)))
	if !inline {
		flags = BatchMemfd
	}
	e.u16(flags)
	e.u32(0)
	for i := range entries {
		en := &entries[i]
		e.u8(en.Kind)
		e.u8(0)
		e.u16(uint16(len(en.Key)))
		e.u32(uint32(len(en.State)))
		e.b = append(e.b, en.Key...)
		if inline {
			e.b = append(e.b, en.State...)
		} else {
			states = append(states, en.State...)
		}
	}
	return e.b, flags, states
}

// BatchInfo is a decoded batch body before the states are attached.
type BatchInfo struct {
	Entries   []Entry // State is filled for inline batches
	StateLens []uint32
	Memfd     bool
	Copy      bool // BatchCopy: pre-copied entries, without states
	StateSum  uint64
}

// DecodeBatch checks a batch body against the number of descriptors that
// arrived with it. It does not touch the descriptors.
func DecodeBatch(body []byte, nfds int) (BatchInfo, error) {
	var bi BatchInfo
	err := DecodeBatchInto(&bi, body, nfds)
	return bi, err
}

// DecodeBatchInto is DecodeBatch reusing bi's slices, so that a receiver
// of many batches allocates them once. The entries' states alias body.
func DecodeBatchInto(bi *BatchInfo, body []byte, nfds int) error {
	entries, lens := bi.Entries[:0], bi.StateLens[:0]
	*bi = BatchInfo{}
	d := dec{b: body}
	count := int(d.u16())
	flags := d.u16()
	d.u32()
	if d.err != nil {
		return fmt.Errorf("decode batch: %w", d.err)
	}
	bi.Memfd = flags&BatchMemfd != 0
	bi.Copy = flags&BatchCopy != 0
	if flags&^(BatchMemfd|BatchCopy) != 0 || (bi.Memfd && bi.Copy) {
		return fmt.Errorf("decode batch: %w: unknown flags %#x", ErrMalformed, flags)
	}
	want := count
	if bi.Memfd {
		want++
	}
	if want != nfds {
		return fmt.Errorf("decode batch: %w: %d entries (memfd %v) but %d descriptors", ErrFDCount, count, bi.Memfd, nfds)
	}
	if count == 0 {
		return fmt.Errorf("decode batch: %w: empty batch", ErrMalformed)
	}
	bi.Entries = slices.Grow(entries, count)[:count]
	bi.StateLens = slices.Grow(lens, count)[:count]
	clear(bi.Entries)
	for i := 0; i < count && d.err == nil; i++ {
		kind := d.u8()
		d.u8()
		klen := int(d.u16())
		slen := d.u32()
		if d.err != nil {
			break
		}
		if kind < KindListener || kind > KindPacket {
			return fmt.Errorf("decode batch: %w: entry %d has unknown kind %d", ErrMalformed, i, kind)
		}
		if klen > MaxKey {
			return fmt.Errorf("decode batch: %w: entry %d key of %d bytes, limit %d", ErrTooLarge, i, klen, MaxKey)
		}
		if slen > MaxState {
			return fmt.Errorf("decode batch: %w: entry %d state of %d bytes, limit %d", ErrTooLarge, i, slen, MaxState)
		}
		if bi.Copy && slen != 0 {
			return fmt.Errorf("decode batch: %w: copy entry %d carries a state of %d bytes", ErrMalformed, i, slen)
		}
		bi.Entries[i].Kind = kind
		bi.Entries[i].Key = key(d.take(klen))
		bi.StateLens[i] = slen
		bi.StateSum += uint64(slen)
		if !bi.Memfd {
			if s := d.take(int(slen)); s != nil {
				bi.Entries[i].State = s
			}
		}
	}
	if err := d.done("batch"); err != nil {
		return err
	}
	return nil
}

// key converts a batch entry's key, without allocating for the keys every
// connection carries (its family): a batch holds up to MaxFDs of them.
func key(b []byte) string {
	switch string(b) {
	case "tcp":
		return "tcp"
	case "unix":
		return "unix"
	}
	return string(b)
}
