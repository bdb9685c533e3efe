package handoff

import (
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// resident counts the pages wholly inside b that are in memory.
func resident(t *testing.T, b []byte) (in, all int) {
	t.Helper()
	p := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	skip := int((pageSize - p%pageSize) % pageSize)
	whole := (len(b) - skip) / int(pageSize) * int(pageSize)
	vec := make([]byte, whole/int(pageSize))
	if whole > 0 {
		if _, _, e := unix.Syscall(unix.SYS_MINCORE, p+uintptr(skip), uintptr(whole), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
			t.Fatalf("mincore: %v", e)
		}
	}
	for _, v := range vec {
		in += int(v & 1)
	}
	return in, len(vec)
}

// TestPopulateMapsPages checks that makePopulated returns memory whose
// pages are already mapped, where a plain make of the same size is not
// (fresh memory from the kernel).
func TestPopulateMapsPages(t *testing.T) {
	for i := range 5 {
		// Ever larger, so that the memory is fresh from the kernel.
		size := (1 << 20) << i
		if in, _ := resident(t, make([]byte, size)); in > 0 {
			continue // reused memory: nothing to compare with
		}
		in, all := resident(t, makePopulated[byte](size, size))
		if in != all {
			t.Fatalf("%d of %d pages of populated memory are mapped", in, all)
		}
		return
	}
	t.Skip("five allocations in a row reused mapped memory: cannot tell what populate did")
}
