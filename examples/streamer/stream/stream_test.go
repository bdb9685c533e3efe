package stream

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// reference builds the first n bytes of stream name the slow, obvious way.
func reference(name string, n int) []byte {
	var out []byte
	for k := 0; len(out) < n; k++ {
		d := sha256.Sum256([]byte(fmt.Sprintf("%s:%d", name, k)))
		out = append(out, d[:]...)
	}
	return out[:n]
}

func TestFillKnownVector(t *testing.T) {
	want := sha256.Sum256([]byte("a:0"))
	got := make([]byte, 32)
	Fill("a", 0, got)
	if !bytes.Equal(got, want[:]) {
		t.Fatalf("Fill(a, 0) = %x, want %x", got, want)
	}
	// Computed outside Go (sha256sum), so both sides cannot be wrong alike.
	if h := hex.EncodeToString(got); h != "0ed32d3352f0cddd88b03a266c387e1a4683d5356ce381463b4b42cf9ccadfaf" {
		t.Fatalf("Fill(a, 0) = %s, want the sha256sum of \"a:0\"", h)
	}
	want1 := sha256.Sum256([]byte("a:1"))
	Fill("a", 32, got)
	if !bytes.Equal(got, want1[:]) {
		t.Fatalf("Fill(a, 32) = %x, want %x", got, want1)
	}
}

func TestFillUnaligned(t *testing.T) {
	for _, name := range []string{"a", "stream-42", strings.Repeat("x", 300)} {
		ref := reference(name, 4096)
		for _, off := range []int{0, 1, 5, 31, 32, 33, 63, 64, 100, 1000, 4000} {
			for _, n := range []int{0, 1, 2, 31, 32, 33, 64, 95, 96} {
				if off+n > len(ref) {
					continue
				}
				got := make([]byte, n)
				Fill(name, int64(off), got)
				if !bytes.Equal(got, ref[off:off+n]) {
					t.Fatalf("Fill(%.10q, %d, [%d]) = %x, want %x", name, off, n, got, ref[off:off+n])
				}
			}
		}
	}
}

func TestFillLargeK(t *testing.T) {
	const k = 123456789012
	want := sha256.Sum256([]byte(fmt.Sprintf("big:%d", k)))
	got := make([]byte, 10)
	Fill("big", k*32+7, got)
	if !bytes.Equal(got, want[7:17]) {
		t.Fatalf("got %x, want %x", got, want[7:17])
	}
}

func TestVerifierAccepts(t *testing.T) {
	ref := reference("s1", 5000)
	v := NewVerifier("s1", 0)
	// Feed in irregular pieces.
	for i, step := 0, 1; i < len(ref); step = step*3%97 + 1 {
		j := min(i+step, len(ref))
		if err := v.Check(ref[i:j]); err != nil {
			t.Fatalf("Check at %d: %v", i, err)
		}
		i = j
	}
	if v.Offset() != int64(len(ref)) {
		t.Fatalf("Offset = %d, want %d", v.Offset(), len(ref))
	}
	// Starting mid-stream.
	v = NewVerifier("s1", 77)
	if err := v.Check(ref[77:500]); err != nil {
		t.Fatal(err)
	}
}

func TestVerifierDetects(t *testing.T) {
	ref := reference("s2", 1000)
	cases := []struct {
		name    string
		data    []byte
		wantOff int64
	}{
		{"flipped", flip(ref[:300], 123), 123},
		{"lost", append(append([]byte{}, ref[:50]...), ref[51:200]...), 50},
		{"duplicated", append(append([]byte{}, ref[:64]...), ref[32:200]...), 64 + firstDiff(ref[64:], ref[32:])},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := NewVerifier("s2", 0)
			err := v.Check(tc.data)
			var me *MismatchError
			if !errors.As(err, &me) {
				t.Fatalf("Check = %v, want *MismatchError", err)
			}
			if me.Offset != tc.wantOff || me.Stream != "s2" || me.Expected != ref[tc.wantOff] || me.Got != tc.data[tc.wantOff] {
				t.Fatalf("got %+v, want offset %d", me, tc.wantOff)
			}
			if !strings.Contains(err.Error(), `"s2"`) || !strings.Contains(err.Error(), fmt.Sprint(tc.wantOff)) {
				t.Fatalf("message %q lacks stream or offset", err)
			}
			if v.Offset() != int64(len(tc.data)) {
				t.Fatalf("Offset = %d after mismatch, want %d", v.Offset(), len(tc.data))
			}
		})
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte{}, b...)
	c[i] ^= 0x01
	return c
}

func firstDiff(a, b []byte) int64 {
	for i := range a {
		if a[i] != b[i] {
			return int64(i)
		}
	}
	return -1
}

func TestFillNoAllocs(t *testing.T) {
	buf := make([]byte, 1638)
	v := NewVerifier("bench", 0)
	allocs := testing.AllocsPerRun(100, func() {
		Fill("bench", 12345, buf)
		v.off, v.cached = 12345, -1
		if err := v.Check(buf); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Fill+Check allocate %.1f times per run, want 0", allocs)
	}
}

func BenchmarkFill(b *testing.B) {
	buf := make([]byte, 16384)
	b.SetBytes(int64(len(buf)))
	var off int64
	for b.Loop() {
		Fill("bench-stream-1", off, buf)
		off += int64(len(buf))
	}
}

func BenchmarkCheck(b *testing.B) {
	buf := make([]byte, 16384)
	Fill("bench-stream-1", 0, buf)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		v := Verifier{name: "bench-stream-1", cached: -1}
		if err := v.Check(buf); err != nil {
			b.Fatal(err)
		}
	}
}
