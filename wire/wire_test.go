package wire

import (
	"bytes"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestHeaderLayout(t *testing.T) {
	h := Header{Version: 1, Type: TypeBatch, Flags: 0x0201, TxID: 0x0807060504030201, Seq: 0x0c0b0a09, NFDs: 0x00fd, BodyLen: 0x00001234}
	b := make([]byte, HeaderLen)
	for i := range b {
		b[i] = 0xee // PutHeader must write every byte, reserved ones as zero
	}
	PutHeader(b, h)
	want := []byte{
		'H', 'O', 'F', 'F', // 0: magic
		1,          // 4: version
		5,          // 5: type
		0x01, 0x02, // 6: flags
		0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // 8: txid
		0x09, 0x0a, 0x0b, 0x0c, // 16: seq
		0xfd, 0x00, // 20: nfds
		0x00, 0x00, // 22: reserved
		0x34, 0x12, 0x00, 0x00, // 24: body length
		0x00, 0x00, 0x00, 0x00, // 28: reserved
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("header bytes\n got % x\nwant % x", b, want)
	}
	if !bytes.Equal(b, rawHeader(1, TypeBatch, 0x0201, 0x0807060504030201, 0x0c0b0a09, 0xfd, 0x1234)) {
		t.Fatal("rawHeader disagrees with PutHeader")
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	for _, typ := range []Type{TypeHello, TypeWelcome, TypeError, TypePrepare, TypeBatch, TypeExported, TypeBegin, TypeEnd,
		TypeAbort, TypeReady, TypeCommit, TypeCommitted, TypeServing, TypeRequest, TypeResponse, TypeProgress} {
		for _, bodyLen := range []int{0, 1, 4096, MaxBody} {
			h := Header{Version: MaxVersion, Type: typ, Flags: 0xffff, TxID: ^uint64(0), Seq: 7, NFDs: MaxFDs, BodyLen: uint32(bodyLen)}
			b := make([]byte, HeaderLen+bodyLen)
			PutHeader(b, h)
			for i := HeaderLen; i < len(b); i++ {
				b[i] = byte(i)
			}
			got, body, err := Decode(b, MaxFDs)
			if err != nil {
				t.Fatalf("%v body %d: %v", typ, bodyLen, err)
			}
			if got != h {
				t.Fatalf("%v body %d: decoded %+v, want %+v", typ, bodyLen, got, h)
			}
			if !bytes.Equal(body, b[HeaderLen:]) {
				t.Fatalf("%v body %d: body differs", typ, bodyLen)
			}
		}
	}
}

func TestDecodeIgnoresReservedHeaderBytes(t *testing.T) {
	b := rawHeader(1, TypeCommit, 0, 9, 0, 0, 0)
	b[22], b[23], b[28], b[31] = 1, 2, 3, 4
	h, _, err := Decode(b, 0)
	if err != nil || h.TxID != 9 || h.Type != TypeCommit {
		t.Fatalf("decode with reserved bytes set: %+v, %v", h, err)
	}
}

func TestDecodeRejects(t *testing.T) {
	valid := func() []byte { return append(rawHeader(1, TypeAbort, 0, 1, 0, 0, 3), 'a', 'b', 'c') }
	cases := []struct {
		name string
		b    []byte
		nfds int
		want error
		msg  string
	}{
		{"empty", nil, 0, ErrShort, "0 bytes"},
		{"31 bytes", valid()[:HeaderLen-1], 0, ErrShort, "31 bytes"},
		{"bad magic", func() []byte { b := valid(); b[0] = 'X'; return b }(), 0, ErrMagic, `"XOFF"`},
		{"lower-case magic", func() []byte { b := valid(); copy(b, "hoff"); return b }(), 0, ErrMagic, ""},
		{"version 0", func() []byte { b := valid(); b[4] = 0; return b }(), 0, ErrVersion, "0 (this side speaks 1..3)"},
		{"version 4", func() []byte { b := valid(); b[4] = 4; return b }(), 0, ErrVersion, "4"},
		{"version 255", func() []byte { b := valid(); b[4] = 255; return b }(), 0, ErrVersion, "255"},
		{"type 0", func() []byte { b := valid(); b[5] = 0; return b }(), 0, ErrType, ": 0"},
		{"type 15", func() []byte { b := valid(); b[5] = 15; return b }(), 0, ErrType, ": 15"},
		{"type 26", func() []byte { b := valid(); b[5] = 26; return b }(), 0, ErrType, ": 26"},
		{"type 255", func() []byte { b := valid(); b[5] = 255; return b }(), 0, ErrType, ": 255"},
		{"body longer than announced", append(valid(), 'd'), 0, ErrBodyLen, "header says 3, datagram carries 4"},
		{"body shorter than announced", valid()[:HeaderLen+2], 0, ErrBodyLen, "header says 3, datagram carries 2"},
		{"header only, body announced", rawHeader(1, TypeAbort, 0, 1, 0, 0, 1), 0, ErrBodyLen, ""},
		{"body length MaxBody+1", rawHeader(1, TypeAbort, 0, 1, 0, 0, MaxBody+1), 0, ErrTooLarge, "65537"},
		{"body length 4 GiB-1", rawHeader(1, TypeAbort, 0, 1, 0, 0, ^uint32(0)), 0, ErrTooLarge, ""},
		{"too large datagram", append(rawHeader(1, TypeAbort, 0, 1, 0, 0, MaxBody+1), make([]byte, MaxBody+1)...), 0, ErrTooLarge, ""},
		{"fds announced, none arrived", rawHeader(1, TypeBatch, 0, 1, 0, 2, 0), 0, ErrFDCount, "header says 2, 0 arrived"},
		{"fds arrived, none announced", valid(), 1, ErrFDCount, "header says 0, 1 arrived"},
		{"more fds than announced", rawHeader(1, TypeBatch, 0, 1, 0, 2, 0), 3, ErrFDCount, ""},
		{"fds beyond MaxFDs", rawHeader(1, TypeBatch, 0, 1, 0, MaxFDs+1, 0), MaxFDs + 1, ErrTooLarge, "254 descriptors"},
		{"negative fd count", valid(), -1, ErrFDCount, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, body, err := Decode(tc.b, tc.nfds)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Decode: %v, want %v", err, tc.want)
			}
			if body != nil {
				t.Fatalf("Decode returned a body alongside %v", err)
			}
			if tc.msg != "" && !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %q does not say %q", err, tc.msg)
			}
			if err.Error() != strings.ToLower(err.Error()[:1])+err.Error()[1:] {
				t.Fatalf("error %q starts with a capital", err)
			}
		})
	}
}

