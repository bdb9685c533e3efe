package wire

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// body is what every message body type implements.
type body interface {
	Marshal() []byte
}

type unmarshaler interface {
	Unmarshal([]byte) error
}

// TestBodyLayouts pins every body's bytes to the layout in docs/protocol.md
// and checks the round trip.
func TestBodyLayouts(t *testing.T) {
	cases := []struct {
		name  string
		in    body
		out   unmarshaler
		bytes []byte
	}{
		{"hello", Hello{MinVersion: 1, MaxVersion: 0x0302, Role: RoleApp, Flags: HelloStandby, Name: "web"}, &Hello{},
			[]byte{1, 0, 2, 3, 1, 1, 0, 0, 3, 0, 'w', 'e', 'b'}},
		{"hello empty name", Hello{MinVersion: 1, MaxVersion: 1, Role: RoleAdmin}, &Hello{},
			[]byte{1, 0, 1, 0, 2, 0, 0, 0, 0, 0}},
		{"welcome", Welcome{Version: 1, Flags: WelcomePending, SessionID: 0x1122334455667788, PID: 0x01020304}, &Welcome{},
			[]byte{1, 0, 1, 0, 4, 3, 2, 1, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11}},
		{"failure", Failure{Code: CodeImport, Reason: "emfile"}, &Failure{},
			[]byte{10, 0, 0, 0, 6, 0, 'e', 'm', 'f', 'i', 'l', 'e'}},
		{"failure empty", Failure{Code: CodeInternal}, &Failure{}, []byte{5, 0, 0, 0, 0, 0}},
		{"prepare", Prepare{What: MoveAll, TimeoutMS: 0x01020304, Target: 9}, &Prepare{},
			[]byte{7, 0, 0, 0, 4, 3, 2, 1, 9, 0, 0, 0, 0, 0, 0, 0}},
		{"begin", Begin{TimeoutMS: 1000, Source: 3, SourceName: "ab"}, &Begin{},
			[]byte{0xe8, 0x03, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 2, 0, 'a', 'b'}},
		{"summary", Summary{Listeners: 1, Conns: 2, Packets: 3, Batches: 4, StateBytes: 5, FreezeStartNS: 6, ExportDoneNS: 7}, &Summary{},
			[]byte{1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0}},
		{"stamp", Stamp{MonoNS: 0x0102030405060708}, &Stamp{}, []byte{8, 7, 6, 5, 4, 3, 2, 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.Marshal()
			if !bytes.Equal(got, tc.bytes) {
				t.Fatalf("marshal\n got % x\nwant % x", got, tc.bytes)
			}
			if err := tc.out.Unmarshal(got); err != nil {
				t.Fatalf("unmarshal: %v", err)
			}
			if back := reflect.ValueOf(tc.out).Elem().Interface(); !reflect.DeepEqual(back, tc.in) {
				t.Fatalf("round trip: %+v, want %+v", back, tc.in)
			}
			// Every prefix is short and a trailing byte is too much.
			for n := range len(got) {
				if err := tc.out.Unmarshal(got[:n]); !errors.Is(err, ErrMalformed) {
					t.Fatalf("unmarshal of %d/%d bytes: %v, want ErrMalformed", n, len(got), err)
				}
			}
			if err := tc.out.Unmarshal(append(got, 0)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "1 trailing bytes") {
				t.Fatalf("unmarshal with a trailing byte: %v", err)
			}
		})
	}
}

func TestHelloReservedIgnored(t *testing.T) {
	b := Hello{MinVersion: 1, MaxVersion: 1, Role: RoleApp, Name: "x"}.Marshal()
	b[6], b[7] = 0xff, 0xff
	var h Hello
	if err := h.Unmarshal(b); err != nil || h.Name != "x" {
		t.Fatalf("hello with reserved bytes set: %+v, %v", h, err)
	}
}

func TestStringLengthOverrun(t *testing.T) {
	// A name whose announced length runs past the body.
	b := []byte{1, 0, 1, 0, 1, 0, 0, 0, 5, 0, 'a', 'b'}
	var h Hello
	if err := h.Unmarshal(b); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "need 5 bytes, 2 left") {
		t.Fatalf("overrun: %v", err)
	}
}

func TestFailureReasonCut(t *testing.T) {
	long := strings.Repeat("r", 5000)
	b := Failure{Code: CodeInternal, Reason: long}.Marshal()
	if len(b) != 4+2+4096 {
		t.Fatalf("failure with a 5000-byte reason is %d bytes, want %d", len(b), 4+2+4096)
	}
	var f Failure
	if err := f.Unmarshal(b); err != nil || f.Reason != long[:4096] {
		t.Fatalf("cut reason: %d bytes, %v", len(f.Reason), err)
	}
	// A receiver accepts any length that fits a body, not just 4096.
	b = append([]byte{1, 0, 0, 0, 0x88, 0x13}, long...)
	if err := f.Unmarshal(b); err != nil || len(f.Reason) != 5000 {
		t.Fatalf("5000-byte reason from a peer: %d bytes, %v", len(f.Reason), err)
	}
}

func TestFailureUnknownCode(t *testing.T) {
	// A receiver accepts a code it does not know, and names it by value.
	var f Failure
	if err := f.Unmarshal([]byte{0xe7, 0x03, 0, 0, 2, 0, 'n', 'o'}); err != nil || f.Code != 999 || f.Reason != "no" {
		t.Fatalf("failure with code 999: %+v, %v", f, err)
	}
	if got := f.Error(); got != "Code999: no" {
		t.Fatalf("Error() = %q, want %q", got, "Code999: no")
	}
}

func TestSummaryTotal(t *testing.T) {
	if n := (Summary{Listeners: 2, Conns: 300, Packets: 1, Batches: 9}).Total(); n != 303 {
		t.Fatalf("total %d, want 303", n)
	}
}

// Oversized strings cannot be sent: the u16 length would wrap, but the
// body then exceeds MaxBody and Send refuses it.
func TestOversizedStringsRefused(t *testing.T) {
	a, _ := socketPair(t)
	name := strings.Repeat("n", 1<<16)
	for _, b := range [][]byte{Hello{Name: name}.Marshal(), Begin{SourceName: name}.Marshal()} {
		err := a.Send(Msg{Header: Header{Type: TypeHello}, Body: b})
		if !errors.Is(err, ErrTooLarge) {
			t.Fatalf("send of a %d-byte body: %v, want ErrTooLarge", len(b), err)
		}
	}
}
