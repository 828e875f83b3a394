package cerberus

// The cerberus socket protocol, version 1 (bouncer-api/PROTOCOL.md): frame types,
// encoders and decoders for both directions. The client (client.go) uses the request
// encoder and the response decoder; the other two exist for tests and for anyone who
// wants to write a server in Go.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Protocol constants (PROTOCOL.md sections 2 and 5).
const (
	// ProtocolVersion is the version byte of every frame.
	ProtocolVersion = 1
	// MaxFrameSize is the largest frame, length prefix included.
	MaxFrameSize = 1024

	minLen    = 6    // smallest value of the length prefix
	maxLen    = 1022 // largest value of the length prefix
	headerLen = 8    // length prefix, version, kind, id

	maxOrigin   = 255
	maxScenario = 495
	maxType     = 255
	maxMessage  = 255
)

// Frame kinds.
const (
	KindLookup       byte = 0x01
	KindPing         byte = 0x02
	KindLookupAnswer byte = 0x81
	KindPong         byte = 0x82
	KindError        byte = 0xFF
)

// Status of a lookup answer.
type Status uint8

// Statuses (PROTOCOL.md section 4.1).
const (
	StatusOK       Status = 0
	StatusNotReady Status = 1
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusNotReady:
		return "not_ready"
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Remediation is what the daemon says to do with an address.
type Remediation uint8

// Remediations (PROTOCOL.md section 4.1).
const (
	Allow    Remediation = 0
	Ban      Remediation = 1
	Captcha  Remediation = 2
	Throttle Remediation = 3
	Other    Remediation = 4
)

func (r Remediation) String() string {
	switch r {
	case Allow:
		return "allow"
	case Ban:
		return "ban"
	case Captcha:
		return "captcha"
	case Throttle:
		return "throttle"
	case Other:
		return "other"
	}
	return fmt.Sprintf("remediation(%d)", uint8(r))
}

// Answer flags.
const (
	FlagBypassed   uint8 = 0x01
	FlagFailClosed uint8 = 0x02
)

// ErrorCode is the code of an error frame.
type ErrorCode uint8

// Error codes (PROTOCOL.md section 4.3).
const (
	CodeBadVersion ErrorCode = 1
	CodeBadKind    ErrorCode = 2
	CodeBadFrame   ErrorCode = 3
	CodeBadFamily  ErrorCode = 4
	CodeBusy       ErrorCode = 5
	CodeInternal   ErrorCode = 6
)

func (c ErrorCode) String() string {
	switch c {
	case CodeBadVersion:
		return "bad_version"
	case CodeBadKind:
		return "bad_kind"
	case CodeBadFrame:
		return "bad_frame"
	case CodeBadFamily:
		return "bad_family"
	case CodeBusy:
		return "busy"
	case CodeInternal:
		return "internal"
	}
	return fmt.Sprintf("code(%d)", uint8(c))
}

// Answer is the payload of a lookup answer.
type Answer struct {
	Status      Status
	Remediation Remediation
	Flags       uint8
	ExpiresInS  uint32
	Origin      string
	Scenario    string
	Type        string
}

// Request is a decoded request frame: a lookup (Addr set) or a ping.
type Request struct {
	Kind byte
	ID   uint32
	Addr netip.Addr
}

// Response is a decoded response frame. Answer is set for KindLookupAnswer, Code
// and Message for KindError; a pong has only its id.
type Response struct {
	Kind    byte
	ID      uint32
	Answer  Answer
	Appsec  AppsecAnswer
	Code    ErrorCode
	Message string
}

// ErrIncomplete means the buffer does not hold a whole frame yet: read more bytes
// and decode again. Nothing was consumed.
var ErrIncomplete = errors.New("cerberus protocol: incomplete frame")

// FrameError is a decoding error (PROTOCOL.md section 6). Reason is one of
// bad_length, bad_version, bad_kind, truncated, trailing_bytes, bad_family,
// bad_utf8, bad_value. ID is the offending frame's id, 0 when unknown.
type FrameError struct {
	Reason string
	ID     uint32
}

func (e *FrameError) Error() string {
	return fmt.Sprintf("cerberus protocol: %s (frame id %d)", e.Reason, e.ID)
}

// WireCode is the error code a server answers to this decoding error.
func (e *FrameError) WireCode() ErrorCode {
	switch e.Reason {
	case "bad_version":
		return CodeBadVersion
	case "bad_kind":
		return CodeBadKind
	case "bad_family":
		return CodeBadFamily
	}
	return CodeBadFrame
}

// ---- encoding ----

// appendHeader appends the 8 header bytes with a placeholder length, fixed by finish.
func appendHeader(dst []byte, kind byte, id uint32) []byte {
	dst = append(dst, 0, 0, ProtocolVersion, kind)
	return binary.BigEndian.AppendUint32(dst, id)
}

// finish writes the length prefix of the frame that starts at dst[start].
func finish(dst []byte, start int) []byte {
	binary.BigEndian.PutUint16(dst[start:], uint16(len(dst)-start-2))
	return dst
}

// AppendLookup appends a lookup request. An IPv4-mapped IPv6 address is sent as
// IPv4; a zone is dropped.
func AppendLookup(dst []byte, id uint32, addr netip.Addr) []byte {
	start := len(dst)
	dst = appendHeader(dst, KindLookup, id)
	addr = addr.Unmap()
	if addr.Is4() {
		a := addr.As4()
		dst = append(dst, 4)
		dst = append(dst, a[:]...)
	} else {
		a := addr.As16()
		dst = append(dst, 6)
		dst = append(dst, a[:]...)
	}
	return finish(dst, start)
}

// AppendPing appends a ping request.
func AppendPing(dst []byte, id uint32) []byte {
	return finish(appendHeader(dst, KindPing, id), len(dst))
}

// AppendRequest appends any request.
func AppendRequest(dst []byte, r Request) []byte {
	if r.Kind == KindPing {
		return AppendPing(dst, r.ID)
	}
	return AppendLookup(dst, r.ID, r.Addr)
}

// cut returns the longest prefix of s that is at most max bytes long and ends on a
// UTF-8 character boundary. Invalid UTF-8 is replaced first, so that the frame
// always decodes.
func cut(s string, max int) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= max {
		return s
	}
	i := max
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}

