package server

import (
	"bytes"
	"testing"
)

func TestParseRequest(t *testing.T) {
	cases := []struct {
		req  string
		name string
		resp []byte
	}{
		{"GET /streams/a HTTP/1.1\r\n\r\n", "a", nil},
		{"GET /streams/radio-1 HTTP/1.0\r\nHost: x\r\nUser-Agent: t\r\n\r\n", "radio-1", nil},
		{"\r\nGET /streams/A.b~c_d HTTP/1.1\r\n\r\n", "A.b~c_d", nil},
		{"GET /streams/ HTTP/1.1\r\n\r\n", "", respNotFound},
		{"GET /streams/a/b HTTP/1.1\r\n\r\n", "", respNotFound},
		{"GET /streams/a?x=1 HTTP/1.1\r\n\r\n", "", respNotFound},
		{"GET / HTTP/1.1\r\n\r\n", "", respNotFound},
		{"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", "", respNotFound},
		{"POST /streams/a HTTP/1.1\r\n\r\n", "", respBadMethod},
		{"GET /streams/a HTTP/2.0\r\n\r\n", "", respBadRequest},
		{"GET /streams/a\r\n\r\n", "", respBadRequest},
		{"GET  /streams/a HTTP/1.1\r\n\r\n", "", respBadRequest},
		{"garbage\r\n\r\n", "", respBadRequest},
		{"\r\n\r\n", "", respBadRequest},
		{"GET /streams/a HTTP/1.1\r\nno colon\r\n\r\n", "", respBadRequest},
		{"GET /streams/a HTTP/1.1\r\n: empty name\r\n\r\n", "", respBadRequest},
		{"GET /streams/a\x00 HTTP/1.1\r\n\r\n", "", respBadRequest},
	}
	for _, tc := range cases {
		name, echo, resp := parseRequest([]byte(tc.req))
		if name != tc.name || echo || !bytes.Equal(resp, tc.resp) {
			t.Errorf("parseRequest(%q) = %q, %q; want %q, %q", tc.req, name, resp, tc.name, tc.resp)
		}
	}
}

func TestParseEchoRequest(t *testing.T) {
	for _, req := range []string{"GET /echo HTTP/1.1\r\n\r\n", "GET /echo HTTP/1.0\r\nHost: x\r\n\r\n"} {
		if name, echo, resp := parseRequest([]byte(req)); name != "" || !echo || resp != nil {
			t.Errorf("parseRequest(%q) = %q, %t, %q; want echo", req, name, echo, resp)
		}
	}
	for req, want := range map[string][]byte{
		"GET /echo/x HTTP/1.1\r\n\r\n": respNotFound,
		"GET /echox HTTP/1.1\r\n\r\n":  respNotFound,
		"POST /echo HTTP/1.1\r\n\r\n":  respBadMethod,
	} {
		if name, echo, resp := parseRequest([]byte(req)); name != "" || echo || !bytes.Equal(resp, want) {
			t.Errorf("parseRequest(%q) = %q, %t, %q; want %q", req, name, echo, resp, want)
		}
	}
}

func TestHeaderEnd(t *testing.T) {
	b := []byte("GET / HTTP/1.1\r\nA: b\r\n\r\nrest")
	want := len(b) - len("rest")
	for from := 0; from <= len(b); from++ {
		if from > want-1 {
			break
		}
		if got := headerEnd(b, from); got != want {
			t.Fatalf("headerEnd(from %d) = %d, want %d", from, got, want)
		}
	}
	if got := headerEnd([]byte("GET / HTTP/1.1\r\n\r"), 0); got != -1 {
		t.Fatalf("incomplete header: headerEnd = %d", got)
	}
}
