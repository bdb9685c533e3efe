package wire

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// NewStateMemfd returns a sealed memfd holding data. Sealing (no write,
// shrink or grow) lets the receiver trust the size it reads.
func NewStateMemfd(data []byte) (int, error) {
	fd, err := unix.MemfdCreate("handoff-state", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd_create: %w", err)
	}
	for off := 0; off < len(data); {
		n, err := unix.Pwrite(fd, data[off:], int64(off))
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("write state memfd: %w", err)
		}
		off += n
	}
	seals := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("seal state memfd: %w", err)
	}
	return fd, nil
}

// ReadStateMemfd reads exactly want bytes from a received state memfd. It
// refuses a file that is not sealed against writes and resizing, or of
// another size. It does not close fd.
func ReadStateMemfd(fd int, want uint64) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("stat state memfd: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("state memfd: %w: not a regular file (mode %#o)", ErrMalformed, st.Mode)
	}
	// Without these seals the sender could still grow, shrink or rewrite
	// the file while we read it, and the size just checked would mean
	// nothing.
	const need = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return nil, fmt.Errorf("state memfd: %w: cannot read its seals: %v", ErrMalformed, err)
	}
	if seals&need != need {
		return nil, fmt.Errorf("state memfd: %w: not sealed against writes and resizing (seals %#x)", ErrMalformed, seals)
	}
	if uint64(st.Size) != want {
		return nil, fmt.Errorf("state memfd: %w: %d bytes, batch announces %d", ErrMalformed, st.Size, want)
	}
	buf := make([]byte, want)
	for off := 0; off < len(buf); {
		n, err := unix.Pread(fd, buf[off:], int64(off))
		if err != nil {
			return nil, fmt.Errorf("read state memfd: %w", err)
		}
		if n == 0 {
			return nil, fmt.Errorf("read state memfd: %w: short file", ErrMalformed)
		}
		off += n
	}
	return buf, nil
}

// SplitStates cuts a memfd's contents into the entries' state records.
func SplitStates(bi *BatchInfo, all []byte) {
	off := 0
	for i := range bi.Entries {
		n := int(bi.StateLens[i])
		bi.Entries[i].State = all[off : off+n : off+n]
		off += n
	}
}

// Monotonic is CLOCK_MONOTONIC in nanoseconds: the clock every process on
// the host shares, so timestamps from source and target can be subtracted.
func Monotonic() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