// AppendResponse appends a response frame, cutting over-long strings.
func AppendResponse(dst []byte, r Response) []byte {
	start := len(dst)
	dst = appendHeader(dst, r.Kind, r.ID)
	switch r.Kind {
	case KindLookupAnswer:
		a := r.Answer
		dst = append(dst, byte(a.Status), byte(a.Remediation), a.Flags)
		dst = binary.BigEndian.AppendUint32(dst, a.ExpiresInS)
		o := cut(a.Origin, maxOrigin)
		dst = append(dst, byte(len(o)))
		dst = append(dst, o...)
		s := cut(a.Scenario, maxScenario)
		dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
		dst = append(dst, s...)
		t := cut(a.Type, maxType)
		dst = append(dst, byte(len(t)))
		dst = append(dst, t...)
	case KindError:
		m := cut(r.Message, maxMessage)
		dst = append(dst, byte(r.Code), byte(len(m)))
		dst = append(dst, m...)
	}
	return finish(dst, start)
}

// ---- decoding ----

// frame checks steps 1 to 4 of the decoding rules and returns the whole frame.
func frame(buf []byte) ([]byte, uint32, error) {
	if len(buf) < 2 {
		return nil, 0, ErrIncomplete
	}
	n := int(binary.BigEndian.Uint16(buf))
	if n < minLen || n > maxLen {
		return nil, 0, &FrameError{Reason: "bad_length"}
	}
	if len(buf) < 2+n {
		return nil, 0, ErrIncomplete
	}
	f := buf[:2+n]
	id := binary.BigEndian.Uint32(f[4:])
	if f[2] != ProtocolVersion {
		return nil, id, &FrameError{Reason: "bad_version", ID: id}
	}
	return f, id, nil
}

