package handoff

import (
	"fmt"
	"net"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Hooks let the SDK stop, resume and release one tracked connection.
type Hooks struct {
	// Freeze stops all I/O on the connection at a safe point and returns
	// its state record: everything the new process needs to carry on,
	// including bytes read but not processed and bytes not yet written.
	// Return ErrSkip to keep the connection in this process. Required.
	Freeze func() ([]byte, error)
	// Resume undoes Freeze after an aborted migration: carry on exactly as
	// before. Required.
	Resume func()
	// Moved says the connection now belongs to the new process. Stop the
	// goroutines that served it without closing or shutting it down; the
	// SDK closes this process's copy after Moved returns. Optional.
	Moved func()
}

// Tracked is a connection under handoff's care.
type Tracked struct {
	p      *Process
	family string // "tcp" or "unix"
	conn   net.Conn
	raw    syscall.RawConn // nil for an imported connection (sc)
	sc     *sockConn
	hooks  Hooks
	copyMark
	moved     bool          // moved to another process, under p.mu
	frozenGen atomic.Uint64 // the gen of the export that froze it

	// pos is its place in its process's trackList, under p.mu; -1 when
	// it is not on it.
	pos int
}

// trackList is a process's tracked connections, oldest first. A migration
// freezes them in this order, which is mostly the order their objects
// were allocated in: walking thousands of connections in address order
// rather than a map's random order keeps the freeze in the caches: at
// 5000 connections the pause's median went from 16.5 to 13.6 ms. A slice
// rather than a linked list, so that the migration's copy of it is one
// sequential read instead of a pointer chase through every connection.
type trackList struct {
	ts []*Tracked // nil where a connection was untracked
	n  int        // how many of ts are not nil
}

func (l *trackList) push(t *Tracked) {
	t.pos = len(l.ts)
	l.ts = append(l.ts, t)
	l.n++
}

func (l *trackList) remove(t *Tracked) {
	if t.pos < 0 || t.pos >= len(l.ts) || l.ts[t.pos] != t {
		return
	}
	l.ts[t.pos] = nil
	t.pos = -1
	l.n--
	if len(l.ts) >= 64 && l.n < len(l.ts)/2 {
		// Close the gaps once they are half the slice, keeping the order:
		// each removal pays for about one move.
		j := 0
		for _, x := range l.ts {
			if x != nil {
				x.pos = j
				l.ts[j] = x
				j++
			}
		}
		clear(l.ts[j:])
		l.ts = l.ts[:j]
	}
}

// has reports whether t is on the list.
func (l *trackList) has(t *Tracked) bool {
	return t.pos >= 0 && t.pos < len(l.ts) && l.ts[t.pos] == t
}

// appendTo appends the tracked connections to dst, oldest first.
func (l *trackList) appendTo(dst []*Tracked) []*Tracked {
	for _, t := range l.ts {
		if t != nil {
			dst = append(dst, t)
		}
	}
	return dst
}

// fd returns the connection's descriptor for a batch.
func (t *Tracked) fd() (int, error) {
	if t.sc != nil {
		return t.sc.sysfd()
	}
	return rawFD(t.raw)
}

// dup duplicates the connection's descriptor, for a pre-copy.
func (t *Tracked) dup() (int, error) {
	if t.sc != nil {
		return t.sc.dup()
	}
	return dupRaw(t.raw)
}

// Track puts c under handoff's care: the next outgoing migration freezes
// it with h.Freeze and moves it. c must expose its descriptor
// (*net.TCPConn and *net.UnixConn do). Track returns ErrMoved when this
// process's sockets have already gone to another process.
func (p *Process) Track(c net.Conn, h Hooks) (*Tracked, error) {
	if h.Freeze == nil || h.Resume == nil {
		return nil, fmt.Errorf("track %v: freeze and resume hooks are required", c.RemoteAddr())
	}
	var t *Tracked
	if s, ok := c.(*sockConn); ok {
		// A connection this process imported: its family is known and
		// its descriptor at hand, so tracking it costs no system call
		// (the address costs two, the raw connection three to hand the
		// descriptor to the poller, for each of thousands).
		t = &Tracked{p: p, conn: c, sc: s, hooks: h, family: s.family}
	} else {
		sc, ok := c.(syscall.Conn)
		if !ok {
			return nil, fmt.Errorf("track %T %v: %w", c, c.RemoteAddr(), ErrNotSupported)
		}
		raw, err := sc.SyscallConn()
		if err != nil {
			return nil, fmt.Errorf("track %v: %w", c.RemoteAddr(), err)
		}
		t = &Tracked{p: p, conn: c, raw: raw, hooks: h, family: "tcp"}
		if a := c.LocalAddr(); a != nil && a.Network() == "unix" {
			t.family = "unix"
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.accepted, c)
	p.cond.Broadcast()
	if p.moved {
		return nil, fmt.Errorf("track %v: %w", c.RemoteAddr(), ErrMoved)
	}
	p.tracked.push(t)
	if x := p.export; x != nil {
		x.late(t)
	}
	return t, nil
}

// Untrack takes the connection out of handoff's care while the
// application goes on using it. To end the connection, use Close.
func (t *Tracked) Untrack() {
	p := t.p
	p.mu.Lock()
	p.tracked.remove(t)
	p.mu.Unlock()
}

// Close untracks the connection and closes it, shutting it down first so
// that the peer sees the end at once: while a migration pre-copies, the
// new process holds a copy of the descriptor, and a plain close would
// leave the connection open until the migration drops that copy. An
// application that closes a tracked connection otherwise must call
// CloseRead and CloseWrite (shutdown) before Close. After a migration
// moved the connection, Close does nothing and returns ErrMoved: the
// connection belongs to the new process.
func (t *Tracked) Close() error {
	p := t.p
	p.mu.Lock()
	moved := t.moved
	frozen := false
	if x := p.export; x != nil {
		frozen = t.frozenGen.Load() == x.gen
	}
	if !moved {
		p.tracked.remove(t)
	}
	p.mu.Unlock()
	switch {
	case moved:
		return ErrMoved
	case frozen:
		// A migration froze it and may move it: a shutdown would end
		// it in the new process too.
		return t.conn.Close()
	}
	if t.sc != nil {
		_ = t.sc.shutdown(unix.SHUT_RDWR, "shutdown")
	} else {
		shutdownRaw(t.raw)
	}
	return t.conn.Close()
}

// noteAccepted remembers a connection Accept handed out, so a migration
// starting a moment later waits (AcceptGrace at most) for it to be
// tracked instead of leaving it behind.
func (p *Process) noteAccepted(c net.Conn) {
	p.mu.Lock()
	now := time.Now()
	if len(p.accepted) > 1024 {
		for k, at := range p.accepted {
			if now.Sub(at) > time.Second {
				delete(p.accepted, k)
			}
		}
	}
	p.accepted[c] = now
	p.mu.Unlock()
}

// waitAccepted waits until every connection accepted within the last
// second has been tracked, or until the grace period ends. Called with
// p.mu held.
func (p *Process) waitAccepted() {
	deadline := time.Now().Add(p.opts.AcceptGrace)
	timer := time.AfterFunc(p.opts.AcceptGrace, func() {
		p.mu.Lock()
		p.cond.Broadcast()
		p.mu.Unlock()
	})
	defer timer.Stop()
	for {
		now := time.Now()
		pending := 0
		for c, at := range p.accepted {
			if now.Sub(at) > time.Second {
				delete(p.accepted, c)
				continue
			}
			pending++
		}
		if pending == 0 || !now.Before(deadline) {
			if pending > 0 {
				p.logf("%d accepted connections were not tracked within %v; they stay in this process", pending, p.opts.AcceptGrace)
			}
			return
		}
		p.cond.Wait()
	}
}
