package nodeagent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/wire"
)

// The agent under systemd (docs/protocol.md, section 17): it says
// READY=1 once it listens, and keeps what a crash or a restart must not
// lose in systemd's fd store — its listening socket, and every fd-store
// entry's descriptors with a sealed memfd describing the entry. On start,
// systemd passes them back (LISTEN_FDS), and the agent takes the listener
// and rebuilds the entries. Only the standard library and x/sys: the
// sd_notify protocol is one datagram per message.

// Names in systemd's fd store (FDNAME=; at most 255 characters, no ':').
const (
	sdListenerName = "handoff-listener"
	sdMetaPrefix   = "handoff-meta-" // + entry id: the entry's description
	sdFDsPrefix    = "handoff-fds-"  // + entry id: the entry's descriptors
)

// sdMetaMagic opens an entry's description; sdMetaVersion is its format.
const (
	sdMetaMagic   = "HOFFSTOR"
	sdMetaVersion = 1
)

// Systemd is the agent's link to systemd, from the environment systemd
// gives a service: NOTIFY_SOCKET for sd_notify, and LISTEN_PID,
// LISTEN_FDS and LISTEN_FDNAMES for the descriptors of its fd store.
type Systemd struct {
	notify string // NOTIFY_SOCKET; "" if systemd does not listen
	// inherited are the descriptors systemd passed, by name, in order.
	inherited map[string][]int

	mu     sync.Mutex
	nextID uint64
}

// SystemdFromEnv reads the environment systemd sets and unsets it, so
// that no child inherits it. It returns nil outside systemd.
func SystemdFromEnv() *Systemd {
	sd := &Systemd{notify: os.Getenv("NOTIFY_SOCKET"), inherited: map[string][]int{}}
	pid, _ := strconv.Atoi(os.Getenv("LISTEN_PID"))
	n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	if pid == os.Getpid() {
		for i := range n {
			fd := 3 + i
			unix.CloseOnExec(fd)
			name := "unknown"
			if i < len(names) && names[i] != "" {
				name = names[i]
			}
			sd.inherited[name] = append(sd.inherited[name], fd)
		}
	}
	for _, k := range []string{"NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(k)
	}
	if sd.notify == "" && len(sd.inherited) == 0 {
		return nil
	}
	return sd
}

// send sends one sd_notify datagram with fds attached.
func (sd *Systemd) send(state string, fds []int) error {
	if sd == nil || sd.notify == "" {
		return nil
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("notify socket: %w", err)
	}
	defer unix.Close(s)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(s, []byte(state), oob, &unix.SockaddrUnix{Name: sd.notify}, 0); err != nil {
		return fmt.Errorf("notify systemd at %s: %w", sd.notify, err)
	}
	return nil
}

// ready tells systemd the agent serves.
func (sd *Systemd) ready(socket string) error {
	return sd.send("READY=1\nSTATUS=serving "+socket, nil)
}

// store puts fds into systemd's fd store under name, in datagrams of at
// most wire.MaxFDs descriptors. FDPOLL=0: a stored connection whose
// client hung up stays, so that an entry stays whole.
func (sd *Systemd) store(name string, fds []int) error {
	for len(fds) > 0 {
		n := min(len(fds), wire.MaxFDs)
		if err := sd.send("FDSTORE=1\nFDPOLL=0\nFDNAME="+name, fds[:n]); err != nil {
			return fmt.Errorf("store %d descriptors as %s: %w", n, name, err)
		}
		fds = fds[n:]
	}
	return nil
}

// remove drops every descriptor named name from systemd's fd store.
func (sd *Systemd) remove(name string) error {
	return sd.send("FDSTOREREMOVE=1\nFDNAME="+name, nil)
}

// takeListener returns the inherited listening socket, or -1.
func (sd *Systemd) takeListener() int {
	if sd == nil {
		return -1
	}
	fds := sd.inherited[sdListenerName]
	delete(sd.inherited, sdListenerName)
	if len(fds) == 0 {
		return -1
	}
	wire.CloseAll(fds[1:])
	return fds[0]
}

