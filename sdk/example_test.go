package handoff_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"path/filepath"
	"time"

	handoff "github.com/handoff-dev/handoff/sdk"
)

// A process joins, listens and says it is ready. Without an agent (here the
// socket does not exist) it simply serves with fresh sockets.
func ExampleJoin() {
	p, err := handoff.Join(context.Background(), handoff.Options{
		Socket: filepath.Join(os.TempDir(), "no-agent-here.sock"),
		Logf:   func(string, ...any) {}, // quiet for the example
	})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := p.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer ln.Close()
	imported, err := p.Ready()
	fmt.Println("available:", p.Available(), "inherited:", p.Inherited(), "imported:", len(imported), "err:", err)
	// Output: available: false inherited: false imported: 0 err: <nil>
}

// counter is a connection whose state is how many lines it has served.
type counter struct {
	c       net.Conn
	served  uint64
	freeze  chan chan []byte
	outcome chan bool // true: moved, false: resume
	done    chan struct{}
}

// serve handles requests until the connection ends, answering freeze
// requests between two requests: a safe point, since no request is half
// read or half answered there.
func (k *counter) serve(t *handoff.Tracked) {
	defer close(k.done)
	buf := make([]byte, 1)
	for {
		k.c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
		_, err := io.ReadFull(k.c, buf)
		if err == nil {
			k.served++
			k.c.Write(binary.AppendUvarint(nil, k.served))
			continue
		}
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			t.Untrack()
			k.c.Close()
			return
		}
		select {
		case reply := <-k.freeze:
			reply <- binary.AppendUvarint(nil, k.served)
			if <-k.outcome {
				return // moved: the new process serves it; do not close it
			}
		default:
		}
	}
}

// Tracking a connection: the hooks hand a freeze request to the goroutine
// that serves the connection and wait for its state.
func ExampleProcess_Track() {
	p, err := handoff.Join(context.Background(), handoff.Options{})
	if err != nil {
		log.Fatal(err)
	}
	ln, err := p.Listen("tcp", ":7070")
	if err != nil {
		log.Fatal(err)
	}
	imported, err := p.Ready()
	if err != nil {
		log.Fatal(err)
	}
	start := func(c net.Conn, served uint64) {
		k := &counter{c: c, served: served, freeze: make(chan chan []byte), outcome: make(chan bool, 1), done: make(chan struct{})}
		t, err := p.Track(c, handoff.Hooks{
			Freeze: func() ([]byte, error) {
				reply := make(chan []byte, 1)
				select {
				case k.freeze <- reply:
					return <-reply, nil
				case <-k.done:
					return nil, handoff.ErrSkip // the connection already ended
				}
			},
			Resume: func() { k.outcome <- false },
			Moved:  func() { k.outcome <- true },
		})
		if err != nil {
			c.Close()
			return
		}
		go k.serve(t)
	}
	for _, ic := range imported {
		served, _ := binary.Uvarint(ic.State)
		start(ic.Conn, served)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			start(c, 0)
		}
	}()
	<-p.Done() // every socket now belongs to the new process
}
