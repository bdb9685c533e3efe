package handoff

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

var pageSize = uintptr(os.Getpagesize())

// populate maps the pages under the n bytes at p in one system call
// (MADV_POPULATE_WRITE, Linux 5.14), before the first writes would fault
// them in one by one. A target process is new: nearly everything it
// allocates while receiving thousands of connections is fresh memory, and
// on a virtual machine a page fault costs about ten times what the kernel
// takes to map the same page this way. On older kernels it does nothing.
func populate(p unsafe.Pointer, n uintptr) {
	if n < pageSize {
		return
	}
	start := uintptr(p) &^ (pageSize - 1)
	end := (uintptr(p) + n + pageSize - 1) &^ (pageSize - 1)
	_, _, _ = unix.Syscall(unix.SYS_MADVISE, start, end-start, unix.MADV_POPULATE_WRITE)
}

// makePopulated is make([]T, n, c) with its memory mapped by populate.
func makePopulated[T any](n, c int) []T {
	s := make([]T, n, c)
	if c > 0 {
		var zero T
		populate(unsafe.Pointer(unsafe.SliceData(s)), uintptr(c)*unsafe.Sizeof(zero))
	}
	return s
}