func TestTypes(t *testing.T) {
	known := 0
	for i := range 256 {
		typ := Type(i)
		if typ.Known() {
			known++
			if strings.HasPrefix(typ.String(), "Type(") {
				t.Errorf("known type %d has no name", i)
			}
		} else if typ.String() != "Type("+strconv.Itoa(i)+")" {
			t.Errorf("unknown type %d prints %q", i, typ.String())
		}
	}
	if known != 20 {
		t.Fatalf("%d known types, want 20", known)
	}
	// Values are on the wire: they must never change.
	stable := map[Type]uint8{TypeHello: 1, TypeWelcome: 2, TypeError: 3, TypePrepare: 4, TypeBatch: 5, TypeExported: 6, TypeBegin: 7,
		TypeEnd: 8, TypeAbort: 9, TypeReady: 10, TypeCommit: 11, TypeCommitted: 12, TypeServing: 13, TypeRequest: 20,
		TypeResponse: 21, TypeProgress: 22, TypeHandover: 23, TypeHandoverEntry: 24, TypeTaken: 25}
	for typ, v := range stable {
		if uint8(typ) != v || !typ.Known() {
			t.Errorf("%v = %d, want %d", typ, uint8(typ), v)
		}
	}
}

func TestCodeNames(t *testing.T) {
	// The values travel and the names are in results and logs: both stay.
	want := map[Code]string{
		1: "Version", 2: "Malformed", 3: "Refused", 4: "Busy", 5: "Internal", 6: "NotFound",
		7: "DeadlineExceeded", 8: "SourceLost", 9: "TargetLost", 10: "ImportFailed",
		11: "ExportFailed", 12: "Cancelled", 13: "UnexpectedMessage", 14: "AgentClosed", 15: "NotClaimed",
	}
	codes := Codes()
	if len(codes) != len(want) || !slices.IsSorted(codes) {
		t.Errorf("Codes() = %v, want the %d codes in order", codes, len(want))
	}
	for _, c := range codes {
		if c.String() != want[c] {
			t.Errorf("Code(%d).String() = %q, want %q", uint32(c), c.String(), want[c])
		}
	}
	for _, c := range []Code{0, 16, 1 << 31} {
		if got := c.String(); got != "Code"+strconv.FormatUint(uint64(c), 10) {
			t.Errorf("Code(%d).String() = %q", uint32(c), got)
		}
	}
	if got := (Failure{Code: CodeImport, Reason: "too many open files"}).Error(); got != "ImportFailed: too many open files" {
		t.Errorf("Failure.Error() = %q", got)
	}
}

func TestNegotiate(t *testing.T) {
	cases := []struct {
		min, max uint16
		want     uint8
		ok       bool
	}{
		{1, 1, 1, true},
		{1, 9, 3, true},
		{0, 1, 1, true},
		{0, 65535, 3, true},
		{1, 2, 2, true},
		{2, 3, 3, true},
		{3, 4, 3, true},
		{4, 5, 0, false},
		{0, 0, 0, false},
		{1, 0, 0, false}, // min above max
		{65535, 65535, 0, false},
	}
	for _, tc := range cases {
		v, err := Negotiate(tc.min, tc.max)
		if tc.ok != (err == nil) || v != tc.want {
			t.Errorf("Negotiate(%d, %d) = %d, %v; want %d, ok %v", tc.min, tc.max, v, err, tc.want, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrUnsupported) {
			t.Errorf("Negotiate(%d, %d): %v is not ErrUnsupported", tc.min, tc.max, err)
		}
	}
}