// entryID names a new entry in systemd's store, unique across restarts.
func (sd *Systemd) entryID() string {
	sd.mu.Lock()
	defer sd.mu.Unlock()
	sd.nextID++
	return strconv.FormatInt(time.Now().UnixNano(), 36) + "-" + strconv.FormatUint(sd.nextID, 36)
}

// pushEntry stores e in systemd's fd store: a sealed memfd describing it
// (its key, hold, summary and batches, each descriptor by device and
// inode), and its descriptors.
func (a *Agent) pushEntry(e *stored) {
	sd := a.cfg.Systemd
	if sd == nil || sd.notify == "" {
		return
	}
	id := sd.entryID()
	meta, err := encodeEntryMeta(e)
	if err == nil {
		var fd int
		if fd, err = wire.NewStateMemfd(meta); err == nil {
			err = sd.store(sdMetaPrefix+id, []int{fd})
			unix.Close(fd)
		}
	}
	if err == nil {
		var fds []int
		for _, b := range e.batches {
			fds = append(fds, b.FDs...)
		}
		err = sd.store(sdFDsPrefix+id, fds)
	}
	if err != nil {
		a.log.Error(err, "could not keep a store entry in systemd's fd store: a crash of the agent would lose it", "name", e.key.name)
		a.unpushEntry(id)
		return
	}
	a.mu.Lock()
	e.sdID = id
	a.mu.Unlock()
}

// unpushEntry drops an entry from systemd's fd store.
func (a *Agent) unpushEntry(id string) {
	sd := a.cfg.Systemd
	if sd == nil || id == "" {
		return
	}
	if err := errors.Join(sd.remove(sdMetaPrefix+id), sd.remove(sdFDsPrefix+id)); err != nil {
		a.log.Error(err, "could not drop a store entry from systemd's fd store", "id", id)
	}
}

// forgetSystemd drops e from systemd's fd store once it was claimed or
// expired. An agent shutting down keeps it there: the next one rebuilds
// it.
func (a *Agent) forgetSystemd(e *stored) {
	a.mu.Lock()
	id, closed := e.sdID, a.closed && !a.handedOver
	e.sdID = ""
	a.mu.Unlock()
	if !closed {
		a.unpushEntry(id)
	}
}

// pushListener keeps the agent's listening socket in systemd's fd store,
// so that a restarted agent accepts on the very same socket.
func (a *Agent) pushListener() {
	sd := a.cfg.Systemd
	if sd == nil || sd.notify == "" {
		return
	}
	rc, err := a.ln.SyscallConn()
	if err == nil {
		var serr error
		err = rc.Control(func(fd uintptr) { serr = sd.store(sdListenerName, []int{int(fd)}) })
		err = errors.Join(err, serr)
	}
	if err != nil {
		a.log.Error(err, "could not keep the listening socket in systemd's fd store")
		return
	}
	a.keepListener()
}

// keepListener marks the listener as kept in systemd's store: the path is
// the next agent's, and stays when this one stops.
func (a *Agent) keepListener() {
	a.ln.SetUnlinkOnClose(false)
	a.mu.Lock()
	a.sdListener = true
	a.mu.Unlock()
}

// listenFromSystemd takes the listener systemd kept, if it did. A
// listener bound elsewhere (the socket path changed) is dropped from the
// store and closed.
func (a *Agent) listenFromSystemd() bool {
	fd := a.cfg.Systemd.takeListener()
	if fd < 0 {
		return false
	}
	ln, err := listenerFromFD(fd, a.cfg.Socket)
	if err == nil {
		if _, serr := os.Stat(a.cfg.Socket); serr != nil {
			ln.Close()
			err = fmt.Errorf("socket path %s of the listener systemd kept: %w", a.cfg.Socket, serr)
		}
	}
	if err != nil {
		a.log.Error(err, "not using the listener systemd kept; listening afresh")
		if rerr := a.cfg.Systemd.remove(sdListenerName); rerr != nil {
			a.log.Error(rerr, "could not drop the old listener from systemd's fd store")
		}
		return false
	}
	a.ln = ln
	a.keepListener()
	a.log.Info("took the listening socket systemd kept", "socket", a.cfg.Socket)
	return true
}

