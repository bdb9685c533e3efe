// Package testapp is a small server used by the tests of the fd path: it
// listens on TCP, a unix stream socket and UDP through the SDK, tracks every
// connection with a state record of a chosen size, and answers each one-byte
// request with what it knows about the connection, so a test can prove that
// a connection and its state arrived intact in another process. The request
// byte 'c' asks it to end the connection instead (Tracked.Close).
package testapp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	handoff "github.com/handoff-dev/handoff/sdk"
)

// Config says what the app listens on.
type Config struct {
	Socket, Name string
	Standby      bool
	TCP          string // e.g. "127.0.0.1:0"; empty: none
	Unix         string // path; empty: none
	UDP          string // e.g. "127.0.0.1:0"; empty: none
	// StateSize is the size of the state record of connection id.
	StateSize func(id uint64) int
	// HoldFreeze, when not 0, is the id of the connection whose Freeze
	// hook waits until HoldUntil other Freeze hooks have started, and
	// fails after 10 s: a hook that blocks must not hold up the freezing
	// of the other connections.
	HoldFreeze uint64
	HoldUntil  int
	// Ready is called with the bound addresses once serving.
	Ready func(tcp, unix, udp net.Addr, imported int)
	Logf  func(string, ...any)
}

// Pattern is the state record content of connection id: deterministic, so
// the importing side can check it.
func Pattern(id uint64, size int) []byte {
	b := make([]byte, size)
	x := uint32(id)*2654435761 + 1
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = byte(x)
	}
	return b
}

// Reply is the answer to a request.
type Reply struct {
	ID, Count uint64
	StateLen  uint32
	StateCRC  uint32
	PID       uint32
	StateOK   bool
}

// ReplyLen is the size of an encoded Reply.
const ReplyLen = 8 + 8 + 4 + 4 + 4 + 1

// DecodeReply parses a reply.
func DecodeReply(b []byte) Reply {
	return Reply{
		ID: binary.LittleEndian.Uint64(b), Count: binary.LittleEndian.Uint64(b[8:]),
		StateLen: binary.LittleEndian.Uint32(b[16:]), StateCRC: binary.LittleEndian.Uint32(b[20:]),
		PID: binary.LittleEndian.Uint32(b[24:]), StateOK: b[28] == 1,
	}
}

type conn struct {
	c      net.Conn
	id     uint64
	count  uint64
	state  []byte
	ok     bool
	ctl    chan chan []byte
	resume chan bool // true: resume, false: moved
	done   chan struct{}
}

// Run serves until ctx ends or the sockets move away.
func Run(ctx context.Context, cfg Config) error {
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	gate := &holdGate{released: make(chan struct{})}
	p, err := handoff.Join(ctx, handoff.Options{Socket: cfg.Socket, Name: cfg.Name, Standby: cfg.Standby, Logf: logf})
	if err != nil {
		return err
	}
	var lns []net.Listener
	var addrs [3]net.Addr
	if cfg.TCP != "" {
		ln, err := p.Listen("tcp", cfg.TCP)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		addrs[0] = ln.Addr()
	}
	if cfg.Unix != "" {
		ln, err := p.Listen("unix", cfg.Unix)
		if err != nil {
			return err
		}
		lns = append(lns, ln)
		addrs[1] = ln.Addr()
	}
	var pc net.PacketConn
	if cfg.UDP != "" {
		if pc, err = p.ListenPacket("udp", cfg.UDP); err != nil {
			return err
		}
		addrs[2] = pc.LocalAddr()
	}
	imported, err := p.Ready()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	for _, ic := range imported {
		c := &conn{c: ic.Conn}
		if len(ic.State) >= 16 {
			c.id = binary.LittleEndian.Uint64(ic.State)
			c.count = binary.LittleEndian.Uint64(ic.State[8:])
			c.state = ic.State[16:]
			size := len(c.state)
			if cfg.StateSize != nil {
				size = cfg.StateSize(c.id)
			}
			c.ok = len(c.state) == size && string(c.state) == string(Pattern(c.id, size))
		}
		start(p, c, &wg, false, cfg, gate)
	}
	for _, ln := range lns {
		go func() {
			for {
				nc, err := ln.Accept()
				if err != nil {
					return
				}
				start(p, &conn{c: nc}, &wg, true, cfg, gate)
			}
		}()
	}
	if pc != nil {
		go func() {
			buf := make([]byte, 2048)
			for {
				n, a, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				out := fmt.Appendf(nil, "%d:", os.Getpid())
				pc.WriteTo(append(out, buf[:n]...), a)
			}
		}()
	}
	if cfg.Ready != nil {
		cfg.Ready(addrs[0], addrs[1], addrs[2], len(imported))
	}
	select {
	case <-ctx.Done():
	case <-p.Done():
	}
	wg.Wait()
	return nil
}

