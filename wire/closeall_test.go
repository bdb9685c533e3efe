package wire

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCloseAll checks that CloseAll closes exactly the listed descriptors,
// with close_range over runs of consecutive numbers and close otherwise,
// and never one that lies between two listed runs.
func TestCloseAll(t *testing.T) {
	for _, tc := range []struct {
		name       string
		closeRange bool
	}{{"close_range", true}, {"one by one", false}} {
		t.Run(tc.name, func(t *testing.T) {
			saved := noCloseRange.Load()
			noCloseRange.Store(!tc.closeRange)
			t.Cleanup(func() { noCloseRange.Store(saved) })

			base := freeBlock(t, 12)
			src, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(src)
			for i := range 12 {
				if err := unix.Dup3(src, base+i, unix.O_CLOEXEC); err != nil {
					t.Fatal(err)
				}
			}
			t.Cleanup(func() {
				for i := range 12 {
					unix.Close(base + i)
				}
			})
			// Runs 0-2 and 4-5, a -1, a lone 7, 3 out of order, 9-10.
			list := []int{base, base + 1, base + 2, base + 4, base + 5, -1, base + 7, base + 3, base + 9, base + 10}
			keep := []int{base + 6, base + 8, base + 11}
			CloseAll(list)
			for _, fd := range list {
				if fd >= 0 && isOpen(t, fd) {
					t.Errorf("descriptor %d (base+%d) is still open", fd, fd-base)
				}
			}
			for _, fd := range keep {
				if !isOpen(t, fd) {
					t.Errorf("descriptor %d (base+%d) was closed but not listed", fd, fd-base)
				}
			}
			if tc.closeRange && noCloseRange.Load() {
				t.Log("this kernel refused close_range; CloseAll fell back to close")
			}
		})
	}
}

// freeBlock finds n consecutive unused descriptor numbers.
func freeBlock(t *testing.T, n int) int {
	t.Helper()
	for base := 512; base < 4096; base += n {
		free := true
		for i := range n {
			if isOpen(t, base+i) {
				free = false
				break
			}
		}
		if free {
			return base
		}
	}
	t.Fatalf("no %d consecutive free descriptor numbers", n)
	return -1
}

func isOpen(t *testing.T, fd int) bool {
	t.Helper()
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil && !errors.Is(err, unix.EBADF) {
		t.Fatalf("fcntl %d: %v", fd, err)
	}
	return err == nil
}