// rebuildFromSystemd rebuilds the store entries systemd kept: each from
// its description and its descriptors, matched by device and inode. An
// entry that is incomplete, undecodable or expired is closed and dropped
// from systemd's store.
func (a *Agent) rebuildFromSystemd() {
	sd := a.cfg.Systemd
	if sd == nil {
		return
	}
	for name, metaFDs := range sd.inherited {
		id, ok := strings.CutPrefix(name, sdMetaPrefix)
		if !ok {
			continue
		}
		fds := sd.inherited[sdFDsPrefix+id]
		delete(sd.inherited, name)
		delete(sd.inherited, sdFDsPrefix+id)
		e, err := decodeEntry(metaFDs, fds)
		wire.CloseAll(metaFDs)
		if err == nil && time.Until(e.expires) <= 0 {
			err = fmt.Errorf("its hold ended at %s", e.expires.Format(time.RFC3339))
			for i := range e.batches {
				e.batches[i].CloseFDs()
			}
		}
		if err != nil {
			a.log.Error(err, "dropping a store entry systemd kept", "id", id)
			a.unpushEntry(id)
			continue
		}
		e.sdID = id
		a.mu.Lock()
		a.m.storedFDs.Add(float64(e.fds()))
		a.holdLocked(e)
		a.mu.Unlock()
		a.log.Info("rebuilt a store entry systemd kept", "name", e.key.name, "uid", e.key.uid, "listeners", e.sum.Listeners,
			"connections", e.sum.Conns, "packets", e.sum.Packets, "hold", time.Until(e.expires).Round(time.Millisecond).String())
	}
	// Descriptors without a description: a store interrupted mid-push.
	for name, fds := range sd.inherited {
		wire.CloseAll(fds)
		if id, ok := strings.CutPrefix(name, sdFDsPrefix); ok {
			a.log.Info("dropping descriptors systemd kept without their description", "id", id, "descriptors", len(fds))
			a.unpushEntry(id)
		}
	}
	sd.inherited = map[string][]int{}
}

// encodeEntryMeta describes e for systemd's store: format version, key,
// hold, summary, and each batch's flags, seq, body and descriptors (by
// device and inode, since systemd keeps no order).
func encodeEntryMeta(e *stored) ([]byte, error) {
	b := []byte(sdMetaMagic)
	b = binary.LittleEndian.AppendUint16(b, sdMetaVersion)
	str := func(s string) {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	str(e.key.name)
	b = binary.LittleEndian.AppendUint32(b, e.key.uid)
	str(e.key.pod)
	b = binary.LittleEndian.AppendUint64(b, uint64(e.expires.UnixNano()))
	b = binary.LittleEndian.AppendUint64(b, uint64(e.hold))
	sum := e.sum.Marshal()
	b = binary.LittleEndian.AppendUint16(b, uint16(len(sum)))
	b = append(b, sum...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(e.batches)))
	for _, m := range e.batches {
		b = binary.LittleEndian.AppendUint16(b, m.Flags)
		b = binary.LittleEndian.AppendUint32(b, m.Seq)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(m.Body)))
		b = append(b, m.Body...)
		b = binary.LittleEndian.AppendUint16(b, uint16(len(m.FDs)))
		for _, fd := range m.FDs {
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				return nil, fmt.Errorf("describe store entry %q: stat descriptor %d: %w", e.key.name, fd, err)
			}
			b = binary.LittleEndian.AppendUint64(b, st.Dev)
			b = binary.LittleEndian.AppendUint64(b, st.Ino)
		}
	}
	return b, nil
}

