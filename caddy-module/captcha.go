package cerberus

// Captcha: for a request whose verdict is captcha, the module asks the daemon (frames
// 0x04 / 0x84 of bouncer-api/PROTOCOL.md, section 3.4) with the client IP, method, URL
// and the clearance cookie, and writes what the daemon answers: pass (serve the
// request), a response (the challenge page, or a 303 with Set-Cookie after a solve),
// or refuse (403, the ban page). The flow itself (cookie, provider, page) lives in the
// daemon, shared with forward_auth. Each call uses a connection of its own: solves wait
// on the provider for up to seconds, and must not hold up the pooled lookups.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"time"
)

const (
	// KindCaptcha is a captcha request; KindCaptchaAnswer its answer.
	KindCaptcha       byte = 0x04
	KindCaptchaAnswer byte = 0x84
	// CaptchaCookie is the clearance cookie the daemon sets.
	CaptchaCookie = "cerberus_captcha"
	// captchaTimeout bounds one captcha call; the daemon's own siteverify bound is 3s.
	captchaTimeout = 5 * time.Second
	// maxCaptchaAnswer is the largest answer message read (the daemon's limit).
	maxCaptchaAnswer = 256 * 1024
	captchaChunk     = MaxFrameSize - 2 - 6 - 1
)

// CaptchaAction is what the daemon tells the module to do.
type CaptchaAction byte

const (
	CaptchaPass    CaptchaAction = 0
	CaptchaRespond CaptchaAction = 1
	CaptchaRefuse  CaptchaAction = 2
)

// CaptchaRequest is what the module sends.
type CaptchaRequest struct {
	Addr  netip.Addr
	HTTPS bool
	// FromAppsec: the captcha verdict is AppSec's, the IP check allowed (flags bit 1).
	FromAppsec bool
	Method     string
	URI        string
	Cookie     string
}

// CaptchaAnswer is what the daemon answers.
type CaptchaAnswer struct {
	Action  CaptchaAction
	Status  int
	Headers [][2]string
	Body    []byte
}

func putText(m []byte, s string, wide bool) []byte {
	s = cutUTF8(s, map[bool]int{false: 255, true: 65535}[wide])
	if wide {
		m = binary.BigEndian.AppendUint16(m, uint16(len(s)))
	} else {
		m = append(m, byte(len(s)))
	}
	return append(m, s...)
}

// cutUTF8 cuts s to at most n bytes on a character boundary.
func cutUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// AppendCaptchaRequest appends the request as frames of kind 0x04 and the given id:
// each payload is a `more` byte (1: another frame follows) and a chunk of the message.
func AppendCaptchaRequest(b []byte, id uint32, req CaptchaRequest) []byte {
	var m []byte
	a := req.Addr.Unmap()
	if a.Is4() {
		v := a.As4()
		m = append(append(m, 4), v[:]...)
	} else {
		v := a.As16()
		m = append(append(m, 6), v[:]...)
	}
	flags := byte(0)
	if req.HTTPS {
		flags |= 1
	}
	if req.FromAppsec {
		flags |= 2
	}
	m = append(m, flags)
	m = putText(m, req.Method, false)
	m = putText(m, req.URI, true)
	m = putText(m, req.Cookie, true)
	for {
		n := min(len(m), captchaChunk)
		chunk, rest := m[:n], m[n:]
		more := byte(0)
		if len(rest) > 0 {
			more = 1
		}
		b = binary.BigEndian.AppendUint16(b, uint16(6+1+len(chunk)))
		b = append(b, ProtocolVersion, KindCaptcha)
		b = binary.BigEndian.AppendUint32(b, id)
		b = append(append(b, more), chunk...)
		if len(rest) == 0 {
			return b
		}
		m = rest
	}
}

var errCaptchaAnswer = errors.New("cerberus: malformed captcha answer")

