// Package admin is the administrator's side of the agent socket: the JSON
// requests handoffctl sends (list sessions, migrate, store) and a small
// client for them. It depends only on the wire package, so tools that link
// it stay small.
package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/handoff-dev/handoff/wire"
)

// Operations a Request can name.
const (
	OpSessions = "sessions" // list sessions and stored descriptors
	OpMigrate  = "migrate"  // move one session's sockets to another session
	OpStore    = "store"    // move one session's sockets into the agent's fd store
	OpWait     = "wait"     // wait until a process (PID) has joined, up to TimeoutMS
	// OpHandover asks the agent to hand everything it holds to the asking
	// agent, its successor, and stop (docs/protocol.md, "Agent
	// upgrades"). The answer is a handover, not a Response, unless the
	// agent refuses.
	OpHandover = "handover"
)

// Request is the body of a wire Request message.
type Request struct {
	Op        string `json:"op"`
	From      uint64 `json:"from,omitempty"`
	To        uint64 `json:"to,omitempty"`
	TimeoutMS uint32 `json:"timeoutMs,omitempty"`
	// What lists what to move: "listeners", "connections", "packets".
	// Empty means all.
	What   []string `json:"what,omitempty"`
	HoldMS uint32   `json:"holdMs,omitempty"`
	// PID names the process OpWait waits for.
	PID int32 `json:"pid,omitempty"`
	// HandoverMin and HandoverMax are the handover formats the successor
	// reads (OpHandover).
	HandoverMin uint16 `json:"handoverMin,omitempty"`
	HandoverMax uint16 `json:"handoverMax,omitempty"`
}

// Session describes one application session, as the kernel identified it.
type Session struct {
	ID      uint64    `json:"id"`
	Name    string    `json:"name"`
	PID     int32     `json:"pid"`
	UID     uint32    `json:"uid"`
	GID     uint32    `json:"gid"`
	State   string    `json:"state"`
	Standby bool      `json:"standby"`
	Since   time.Time `json:"since"`
	// PodUID, ContainerID (64 hex) and Runtime say which pod and
	// container the kernel puts the process in; empty in standalone mode.
	PodUID      string `json:"podUID,omitempty"`
	ContainerID string `json:"containerID,omitempty"`
	Runtime     string `json:"runtime,omitempty"`
}

// Stored describes descriptors the agent holds for a restarting process.
type Stored struct {
	Name        string    `json:"name"`
	UID         uint32    `json:"uid"`
	Listeners   int       `json:"listeners"`
	Connections int       `json:"connections"`
	Packets     int       `json:"packets"`
	Expires     time.Time `json:"expires"`
}

// Result is the outcome of one migration.
type Result struct {
	TxID  uint64 `json:"txid"`
	From  uint64 `json:"from"`
	To    uint64 `json:"to"`
	Phase string `json:"phase"` // Completed or Failed
	// Code says why a Failed migration failed; 0 when it completed. Go
	// callers switch on it.
	Code wire.Code `json:"code,omitempty"`
	// Reason is Code's name (Code.String), for people and for clients
	// that read only the JSON.
	Reason      string `json:"reason,omitempty"`
	Message     string `json:"message,omitempty"`
	Listeners   int    `json:"listeners"`
	Connections int    `json:"connections"`
	Packets     int    `json:"packets"`
	Batches     int    `json:"batches"`
	StateBytes  uint64 `json:"stateBytes"`
	// Copies is how many descriptors the source sent ahead, while it
	// still served (a pre-copy, protocol version 3); 0 without one.
	Copies int `json:"copies,omitempty"`
	// Dropped is how many of the copies did not move: the source closed,
	// untracked or skipped them during the pre-copy.
	Dropped int `json:"dropped,omitempty"`
	// PrecopyNS runs from Prepare to the source stopping: the pre-copy,
	// outside the pause. 0 without one.
	PrecopyNS int64 `json:"precopyNs,omitempty"`
	// PauseNS runs from the source stopping to the target serving.
	PauseNS int64 `json:"pauseNs"`
	// DurationNS runs from the request to the outcome.
	DurationNS int64 `json:"durationNs"`
}

// Pause is PauseNS as a duration.
func (r Result) Pause() time.Duration { return time.Duration(r.PauseNS) }

// Duration is DurationNS as a duration.
func (r Result) Duration() time.Duration { return time.Duration(r.DurationNS) }