// decodeEntry rebuilds an entry from its description (one memfd) and its
// descriptors, which it takes: they go into the entry's batches, or are
// closed.
func decodeEntry(metaFDs, fds []int) (e *stored, err error) {
	defer func() {
		if err != nil {
			wire.CloseAll(fds)
		}
	}()
	if len(metaFDs) != 1 {
		return nil, fmt.Errorf("%d descriptions, want 1", len(metaFDs))
	}
	var st unix.Stat_t
	if err := unix.Fstat(metaFDs[0], &st); err != nil {
		return nil, fmt.Errorf("stat description: %w", err)
	}
	b, err := wire.ReadStateMemfd(metaFDs[0], uint64(st.Size))
	if err != nil {
		return nil, fmt.Errorf("read description: %w", err)
	}
	d := metaDec{b: b}
	if string(d.take(len(sdMetaMagic))) != sdMetaMagic {
		return nil, fmt.Errorf("description: bad magic")
	}
	if v := d.u16(); v != sdMetaVersion {
		return nil, fmt.Errorf("description of format %d, this agent reads %d", v, sdMetaVersion)
	}
	e = &stored{}
	e.key.name = d.str()
	e.key.uid = d.u32()
	e.key.pod = d.str()
	e.expires = time.Unix(0, int64(d.u64()))
	e.hold = time.Duration(d.u64())
	if err := e.sum.Unmarshal(d.take(int(d.u16()))); err != nil && d.err == nil {
		return nil, fmt.Errorf("description of %q: %w", e.key.name, err)
	}
	// The descriptors by device and inode: systemd keeps no order.
	type devIno struct{ dev, ino uint64 }
	byID := make(map[devIno]int, len(fds))
	for _, fd := range fds {
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, fmt.Errorf("stat descriptor %d of %q: %w", fd, e.key.name, err)
		}
		byID[devIno{st.Dev, st.Ino}] = fd
	}
	var rc relayCounter
	nb := d.u32()
	for i := uint32(0); i < nb && d.err == nil; i++ {
		m := wire.Msg{}
		m.Type = wire.TypeBatch
		m.Flags, m.Seq = d.u16(), d.u32()
		m.Body = append([]byte(nil), d.take(int(d.u32()))...)
		nfd := int(d.u16())
		for range nfd {
			k := devIno{d.u64(), d.u64()}
			fd, ok := byID[k]
			if !ok {
				if d.err == nil {
					d.err = fmt.Errorf("descriptor %d:%d of batch %d is missing", k.dev, k.ino, m.Seq)
				}
				break
			}
			delete(byID, k)
			m.FDs = append(m.FDs, fd)
		}
		if d.err == nil {
			if cerr := rc.checkBatch(m); cerr != nil {
				d.err = cerr
			}
		}
		m.NFDs = uint16(len(m.FDs))
		m.BodyLen = uint32(len(m.Body))
		e.batches = append(e.batches, m)
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err == nil {
		d.err = rc.matches(e.sum)
	}
	if d.err != nil {
		// The descriptors already placed in batches are among fds, closed
		// by the deferred CloseAll.
		return nil, fmt.Errorf("rebuild %q: %w", e.key.name, d.err)
	}
	for _, fd := range byID {
		unix.Close(fd) // stored twice, or left over: not the entry's
	}
	return e, nil
}

// metaDec reads an entry description; the first overrun sticks as err.
type metaDec struct {
	b   []byte
	err error
}

func (d *metaDec) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.err = fmt.Errorf("description truncated: need %d bytes, %d left", n, len(d.b))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *metaDec) u16() uint16 {
	if v := d.take(2); v != nil {
		return binary.LittleEndian.Uint16(v)
	}
	return 0
}

func (d *metaDec) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (d *metaDec) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

func (d *metaDec) str() string { return string(d.take(int(d.u16()))) }
