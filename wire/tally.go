package wire

import "fmt"

// Tally counts what a transfer carries, the same way wherever it is
// counted: the source as it sends, the agent as it relays, the target as
// it adopts. Exported and End carry the source's Summary; each receiver
// checks it against its own Tally.
//
// A pre-copy (version 3) sends copy batches first, then, once the source
// froze, ordinary batches (connections it tracked since) and Seal
// messages. Every copy gets exactly one verdict in a Seal; a kept copy
// counts as moved, a dropped one does not.
type Tally struct {
	sum     Summary
	kinds   []uint8 // the kind of each copy, by index
	verdict []uint8 // each copy's verdict so far, 0 for none
	decided int     // copies with a verdict
	dropped int     // copies with a Drop verdict
	frozen  bool    // an ordinary batch or a Seal came: no copies after it
}

// Batch counts one decoded batch.
func (t *Tally) Batch(bi *BatchInfo) error {
	if bi.Copy {
		if t.frozen {
			return fmt.Errorf("%w: a copy batch after the source froze", ErrMalformed)
		}
		for i := range bi.Entries {
			t.kinds = append(t.kinds, bi.Entries[i].Kind)
		}
		t.verdict = append(t.verdict, make([]uint8, len(bi.Entries))...)
		t.sum.Copies += uint32(len(bi.Entries))
		t.sum.Batches++
		return nil
	}
	t.frozen = true
	for i := range bi.Entries {
		t.count(bi.Entries[i].Kind)
	}
	t.sum.StateBytes += bi.StateSum
	t.sum.Batches++
	return nil
}

// Seal counts one decoded Seal; an index out of range or given a second
// verdict is an error.
func (t *Tally) Seal(si *SealInfo) error {
	t.frozen = true
	for i := range si.Entries {
		e := &si.Entries[i]
		if int64(e.Index) >= int64(len(t.verdict)) {
			return fmt.Errorf("%w: seal entry %d names copy %d of %d", ErrMalformed, i, e.Index, len(t.verdict))
		}
		if t.verdict[e.Index] != 0 {
			return fmt.Errorf("%w: seal entry %d gives copy %d a second verdict", ErrMalformed, i, e.Index)
		}
		t.verdict[e.Index] = e.Verdict
		t.decided++
		if e.Verdict == SealKeep {
			t.count(t.kinds[e.Index])
		} else {
			t.dropped++
		}
	}
	t.sum.StateBytes += si.StateSum
	t.sum.Seals++
	return nil
}

func (t *Tally) count(kind uint8) {
	switch kind {
	case KindListener:
		t.sum.Listeners++
	case KindConn:
		t.sum.Conns++
	case KindPacket:
		t.sum.Packets++
	}
}

// Summary is what the tally counted so far, without timestamps.
func (t *Tally) Summary() Summary { return t.sum }

// Undecided is the number of copies still without a verdict.
func (t *Tally) Undecided() int { return len(t.verdict) - t.decided }

// Dropped is the number of copies with a Drop verdict.
func (t *Tally) Dropped() int { return t.dropped }

// Verdict is copy i's verdict so far (0 for none).
func (t *Tally) Verdict(i uint32) uint8 { return t.verdict[i] }

// Check compares a Summary the source sent with what was counted, and
// requires a verdict for every copy.
func (t *Tally) Check(s Summary) error {
	c := t.sum
	if c.Listeners != s.Listeners || c.Conns != s.Conns || c.Packets != s.Packets || c.Batches != s.Batches ||
		c.StateBytes != s.StateBytes || c.Copies != s.Copies || c.Seals != s.Seals {
		return fmt.Errorf("%w: the source announces %s; the messages carried %s", ErrMalformed, s.counts(), c.counts())
	}
	if n := t.Undecided(); n > 0 {
		return fmt.Errorf("%w: %d of %d copies got no verdict", ErrMalformed, n, len(t.verdict))
	}
	return nil
}

func (s Summary) counts() string {
	str := fmt.Sprintf("%d listeners, %d connections, %d packet sockets, %d batches, %d state bytes", s.Listeners, s.Conns, s.Packets, s.Batches, s.StateBytes)
	if s.Copies != 0 || s.Seals != 0 {
		str += fmt.Sprintf(", %d copies, %d seals", s.Copies, s.Seals)
	}
	return str
}
