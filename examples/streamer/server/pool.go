package server

import "sync"

// goPool is goroutines a standby process starts, with their stacks grown,
// before it receives a handoff, so that the connections it receives start
// on them. Starting thousands of goroutines after the handoff meant
// allocating and growing thousands of stacks in fresh memory, a page
// fault per 4 KiB: at 5000 connections the new process took about 400 ms
// to resume them all, and clients whose chunk fell due in that time waited
// for it; from the pool it takes 110-200 ms.
type goPool struct {
	ch   chan func()
	done sync.WaitGroup // one per worker, until it has run or been released

	mu     sync.Mutex // orders run's sends before close
	closed bool
}

// poolStack is the stack a worker waits on: the collector shrinks a
// stack that uses less than a quarter of itself, so the worker waits in a
// frame of this size, which keeps a stack of 8 KiB (what a connection's
// goroutine grows to) in use.
const poolStack = 5 << 10

// newGoPool starts n workers and returns once every one has grown its
// stack, so that none of that work overlaps a handoff; nil if n <= 0.
func newGoPool(n int) *goPool {
	if n <= 0 {
		return nil
	}
	p := &goPool{ch: make(chan func())}
	var grown sync.WaitGroup
	grown.Add(n)
	p.done.Add(n)
	for range n {
		go p.worker(&grown)
	}
	grown.Wait()
	return p
}

func (p *goPool) worker(grown *sync.WaitGroup) {
	defer p.done.Done()
	if f := waitDeep(p.ch, grown); f != nil {
		f()
	}
}

// waitDeep receives the worker's function from inside a frame of
// poolStack bytes: entering it grows the stack, and touching the frame
// makes its pages this process's now rather than during the handoff.
//
//go:noinline
func waitDeep(ch <-chan func(), grown *sync.WaitGroup) func() {
	var pad [poolStack]byte
	for i := 0; i < len(pad); i += 512 {
		pad[i] = 1
	}
	grown.Done()
	f, ok := <-ch
	if !ok || pad[len(pad)-1] != 0 { // the read keeps pad, and so the frame
		return nil
	}
	return f
}

// run runs f on a waiting worker and reports whether one was waiting; a
// nil pool has none.
func (p *goPool) run(f func()) bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	select {
	case p.ch <- f:
		return true
	default:
		return false
	}
}

// close releases the workers that are still waiting.
func (p *goPool) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.closed {
		p.closed = true
		close(p.ch)
	}
}
