package wire

// Handover formats: what an agent sends the agent that replaces it on the
// same socket (docs/protocol.md, "Agent upgrades: handing over to a
// successor"). The format has a version of its own, independent of the
// protocol version applications speak: the successor names the range it
// reads in its request, and the old agent writes the newest common one.

// Handover format versions this package reads and writes.
const (
	// HandoverMinVersion is the oldest handover format this package reads.
	HandoverMinVersion = 1
	// HandoverMaxVersion is the newest handover format this package
	// writes. Version 1: Handover (listener, entry and descriptor
	// counts), then per entry HandoverEntry and its batches as stored.
	HandoverMaxVersion = 1
)

// Handover is the body of TypeHandover, which carries the old agent's
// listening socket as its one descriptor.
type Handover struct {
	// Version is the handover format of everything that follows.
	Version uint16
	// Entries is how many HandoverEntry messages follow.
	Entries uint32
	// FDs is how many descriptors the entries' batches carry in all, so
	// that a successor can refuse before taking any it has no room for.
	FDs uint64
	// Socket is the path the listener is bound to.
	Socket string
}

// Marshal encodes h.
func (h Handover) Marshal() []byte {
	e := enc{make([]byte, 0, 18+len(h.Socket))}
	e.u16(h.Version)
	e.u32(h.Entries)
	e.u64(h.FDs)
	e.str(h.Socket)
	return e.b
}

// Unmarshal decodes b into h.
func (h *Handover) Unmarshal(b []byte) error {
	d := dec{b: b}
	h.Version, h.Entries, h.FDs, h.Socket = d.u16(), d.u32(), d.u64(), d.str()
	return d.done("handover")
}

// HandoverEntry is the body of TypeHandoverEntry: one fd-store entry's
// key, what it holds, and how much of its hold remains. Batches
// messages follow it, each exactly as the source sent it into the store
// (flags, seq, body, descriptors).
type HandoverEntry struct {
	Name string
	UID  uint32
	Pod  string // the pod UID under Kubernetes, else empty
	// HoldMS is what remains of the entry's hold when it was sent.
	HoldMS uint64
	// Batches is how many Batch messages follow.
	Batches uint32
	// Sum is the source's Exported summary of the entry.
	Sum Summary
}

// Marshal encodes h.
func (h HandoverEntry) Marshal() []byte {
	e := enc{make([]byte, 0, 24+len(h.Name)+len(h.Pod)+summaryCopyLen)}
	e.str(h.Name)
	e.u32(h.UID)
	e.str(h.Pod)
	e.u64(h.HoldMS)
	e.u32(h.Batches)
	e.b = append(e.b, h.Sum.Marshal()...)
	return e.b
}

// Unmarshal decodes b into h.
func (h *HandoverEntry) Unmarshal(b []byte) error {
	d := dec{b: b}
	h.Name, h.UID, h.Pod, h.HoldMS, h.Batches = d.str(), d.u32(), d.str(), d.u64(), d.u32()
	if d.err != nil {
		return d.done("handover entry")
	}
	return h.Sum.Unmarshal(d.b)
}

// Taken is the body of TypeTaken: how many entries and descriptors the
// successor took, which the old agent checks against what it sent.
type Taken struct {
	Entries uint32
	FDs     uint64
}

// Marshal encodes t.
func (t Taken) Marshal() []byte {
	e := enc{make([]byte, 0, 12)}
	e.u32(t.Entries)
	e.u64(t.FDs)
	return e.b
}

// Unmarshal decodes b into t.
func (t *Taken) Unmarshal(b []byte) error {
	d := dec{b: b}
	t.Entries, t.FDs = d.u32(), d.u64()
	return d.done("taken")
}
