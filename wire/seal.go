package wire

import (
	"fmt"
	"slices"
)

// Verdicts of a Seal entry: what becomes of one pre-copied descriptor.
const (
	// SealKeep: the descriptor moves, with the entry's state record.
	SealKeep uint8 = 1
	// SealDrop: the source keeps the descriptor (it closed or untracked
	// the connection during the pre-copy, or its Freeze hook skipped
	// it): the target closes its copy. No state.
	SealDrop uint8 = 2
)

// SealEntryFixed is the size of a Seal entry without its state.
const SealEntryFixed = 12

// MaxSealEntries is the most entries one Seal body holds.
const MaxSealEntries = (MaxBody - 8) / SealEntryFixed

// SealEntry is the verdict on one pre-copied descriptor, named by its
// index: its place among all the entries of the transaction's copy
// batches, counting from 0.
type SealEntry struct {
	Index   uint32
	Verdict uint8  // SealKeep or SealDrop
	State   []byte // SealKeep: the connection's state record
}

// SealInlineSize is the body size of a Seal with these entries and their
// states inline.
func SealInlineSize(entries []SealEntry) int {
	n := 8
	for i := range entries {
		n += SealEntryFixed + len(entries[i].State)
	}
	return n
}

// AppendSeal encodes entries (at most MaxSealEntries) as a Seal body
// appended to dst. When the states fit (SealInlineSize ≤ MaxBody) they
// are inline and states is nil; otherwise flags has BatchMemfd and states
// is the concatenation to put in a memfd, attached as the only
// descriptor, exactly as for a batch.
func AppendSeal(dst []byte, entries []SealEntry) (body []byte, flags uint16, states []byte) {
	inline := SealInlineSize(entries) <= MaxBody
	size := 8 + SealEntryFixed*len(entries)
	if inline {
		size = SealInlineSize(entries)
	} else {
		flags = BatchMemfd
	}
	e := enc{slices.Grow(dst, size)}
	e.u16(uint16(len(entries)))
	e.u16(flags)
	e.u32(0)
	for i := range entries {
		en := &entries[i]
		e.u32(en.Index)
		e.u8(en.Verdict)
		e.u8(0)
		e.u16(0)
		e.u32(uint32(len(en.State)))
		if inline {
			e.b = append(e.b, en.State...)
		} else {
			states = append(states, en.State...)
		}
	}
	return e.b, flags, states
}

// SealInfo is a decoded Seal body before the states are attached.
type SealInfo struct {
	Entries   []SealEntry // State is filled for inline seals
	StateLens []uint32
	Memfd     bool
	StateSum  uint64
}

// DecodeSealInto checks a Seal body against the number of descriptors
// that arrived with it (1 with BatchMemfd, else 0), reusing si's slices.
// The entries' states alias body. It does not check the indexes against
// the copies: the receiver knows how many there were.
func DecodeSealInto(si *SealInfo, body []byte, nfds int) error {
	entries, lens := si.Entries[:0], si.StateLens[:0]
	*si = SealInfo{}
	d := dec{b: body}
	count := int(d.u16())
	flags := d.u16()
	d.u32()
	if d.err != nil {
		return fmt.Errorf("decode seal: %w", d.err)
	}
	si.Memfd = flags&BatchMemfd != 0
	if flags&^BatchMemfd != 0 {
		return fmt.Errorf("decode seal: %w: unknown flags %#x", ErrMalformed, flags)
	}
	want := 0
	if si.Memfd {
		want = 1
	}
	if want != nfds {
		return fmt.Errorf("decode seal: %w: memfd %v but %d descriptors", ErrFDCount, si.Memfd, nfds)
	}
	if count == 0 {
		return fmt.Errorf("decode seal: %w: empty seal", ErrMalformed)
	}
	si.Entries = slices.Grow(entries, count)[:count]
	si.StateLens = slices.Grow(lens, count)[:count]
	clear(si.Entries)
	for i := 0; i < count && d.err == nil; i++ {
		idx := d.u32()
		verdict := d.u8()
		d.u8()
		d.u16()
		slen := d.u32()
		if d.err != nil {
			break
		}
		switch {
		case verdict != SealKeep && verdict != SealDrop:
			return fmt.Errorf("decode seal: %w: entry %d has unknown verdict %d", ErrMalformed, i, verdict)
		case slen > MaxState:
			return fmt.Errorf("decode seal: %w: entry %d state of %d bytes, limit %d", ErrTooLarge, i, slen, MaxState)
		case verdict == SealDrop && slen != 0:
			return fmt.Errorf("decode seal: %w: dropped entry %d carries a state of %d bytes", ErrMalformed, i, slen)
		}
		si.Entries[i].Index = idx
		si.Entries[i].Verdict = verdict
		si.StateLens[i] = slen
		si.StateSum += uint64(slen)
		if !si.Memfd {
			if s := d.take(int(slen)); s != nil {
				si.Entries[i].State = s
			}
		}
	}
	return d.done("seal")
}

// SplitSealStates cuts all, the contents of a Seal's state memfd, into
// the entries' states in order.
func SplitSealStates(si *SealInfo, all []byte) {
	off := uint64(0)
	for i, n := range si.StateLens {
		if n > 0 {
			si.Entries[i].State = all[off : off+uint64(n) : off+uint64(n)]
		}
		off += uint64(n)
	}
}