// ReadCaptchaAnswer reads the frames of one answer to request id from r.
func ReadCaptchaAnswer(r io.Reader, id uint32) (CaptchaAnswer, error) {
	var msg []byte
	head := make([]byte, 2)
	for {
		if _, err := io.ReadFull(r, head); err != nil {
			return CaptchaAnswer{}, err
		}
		n := int(binary.BigEndian.Uint16(head))
		if n < 6 || n > MaxFrameSize-2 {
			return CaptchaAnswer{}, fmt.Errorf("%w: frame length %d", errCaptchaAnswer, n)
		}
		frame := make([]byte, n)
		if _, err := io.ReadFull(r, frame); err != nil {
			return CaptchaAnswer{}, err
		}
		if frame[1] == KindError {
			resp, _, err := DecodeResponse(append(append([]byte{}, head...), frame...))
			if err != nil {
				return CaptchaAnswer{}, err
			}
			return CaptchaAnswer{}, &ServerError{Code: resp.Code, Message: resp.Message}
		}
		if frame[0] != ProtocolVersion || frame[1] != KindCaptchaAnswer || n < 7 ||
			binary.BigEndian.Uint32(frame[2:6]) != id {
			return CaptchaAnswer{}, fmt.Errorf("%w: unexpected frame kind 0x%02x", errCaptchaAnswer, frame[1])
		}
		msg = append(msg, frame[7:]...)
		if len(msg) > maxCaptchaAnswer {
			return CaptchaAnswer{}, fmt.Errorf("%w: larger than %d bytes", errCaptchaAnswer, maxCaptchaAnswer)
		}
		if frame[6] == 0 {
			return parseCaptchaAnswer(msg)
		}
	}
}

func parseCaptchaAnswer(m []byte) (CaptchaAnswer, error) {
	bad := func(what string) (CaptchaAnswer, error) {
		return CaptchaAnswer{}, fmt.Errorf("%w: %s", errCaptchaAnswer, what)
	}
	if len(m) < 1 {
		return bad("empty")
	}
	a := CaptchaAnswer{Action: CaptchaAction(m[0])}
	m = m[1:]
	switch a.Action {
	case CaptchaPass, CaptchaRefuse:
		if len(m) != 0 {
			return bad("trailing bytes")
		}
		return a, nil
	case CaptchaRespond:
	default:
		return bad(fmt.Sprintf("action %d", a.Action))
	}
	if len(m) < 3 {
		return bad("truncated")
	}
	a.Status = int(binary.BigEndian.Uint16(m))
	count := int(m[2])
	m = m[3:]
	for i := 0; i < count; i++ {
		if len(m) < 1 || len(m) < 1+int(m[0])+2 {
			return bad("truncated header")
		}
		name := string(m[1 : 1+m[0]])
		m = m[1+m[0]:]
		vl := int(binary.BigEndian.Uint16(m))
		if len(m) < 2+vl {
			return bad("truncated header")
		}
		a.Headers = append(a.Headers, [2]string{name, string(m[2 : 2+vl])})
		m = m[2+vl:]
	}
	a.Body = m
	return a, nil
}

// askCaptcha sends one captcha request to the daemon's socket and reads its answer.
func askCaptcha(socket string, req CaptchaRequest) (CaptchaAnswer, error) {
	c, err := net.DialTimeout("unix", socket, captchaTimeout)
	if err != nil {
		return CaptchaAnswer{}, fmt.Errorf("%w: %w", ErrConnect, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(captchaTimeout))
	if _, err := c.Write(AppendCaptchaRequest(nil, 1, req)); err != nil {
		return CaptchaAnswer{}, err
	}
	return ReadCaptchaAnswer(c, 1)
}

// captchaRequest is the request as the daemon needs it; fromAppsec says whose verdict
// the captcha is.
func captchaRequest(r *http.Request, addr netip.Addr, fromAppsec bool) CaptchaRequest {
	cookie := ""
	if c, err := r.Cookie(CaptchaCookie); err == nil {
		cookie = c.Value
	}
	return CaptchaRequest{Addr: addr, HTTPS: r.TLS != nil, FromAppsec: fromAppsec, Method: r.Method,
		URI: r.URL.RequestURI(), Cookie: cookie}
}

// captcha answers a request whose verdict is captcha (the IP's, or AppSec's when
// fromAppsec); d and cause are the refusal's.
func (h *Handler) captcha(w http.ResponseWriter, r *http.Request, addr netip.Addr, fromAppsec bool,
	d PageData, cause error) (passed bool, err error) {
	a, err := askCaptcha(h.Socket, captchaRequest(r, addr, fromAppsec))
	if err != nil {
		failures.WithLabelValues("captcha").Inc()
		h.failLog.record("captcha", "refuse", err)
		return false, h.refuse(w, d, cause)
	}
	switch a.Action {
	case CaptchaPass:
		return true, nil
	case CaptchaRespond:
		for _, kv := range a.Headers {
			w.Header().Add(kv[0], kv[1])
		}
		w.WriteHeader(a.Status)
		if r.Method != http.MethodHead {
			_, _ = io.Copy(w, bytes.NewReader(a.Body))
		}
		return false, nil
	default:
		return false, h.refuse(w, d, cause)
	}
}