// holdGate counts Freeze hooks for Config.HoldFreeze.
type holdGate struct {
	calls    atomic.Int64
	released chan struct{}
}

func (g *holdGate) called(until int) {
	if g.calls.Add(1) == int64(until)+1 {
		close(g.released)
	}
}

func start(p *handoff.Process, c *conn, wg *sync.WaitGroup, fresh bool, cfg Config, gate *holdGate) {
	c.ctl = make(chan chan []byte)
	c.resume = make(chan bool)
	c.done = make(chan struct{})
	t, err := p.Track(c.c, handoff.Hooks{
		Freeze: func() ([]byte, error) {
			gate.called(cfg.HoldUntil)
			reply := make(chan []byte, 1)
			select {
			case c.ctl <- reply:
			case <-c.done:
				return nil, handoff.ErrSkip
			}
			c.c.SetReadDeadline(time.Unix(1, 0))
			st := <-reply
			if cfg.HoldFreeze != 0 && c.id == cfg.HoldFreeze {
				select {
				case <-gate.released:
				case <-time.After(10 * time.Second):
					c.resume <- true // not frozen after all
					return nil, fmt.Errorf("freeze of connection %d held 10s: only %d other hooks started, want %d",
						c.id, gate.calls.Load()-1, cfg.HoldUntil)
				}
			}
			return st, nil
		},
		Resume: func() { c.resume <- true },
		Moved:  func() { c.resume <- false },
	})
	if err != nil {
		c.c.Close()
		return
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(c.done)
		if fresh {
			var idb [8]byte
			if _, err := io.ReadFull(c.c, idb[:]); err != nil {
				t.Close()
				return
			}
			c.id = binary.LittleEndian.Uint64(idb[:])
			size := 0
			if cfg.StateSize != nil {
				size = cfg.StateSize(c.id)
			}
			c.state = Pattern(c.id, size)
			c.ok = true
		}
		// Reads happen in this goroutine; a freeze request interrupts
		// them with a deadline.
		req := make([]byte, 1)
		var pendingFreeze chan []byte
		readErr := make(chan error, 1)
		reading := false
		for {
			if !reading {
				reading = true
				go func() {
					_, err := io.ReadFull(c.c, req)
					readErr <- err
				}()
			}
			select {
			case pendingFreeze = <-c.ctl:
				// Wait for the read to be interrupted or finish.
				err := <-readErr
				reading = false
				if err == nil {
					c.count++
					c.c.SetReadDeadline(time.Time{})
					c.c.Write(c.reply())
				}
				st := make([]byte, 16, 16+len(c.state))
				binary.LittleEndian.PutUint64(st, c.id)
				binary.LittleEndian.PutUint64(st[8:], c.count)
				pendingFreeze <- append(st, c.state...)
				if !<-c.resume {
					return
				}
				c.c.SetReadDeadline(time.Time{})
			case err := <-readErr:
				reading = false
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						continue
					}
					t.Close()
					return
				}
				if req[0] == 'c' {
					// The client asks the server to end the connection.
					t.Close()
					return
				}
				c.count++
				if _, err := c.c.Write(c.reply()); err != nil {
					t.Close()
					return
				}
			}
		}
	}()
}

func (c *conn) reply() []byte {
	b := make([]byte, ReplyLen)
	binary.LittleEndian.PutUint64(b, c.id)
	binary.LittleEndian.PutUint64(b[8:], c.count)
	binary.LittleEndian.PutUint32(b[16:], uint32(len(c.state)))
	binary.LittleEndian.PutUint32(b[20:], crc32.ChecksumIEEE(c.state))
	binary.LittleEndian.PutUint32(b[24:], uint32(os.Getpid()))
	if c.ok {
		b[28] = 1
	}
	return b
}
