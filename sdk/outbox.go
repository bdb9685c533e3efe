package handoff

import (
	"errors"
	"fmt"

	"sync"

	"github.com/handoff-dev/handoff/wire"
)

// item is one socket on its way to the agent after the freeze: an
// ordinary batch entry with its descriptor (copy < 0), or the verdict on a
// pre-copied one (copy ≥ 0, fd -1): Keep with entry.State, or Drop.
type item struct {
	entry wire.Entry
	fd    int
	copy  int32
	drop  bool
}

// sealChunk is how many verdicts a Seal carries, except the last: small
// enough that the agent relays one while the freeze fills the next, large
// enough that a pause holds few messages. Its fixed part (12 bytes an
// entry) always fits the body; states that do not fit move to a memfd.
const sealChunk = 1024

// outbox packs what the freeze queues into messages: Batch messages of at
// most MaxFDs descriptors, Seal messages of at most sealChunk verdicts,
// moving the states into a memfd when they do not fit in the body. The
// freeze workers add to it and send each message they seal themselves
// (drain); its sender goroutine (send) sends what close seals, and
// whatever a worker left.
type outbox struct {
	x *exportTx

	mu     sync.Mutex
	items  []item        // the batch being filled
	size   int           // its body size so far, states inline
	keyed  int           // its body size so far with the states in a memfd
	seals  []item        // the seal being filled
	full   []sealed      // sealed messages, in order, not yet sent
	closed bool          // no more items: send what is left, then stop
	kick   chan struct{} // cap 1: there is something for the sender
	sent   chan struct{} // closed when the sender stopped
	err    error         // the first failure to send, under drainMu; read after sent

	// drainMu is held while sealed messages are taken and sent, by the
	// sender goroutine or a freeze worker, so that they go out in order.
	drainMu sync.Mutex
	seq     uint32 // the next batch's sequence number, under drainMu
	sealSeq uint32 // the next seal's

	// Buffers the sender reuses for every message, and item slices it
	// hands back for sealing (under mu): fresh memory costs a page fault
	// per 4 KiB, which at thousands of connections shows in the pause.
	spare   [][]item
	entries []wire.Entry
	verdict []wire.SealEntry
	fds     []int
	body    []byte
}

// sealed is one message's items, ready to send.
type sealed struct {
	seal bool
	its  []item
}

func newOutbox(x *exportTx) *outbox {
	b := &outbox{x: x, items: make([]item, 0, wire.MaxFDs), kick: make(chan struct{}, 1), sent: make(chan struct{}), seq: x.copySeq}
	go b.send()
	return b
}

// add queues items, sealing every message they fill, and reports whether
// it sealed one.
func (b *outbox) add(its ...item) (sealedOne bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, it := range its {
		if it.copy >= 0 {
			b.seals = append(b.seals, it)
			if len(b.seals) == sealChunk {
				b.full = append(b.full, sealed{seal: true, its: b.seals})
				b.seals = nil
				b.wake()
				sealedOne = true
			}
			continue
		}
		sz := 8 + len(it.entry.Key) + len(it.entry.State)
		ksz := 8 + len(it.entry.Key)
		// Full: MaxFDs descriptors; or one slot left for the memfd the
		// states would need; or the body too large even with the states
		// in a memfd (long keys: listeners' addresses).
		if len(b.items) == wire.MaxFDs || (len(b.items) == wire.MaxFDs-1 && b.size+sz > wire.MaxBody) ||
			(len(b.items) > 0 && b.keyed+ksz > wire.MaxBody) {
			b.sealBatchLocked()
			sealedOne = true
		}
		if len(b.items) == 0 {
			b.size, b.keyed = 8, 8
		}
		b.items = append(b.items, it)
		b.size += sz
		b.keyed += ksz
	}
	return sealedOne
}

func (b *outbox) sealBatchLocked() {
	if len(b.items) == 0 {
		return
	}
	b.full = append(b.full, sealed{its: b.items})
	if n := len(b.spare); n > 0 {
		b.items, b.spare = b.spare[n-1], b.spare[:n-1]
	} else {
		b.items = make([]item, 0, wire.MaxFDs)
	}
	b.wake()
}