// payload reads the fields of one frame's payload in wire order.
type payload struct {
	b   []byte
	id  uint32
	err error
}

func (p *payload) fail(reason string) {
	if p.err == nil {
		p.err = &FrameError{Reason: reason, ID: p.id}
	}
}

func (p *payload) take(n int) []byte {
	if p.err != nil {
		return nil
	}
	if len(p.b) < n {
		p.fail("truncated")
		return nil
	}
	v := p.b[:n]
	p.b = p.b[n:]
	return v
}

func (p *payload) u8() uint8 {
	if b := p.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (p *payload) str(n int) string {
	b := p.take(n)
	if p.err != nil {
		return ""
	}
	if !utf8.Valid(b) {
		p.fail("bad_utf8")
		return ""
	}
	return string(b)
}

func (p *payload) end() {
	if p.err == nil && len(p.b) != 0 {
		p.fail("trailing_bytes")
	}
}

// DecodeRequest decodes the first request in buf (the server side). It returns the
// request and the number of bytes consumed, ErrIncomplete, or a *FrameError.
func DecodeRequest(buf []byte) (Request, int, error) {
	f, id, err := frame(buf)
	if err != nil {
		return Request{}, 0, err
	}
	p := payload{b: f[headerLen:], id: id}
	r := Request{Kind: f[3], ID: id}
	switch r.Kind {
	case KindPing:
	case KindLookup:
		fam := p.u8()
		if p.err == nil {
			switch fam {
			case 4:
				if b := p.take(4); b != nil {
					r.Addr = netip.AddrFrom4([4]byte(b))
				}
			case 6:
				if b := p.take(16); b != nil {
					r.Addr = netip.AddrFrom16([16]byte(b)).Unmap()
				}
			default:
				p.fail("bad_family")
			}
		}
	default:
		return Request{}, 0, &FrameError{Reason: "bad_kind", ID: id}
	}
	p.end()
	if p.err != nil {
		return Request{}, 0, p.err
	}
	return r, len(f), nil
}

// DecodeResponse decodes the first response in buf (the client side). It returns
// the response and the number of bytes consumed, ErrIncomplete, or a *FrameError.
func DecodeResponse(buf []byte) (Response, int, error) {
	f, id, err := frame(buf)
	if err != nil {
		return Response{}, 0, err
	}
	p := payload{b: f[headerLen:], id: id}
	r := Response{Kind: f[3], ID: id}
	switch r.Kind {
	case KindPong:
	case KindLookupAnswer:
		a := &r.Answer
		if a.Status = Status(p.u8()); p.err == nil && a.Status > StatusNotReady {
			p.fail("bad_value")
		}
		if a.Remediation = Remediation(p.u8()); p.err == nil && a.Remediation > Other {
			p.fail("bad_value")
		}
		a.Flags = p.u8()
		if b := p.take(4); b != nil {
			a.ExpiresInS = binary.BigEndian.Uint32(b)
		}
		a.Origin = p.str(int(p.u8()))
		var sl int
		if b := p.take(2); b != nil {
			sl = int(binary.BigEndian.Uint16(b))
		}
		a.Scenario = p.str(sl)
		a.Type = p.str(int(p.u8()))
	case KindAppsecAnswer:
		r.Appsec = decodeAppsecAnswer(&p)
	case KindError:
		if r.Code = ErrorCode(p.u8()); p.err == nil && (r.Code < CodeBadVersion || r.Code > CodeInternal) {
			p.fail("bad_value")
		}
		r.Message = p.str(int(p.u8()))
	default:
		return Response{}, 0, &FrameError{Reason: "bad_kind", ID: id}
	}
	p.end()
	if p.err != nil {
		return Response{}, 0, p.err
	}
	return r, len(f), nil
}