// Response is the body of a wire Response message.
type Response struct {
	Error    string    `json:"error,omitempty"`
	Sessions []Session `json:"sessions,omitempty"`
	Stored   []Stored  `json:"stored,omitempty"`
	Result   *Result   `json:"result,omitempty"`
}

// Progress is the body of a wire Progress message sent during a migration.
type Progress struct {
	Phase   string `json:"phase"`
	Message string `json:"message"`
}

// Client talks to the agent as an administrator.
type Client struct {
	c *wire.Conn
}

// Dial opens an administrator session on the agent socket at path.
func Dial(path string) (*Client, error) {
	c, err := wire.Dial(path)
	if err != nil {
		return nil, err
	}
	h := wire.Hello{MinVersion: wire.MinVersion, MaxVersion: wire.MaxVersion, Role: wire.RoleAdmin, Name: "handoffctl"}
	if err := c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeHello}, Body: h.Marshal()}); err != nil {
		c.Close()
		return nil, err
	}
	m, err := c.Recv()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("wait for the agent's welcome: %w", err)
	}
	m.CloseFDs()
	if m.Type == wire.TypeError {
		var f wire.Failure
		_ = f.Unmarshal(m.Body)
		c.Close()
		return nil, fmt.Errorf("agent refused the administrator session: %w", f)
	}
	var w wire.Welcome
	if m.Type != wire.TypeWelcome || w.Unmarshal(m.Body) != nil {
		c.Close()
		return nil, fmt.Errorf("agent answered %v: %w", m.Type, wire.ErrMalformed)
	}
	c.SetVersion(uint8(w.Version))
	return &Client{c: c}, nil
}

// Close ends the session.
func (c *Client) Close() error { return c.c.Close() }

// Do sends req and waits for its response, passing progress messages to
// progress (which may be nil).
func (c *Client) Do(req Request, progress func(Progress)) (*Response, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if err := c.c.Send(wire.Msg{Header: wire.Header{Type: wire.TypeRequest}, Body: body}); err != nil {
		return nil, err
	}
	for {
		m, err := c.c.Recv()
		if err != nil {
			return nil, fmt.Errorf("wait for the agent's answer to %s: %w", req.Op, err)
		}
		m.CloseFDs()
		switch m.Type {
		case wire.TypeProgress:
			var pr Progress
			if err := json.Unmarshal(m.Body, &pr); err == nil && progress != nil {
				progress(pr)
			}
		case wire.TypeResponse:
			var r Response
			if err := json.Unmarshal(m.Body, &r); err != nil {
				return nil, fmt.Errorf("decode the agent's answer: %w", err)
			}
			if r.Error != "" {
				return &r, errors.New(r.Error)
			}
			return &r, nil
		case wire.TypeError:
			var f wire.Failure
			_ = f.Unmarshal(m.Body)
			return nil, f
		default:
			return nil, fmt.Errorf("agent answered %v: %w", m.Type, wire.ErrMalformed)
		}
	}
}

// Sessions lists the agent's sessions and stored descriptors.
func (c *Client) Sessions() (*Response, error) { return c.Do(Request{Op: OpSessions}, nil) }

// WaitSession waits until the process pid has joined the agent and
// returns its session.
func (c *Client) WaitSession(pid int32, timeout time.Duration) (Session, error) {
	r, err := c.Do(Request{Op: OpWait, PID: pid, TimeoutMS: uint32(timeout / time.Millisecond)}, nil)
	if err != nil {
		return Session{}, err
	}
	if len(r.Sessions) != 1 {
		return Session{}, fmt.Errorf("agent answered wait with %d sessions: %w", len(r.Sessions), wire.ErrMalformed)
	}
	return r.Sessions[0], nil
}

// Migrate moves session from's sockets to session to and returns the
// outcome. A failed migration is a Result with Phase Failed, not an error;
// errors mean the request itself could not run.
func (c *Client) Migrate(req Request, progress func(Progress)) (*Result, error) {
	req.Op = OpMigrate
	r, err := c.Do(req, progress)
	if err != nil {
		if r != nil && r.Result != nil {
			return r.Result, err
		}
		return nil, err
	}
	if r.Result == nil {
		return nil, fmt.Errorf("agent answered migrate without a result: %w", wire.ErrMalformed)
	}
	return r.Result, nil
}
