package server

import (
	"bytes"
	"strconv"
)

// okHeader starts every stream response. The body follows without a length
// and never ends.
const okHeader = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"

// streamPrefix is the path prefix of stream URLs: /streams/NAME.
const streamPrefix = "/streams/"

// echoPath is the URL of the request/response mode (see the package doc).
const echoPath = "/echo"

// The request/response mode: after the 200 header, the client sends
// requests of exactly echoRequestLen bytes, and the server answers each
// with echoReplyLen bytes: the connection's sequence number (0 for its
// first request) as echoSeqDigits decimal digits, a space, and the request.
const (
	echoRequestLen = 16
	echoSeqDigits  = 10
	echoReplyLen   = echoSeqDigits + 1 + echoRequestLen
	echoMaxSeq     = 10_000_000_000 // sequence numbers wrap to 0 here
)

// Error responses, written whole and followed by a close.
var (
	respBadRequest = errorResponse("400 Bad Request", "malformed request\n", "")
	respNotFound   = errorResponse("404 Not Found", "not found: use GET /streams/NAME or GET /echo\n", "")
	respBadMethod  = errorResponse("405 Method Not Allowed", "only GET is supported\n", "Allow: GET\r\n")
)

func errorResponse(status, body, extra string) []byte {
	return []byte("HTTP/1.1 " + status + "\r\nContent-Type: text/plain\r\nContent-Length: " +
		strconv.Itoa(len(body)) + "\r\n" + extra + "Connection: close\r\n\r\n" + body)
}

// headerEnd returns the index just past the "\r\n\r\n" that ends the request
// header in b, or -1. from is how much of b was already searched.
func headerEnd(b []byte, from int) int {
	from = max(from-3, 0)
	if i := bytes.Index(b[from:], []byte("\r\n\r\n")); i >= 0 {
		return from + i + 4
	}
	return -1
}

// parseRequest parses a complete request header (ending in "\r\n\r\n").
// It returns the stream name, or echo for GET /echo, or the error response
// to send.
func parseRequest(h []byte) (name string, echo bool, resp []byte) {
	// Tolerate empty lines before the request line (RFC 9112, 2.2).
	for bytes.HasPrefix(h, []byte("\r\n")) {
		h = h[2:]
	}
	eol := bytes.Index(h, []byte("\r\n"))
	if eol <= 0 {
		return "", false, respBadRequest
	}
	line := h[:eol]
	method, rest, ok1 := bytes.Cut(line, []byte(" "))
	target, version, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok1 || !ok2 || len(method) == 0 || len(target) == 0 ||
		(string(version) != "HTTP/1.1" && string(version) != "HTTP/1.0") {
		return "", false, respBadRequest
	}
	for _, c := range line {
		if c < 0x20 || c == 0x7f {
			return "", false, respBadRequest
		}
	}
	// Every header line must be a field: "name: value".
	for fields := h[eol+2 : len(h)-2]; len(fields) > 0; {
		e := bytes.Index(fields, []byte("\r\n"))
		if e < 0 {
			return "", false, respBadRequest
		}
		if i := bytes.IndexByte(fields[:e], ':'); i <= 0 {
			return "", false, respBadRequest
		}
		fields = fields[e+2:]
	}
	if string(method) != "GET" {
		return "", false, respBadMethod
	}
	if string(target) == echoPath {
		return "", true, nil
	}
	n, ok := bytes.CutPrefix(target, []byte(streamPrefix))
	if !ok || !validName(string(n)) {
		return "", false, respNotFound
	}
	return string(n), false, nil
}

// validName reports whether s can name a stream: 1 to maxName characters
// from the URL-unreserved set [A-Za-z0-9._~-].
func validName(s string) bool {
	if len(s) == 0 || len(s) > maxName {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '.', c == '_', c == '~', c == '-':
		default:
			return false
		}
	}
	return true
}
