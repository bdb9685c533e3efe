// Package handoff lets a network server hand its listening sockets and its
// established connections to a new process of itself, on the same host,
// without a client noticing more than a pause.
//
// The old process (the source) and the new one (the target) both talk to
// the handoff node agent over a unix socket. When the agent runs a
// migration, the source first sends a copy of every listening socket and
// tracked connection while it still serves (the pre-copy); the target
// holds the copies without touching them. Then the source stops
// accepting, stops the I/O of every tracked connection at a safe point,
// and sends one state record per connection (and the descriptors of
// connections tracked since the copy); the agent relays everything to the
// target; the target pairs the states with the copies it holds and says it
// is ready; the source closes its copies and the target carries on. Only
// the second half is a pause for the clients. (With an agent or a peer of
// protocol version 1 or 2, there is no pre-copy: descriptors and states
// both travel inside the pause.) Until the source commits,
// any failure (target crash, agent crash, deadline, EMFILE, a bad message)
// aborts: the target drops what it got and the source resumes exactly as
// before, because it never closed anything.
//
// # Using it
//
//	p, err := handoff.Join(ctx, handoff.Options{})
//	if err != nil { ... }                    // only for misuse; a missing agent is not an error
//	ln, err := p.Listen("tcp", ":8080")      // inherited if the old process handed one over
//	imported, err := p.Ready()               // target: returns once the old process let go
//	for _, ic := range imported {
//		go serveFrom(ic.Conn, ic.State)      // continue where the old process stopped
//	}
//	for {
//		c, err := ln.Accept()
//		...
//		t, _ := p.Track(c, handoff.Hooks{Freeze: ..., Resume: ..., Moved: ...})
//		go serve(c, t)
//	}
//	<-p.Done()                               // our sockets now belong to the new process: exit
//
// # Connections
//
// An application registers each connection it wants moved with Track and
// three hooks. Freeze is called when a migration starts: it must stop all
// reads and writes on the connection at a point where the connection's
// state can be written down, and return that state (including bytes read
// but not processed, and bytes produced but not yet written). It is called
// from SDK goroutines: one after another while hooks return at once, and
// concurrently once one has kept its goroutine waiting (the SDK then adds
// goroutines, so that the others are not frozen behind it). Freeze should
// be quick; a hook that waits stretches the pause. Connections are frozen
// in the order they were tracked, which keeps thousands of them close in
// memory. Freeze runs with the garbage collector held off (below), so what
// it allocates is fresh memory: a state buffer prepared while the
// connection is idle, as examples/streamer does, keeps that out of the
// pause too. After Freeze the application must not touch the connection
// until Resume (the migration aborted: carry on as if nothing happened) or
// Moved (the connection now lives in the new process: stop without closing
// it; the SDK closes this process's copy, which does not affect the
// socket). Never shut a moved connection down: shutdown acts on the socket,
// not on this process's copy.
//
// End a tracked connection with Tracked.Close, which shuts it down before
// closing it. During a pre-copy the new process holds a copy of the
// descriptor, and a plain close in this process would not end the
// connection (the kernel ends a socket when its last descriptor closes)
// until the migration drops that copy, a few milliseconds to the
// migration's deadline later. An application that closes connections
// itself must call CloseRead and CloseWrite (shutdown) first. Untrack
// keeps a connection in this process and open.
//
// When the agent restarts (a crash, an upgrade), the process keeps
// serving exactly as before and joins the new agent on its own, with a
// jittered backoff from 100 ms up to 5 s between attempts; a migration
// running at that moment is called off first, as for any lost agent. It
// is migratable again once it has joined (SessionID changes).
//
// A process stopped during a migration (SIGTERM from kubelet) may Close its
// Process and exit: before everything was exported the migration is called
// off; after, the new process (or the agent's store) keeps the sockets, as
// when the process exits.
//
// Descriptors are obtained through syscall.Conn's RawConn, never through
// File(), which would switch the socket to blocking mode.
//
// # Without an agent
//
// If the agent socket does not exist or refuses the session, Join logs one
// line and returns a Process that behaves like the plain net package:
// fresh sockets, no migrations. An application never depends on handoff to
// start.
//
// # Standby
//
// Unless Options.Standby is set, Join asks the agent whether a predecessor
// will hand its sockets over to this process (protocol version 2). Under
// Kubernetes the agent answers from the process's pod: wait when a
// Migration names the pod as its target, or when the pod waits for its
// handoff.dev/migrated readiness gate while an older pod of the same
// workload serves on the node (a DaemonSet's surge rollout). Standalone it
// answers start fresh. So an application needs one start mode. A process
// told to wait that receives nothing within StandbyTimeout logs so, joins
// again and serves fresh sockets.
//
// A new process started to receive a migration by hand sets
// Options.Standby: Join then waits until the agent hands it the sockets of
// another process (see handoffctl migrate) or until StandbyTimeout passes,
// and returns ErrStandbyTimeout then. A process that starts
// while the agent holds sockets stored for its name (the in-place restart
// case) receives them during Join whether or not it is in standby.
//
// Before it joins, a standby process prepares the memory it will need for
// Options.Expect connections (DefaultExpect unless set; about 300 bytes
// each, kept by the process) and touches every page of it. A process
// that has just started owns little memory, so without this nearly all
// it allocates while adopting thousands of connections is fresh pages,
// and on a virtual machine the first touch of a fresh page costs about
// ten microseconds, paid during the pause. Set Expect to the number of
// connections the old process typically holds; the memory has room for an
// eighth more (and 64), and connections beyond that still arrive, in
// fresh memory. The same holds for what the application does with the
// connections Ready returns: examples/streamer starts, while in standby,
// a goroutine with a grown stack for each connection it expects, which
// resumes thousands of connections in about half the time that starting
// their goroutines after the handoff takes.
//
// # The pause and the garbage collector
//
// While connections are frozen (on the source from Prepare until the
// migration is decided, on the target while it receives and during Ready)
// the package turns the garbage collector off with debug.SetGCPercent(-1)
// and restores the previous setting afterwards. A collection that starts
// then, which the export's own allocations tend to trigger, would scan
// every goroutine's stack while no client is served. A collection already
// running is finished before the connections are frozen. A memory limit
// (GOMEMLIMIT, debug.SetMemoryLimit) still applies throughout.
//
// The wire protocol is specified in docs/protocol.md; this package depends
// only on the standard library, golang.org/x/sys and two packages of this
// module, wire and internal/gchold.
package handoff
