package handoff

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/handoff-dev/handoff/wire"
)

// Rejoining after the agent session is lost (the agent restarted, crashed
// or was upgraded): the first attempt after rejoinFirst, then twice as
// long each time up to rejoinMax, every wait jittered by ±50% so that the
// processes of a node do not all knock at once.
const (
	rejoinFirst = 100 * time.Millisecond
	rejoinMax   = 5 * time.Second
)

// startControl runs the loop that answers the agent: Prepare starts an
// outgoing migration, Abort calls it off; when the session is lost, it
// joins again.
func (p *Process) startControl() {
	p.mu.Lock()
	if p.agent == nil || p.controlRun {
		p.mu.Unlock()
		return
	}
	p.controlRun = true
	c := p.agent
	p.mu.Unlock()
	go p.control(c)
}

// control serves the agent session c, and the sessions that replace it.
func (p *Process) control(c *wire.Conn) {
	for c != nil {
		m, err := c.Recv()
		if err != nil {
			p.lostAgent(err)
			c = p.rejoin()
			continue
		}
		p.dispatch(c, m)
	}
}

// dispatch handles one message from the agent on session c.
func (p *Process) dispatch(c *wire.Conn, m wire.Msg) {
	switch m.Type {
	case wire.TypePrepare:
		p.onPrepare(c, m)
	case wire.TypeAbort:
		m.CloseFDs()
		var f wire.Failure
		if err := f.Unmarshal(m.Body); err != nil {
			f = wire.Failure{Code: wire.CodeMalformed, Reason: err.Error()}
		}
		p.mu.Lock()
		x := p.export
		p.mu.Unlock()
		if x != nil && x.txid == m.TxID && x.agent == c {
			x.agentEvent(f)
			step("abort-received")
		}
	case wire.TypeError:
		m.CloseFDs()
		var f wire.Failure
		_ = f.Unmarshal(m.Body)
		p.logf("agent reported an error: %v", f)
	default:
		m.CloseFDs()
		p.logf("ignored unexpected %v message from the agent", m.Type)
	}
}

// refuse answers a Prepare on session c with Abort.
func refuse(c *wire.Conn, txid uint64, code wire.Code, reason string) {
	_ = c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeAbort, TxID: txid}, Body: wire.Failure{Code: code, Reason: reason}.Marshal()})
}

// lostAgent notes that the session ended: an outgoing migration on it is
// called off (the source resumes, as the protocol says for a lost agent).
func (p *Process) lostAgent(err error) {
	p.mu.Lock()
	gone, closing := p.agentGone, p.closing
	p.agentGone = true
	x := p.export
	p.mu.Unlock()
	if x != nil {
		x.agentEvent(wire.Failure{Code: wire.CodeAgentClosed, Reason: fmt.Sprintf("lost the agent: %v", err)})
	}
	if !gone && !closing {
		p.logf("lost the agent (%v); serving on, and joining it again", err)
	}
}

// backoff is the rejoin schedule: rejoinFirst, then twice as long each
// time up to rejoinMax, every wait jittered by ±50%.
type backoff struct{ delay time.Duration }

// next is the wait before the next attempt.
func (b *backoff) next() time.Duration {
	if b.delay == 0 {
		b.delay = rejoinFirst
	}
	wait := time.Duration(float64(b.delay) * (0.5 + rand.Float64()))
	b.delay = min(2*b.delay, rejoinMax)
	return wait
}

// rejoin joins the agent again under the same name, with backoff, once
// the migration that was running (if any) has ended. It returns the new
// session, or nil when there is nothing more to do: the application
// closed its Process, or its sockets moved away.
func (p *Process) rejoin() *wire.Conn {
	var b backoff
	lost := time.Now()
	for attempt := 1; ; attempt++ {
		select {
		case <-p.stop:
			return nil
		case <-time.After(b.next()):
		}
		p.mu.Lock()
		moved, busy := p.moved, p.export != nil
		p.mu.Unlock()
		if moved {
			return nil
		}
		if busy {
			continue // the aborted migration is still resuming
		}
		c, w, err := p.dial(0)
		if err != nil {
			if attempt == 1 || attempt%10 == 0 {
				p.logf("could not join the agent again (attempt %d): %v", attempt, err)
			}
			continue
		}
		if w.Flags&wire.WelcomePending != 0 {
			// Stored descriptors wait for a new process of this name;
			// this one serves already and cannot take them.
			c.Close()
			p.logf("the agent holds stored descriptors for %q; they are for a new process, not this one: joining again later", p.opts.Name)
			continue
		}
		p.mu.Lock()
		if p.closing || p.moved {
			p.mu.Unlock()
			c.Close()
			return nil
		}
		p.agent, p.sessionID, p.agentGone = c, w.SessionID, false
		p.mu.Unlock()
		p.logf("joined the agent again as session %d, %v after losing it; migratable again", w.SessionID, time.Since(lost).Round(time.Millisecond))
		return c
	}
}