// wake tells the sender there is something to do.
func (b *outbox) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// close seals the last messages; the sender stops once everything is
// sent (b.sent).
func (b *outbox) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.sealBatchLocked()
	if len(b.seals) > 0 {
		b.full = append(b.full, sealed{seal: true, its: b.seals})
		b.seals = nil
	}
	b.closed = true
	b.wake()
}

// send is the sender goroutine. After a failure, or once the transaction
// is decided, it sends nothing more.
func (b *outbox) send() {
	defer close(b.sent)
	for {
		closed, err := b.drain()
		if err != nil || closed {
			return
		}
		<-b.kick
	}
}

// drain sends every sealed message, in order, until none is left; it
// reports whether the outbox is closed and everything sent. After a
// failure (kept in b.err) it sends nothing more.
func (b *outbox) drain() (closed bool, err error) {
	b.drainMu.Lock()
	defer b.drainMu.Unlock()
	if b.err != nil {
		return false, b.err
	}
	for {
		b.mu.Lock()
		msgs, closed := b.full, b.closed
		b.full = nil
		b.mu.Unlock()
		if len(msgs) == 0 {
			return closed, nil
		}
		for _, m := range msgs {
			var err error
			if m.seal {
				err = b.sendSeal(m.its)
			} else {
				err = b.sendBatch(m.its)
			}
			if err != nil {
				b.err = err
				return false, err
			}
			clear(m.its) // the states, for the collector
			if !m.seal {
				b.mu.Lock()
				b.spare = append(b.spare, m.its[:0])
				b.mu.Unlock()
			}
		}
	}
}

// sendBatch sends one ordinary batch and counts it.
func (b *outbox) sendBatch(its []item) error {
	seq := b.seq
	entries, fds := b.entries[:0], b.fds[:0]
	for _, it := range its {
		entries, fds = append(entries, it.entry), append(fds, it.fd)
	}
	body, flags, states := wire.AppendBatch(b.body[:0], entries)
	b.entries, b.fds, b.body = entries[:0], fds[:0], body[:0]
	defer clear(entries)
	var stateSum uint64
	for i := range entries {
		stateSum += uint64(len(entries[i].State))
	}
	if flags&wire.BatchMemfd != 0 {
		memfd, err := wire.NewStateMemfd(states)
		if err != nil {
			return fmt.Errorf("batch %d: %w", seq, err)
		}
		defer wire.CloseAll([]int{memfd})
		fds = append(fds, memfd)
	}
	if err := b.x.send(wire.Msg{Header: wire.Header{Type: wire.TypeBatch, Flags: flags, TxID: b.x.txid, Seq: seq}, Body: body, FDs: fds}); err != nil {
		return err
	}
	b.seq++
	return b.x.tally.Batch(&wire.BatchInfo{Entries: entries, StateSum: stateSum})
}

// sendSeal sends one Seal and counts it.
func (b *outbox) sendSeal(its []item) error {
	seq := b.sealSeq
	vs := b.verdict[:0]
	var stateSum uint64
	for _, it := range its {
		v := wire.SealEntry{Index: uint32(it.copy), Verdict: wire.SealKeep, State: it.entry.State}
		if it.drop {
			v.Verdict = wire.SealDrop
		}
		stateSum += uint64(len(v.State))
		vs = append(vs, v)
	}
	body, flags, states := wire.AppendSeal(b.body[:0], vs)
	b.verdict, b.body = vs[:0], body[:0]
	defer clear(vs)
	var fds []int
	if flags&wire.BatchMemfd != 0 {
		memfd, err := wire.NewStateMemfd(states)
		if err != nil {
			return fmt.Errorf("seal %d: %w", seq, err)
		}
		defer wire.CloseAll([]int{memfd})
		fds = []int{memfd}
	}
	if err := b.x.send(wire.Msg{Header: wire.Header{Type: wire.TypeSeal, Flags: flags, TxID: b.x.txid, Seq: seq}, Body: body, FDs: fds}); err != nil {
		return err
	}
	b.sealSeq++
	return b.x.tally.Seal(&wire.SealInfo{Entries: vs, StateSum: stateSum})
}

// errDecided stops the sender of a transaction that was decided (aborted)
// while it was exporting.
var errDecided = errors.New("the migration was decided while exporting")
