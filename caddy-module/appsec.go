package cerberus

// AppSec (CrowdSec's WAF) through the daemon: after the IP check allowed a request,
// the handler reads its body up to AppsecMaxBody, sends method, URI, host, HTTP
// version, headers and that body to the daemon (frame 0x05, PROTOCOL.md sections 3.5, 4.5),
// and hands the upstream the body unchanged: the bytes read, then the rest of the
// stream. The daemon asks AppSec and answers allow, ban or captcha (0x85).

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
)

// Frame kinds and reasons of the AppSec frames.
const (
	KindAppsec       byte = 0x05
	KindAppsecAnswer byte = 0x85

	// AppsecVerdict .. AppsecOff are the reasons of an AppSec answer.
	AppsecVerdict      byte = 0
	AppsecFailed       byte = 1
	AppsecBodyTooLarge byte = 2
	AppsecOff          byte = 3

	appsecTruncated = 0x01
	// appsecDeclaredLen is the length prefix of every AppSec request: the header and
	// the u32 size of the rest.
	appsecDeclaredLen = 10

	// DefaultAppsecMaxBody is the body sent at most (the daemon's own default).
	DefaultAppsecMaxBody = 1 << 20
	// DefaultAppsecTimeout bounds one AppSec request through the daemon (which has
	// its own appsec_timeout, 200ms by default).
	DefaultAppsecTimeout = 2 * time.Second
	// appsecOffPause is how long the handler stops asking a daemon that said AppSec
	// is off there.
	appsecOffPause = 10 * time.Second
)

// AppsecRequest is what the daemon is told of one request.
type AppsecRequest struct {
	Addr        netip.Addr
	Method      string
	URI         string
	Host        string
	HTTPVersion string
	Header      http.Header
	Body        []byte
	Truncated   bool
}

// AppendAppsec appends an AppSec request frame. Strings longer than 65535 bytes are
// cut there.
func AppendAppsec(dst []byte, id uint32, r *AppsecRequest) []byte {
	start := len(dst)
	dst = append(dst, 0, appsecDeclaredLen, ProtocolVersion, KindAppsec)
	dst = binary.BigEndian.AppendUint32(dst, id)
	dst = append(dst, 0, 0, 0, 0) // size, set below
	var flags byte
	if r.Truncated {
		flags |= appsecTruncated
	}
	dst = append(dst, flags)
	addr := r.Addr.Unmap()
	if addr.Is4() {
		a := addr.As4()
		dst = append(append(dst, 4), a[:]...)
	} else {
		a := addr.As16()
		dst = append(append(dst, 6), a[:]...)
	}
	for _, s := range []string{r.Method, r.URI, r.Host, r.HTTPVersion} {
		dst = append16(dst, cut(s, 0xffff))
	}
	n := 0
	for _, vs := range r.Header {
		n += len(vs)
	}
	n = min(n, 0xffff)
	dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	written := 0
	for name, vs := range r.Header {
		for _, v := range vs {
			if written == n {
				break
			}
			dst = append16(dst, cut(name, 0xffff))
			dst = append16(dst, v[:min(len(v), 0xffff)])
			written++
		}
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(r.Body)))
	dst = append(dst, r.Body...)
	binary.BigEndian.PutUint32(dst[start+8:], uint32(len(dst)-start-12))
	return dst
}

func append16(dst []byte, s string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

// DecodeAppsec reads one whole AppSec request frame (the server side; tests).
func DecodeAppsec(frame []byte) (*AppsecRequest, error) {
	bad := &FrameError{Reason: "truncated"}
	if len(frame) < 14 || frame[3] != KindAppsec ||
		int(binary.BigEndian.Uint32(frame[8:])) != len(frame)-12 {
		return nil, bad
	}
	p := frame[12:]
	r := &AppsecRequest{Truncated: p[0]&appsecTruncated != 0, Header: http.Header{}}
	n := 4
	if p[1] == 6 {
		n = 16
	}
	if len(p) < 2+n {
		return nil, bad
	}
	r.Addr, _ = netip.AddrFromSlice(p[2 : 2+n])
	p = p[2+n:]
	take := func() (string, bool) {
		if len(p) < 2 {
			return "", false
		}
		l := int(binary.BigEndian.Uint16(p))
		if len(p) < 2+l {
			return "", false
		}
		s := string(p[2 : 2+l])
		p = p[2+l:]
		return s, true
	}
	for _, dst := range []*string{&r.Method, &r.URI, &r.Host, &r.HTTPVersion} {
		s, ok := take()
		if !ok {
			return nil, bad
		}
		*dst = s
	}
	if len(p) < 2 {
		return nil, bad
	}
	count := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	for i := 0; i < count; i++ {
		name, ok1 := take()
		value, ok2 := take()
		if !ok1 || !ok2 {
			return nil, bad
		}
		r.Header.Add(name, value)
	}
	if len(p) < 4 || int(binary.BigEndian.Uint32(p)) != len(p)-4 {
		return nil, bad
	}
	r.Body = p[4:]
	return r, nil
}

// AppsecAnswer is the daemon's answer: Allow, Ban or Captcha, and why.
type AppsecAnswer struct {
	Remediation Remediation
	Reason      byte
}

// Appsec sends one AppSec request and waits for the answer.
func (c *Client) Appsec(ctx context.Context, r *AppsecRequest) (AppsecAnswer, error) {
	resp, err := c.call(ctx, func(id uint32, b []byte) []byte { return AppendAppsec(b, id, r) })
	if err != nil {
		return AppsecAnswer{}, err
	}
	if resp.Kind != KindAppsecAnswer {
		return AppsecAnswer{}, fmt.Errorf("cerberus: unexpected answer kind 0x%02x to an AppSec request", resp.Kind)
	}
	return resp.Appsec, nil
}

// appsecBody reads up to limit bytes of r's body and puts back a body that yields
// them and then the rest of the stream, so the upstream gets every byte.
func appsecBody(r *http.Request, limit int64) ([]byte, bool, error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, false, nil
	}
	buf, err := io.ReadAll(io.LimitReader(r.Body, limit+1))
	if err != nil {
		// Hand on what was read; the upstream sees the same broken stream.
		r.Body = rebuilt(buf, r.Body)
		return nil, false, err
	}
	r.Body = rebuilt(buf, r.Body)
	if int64(len(buf)) > limit {
		return buf[:limit], true, nil
	}
	return buf, false, nil
}

type replayBody struct {
	io.Reader
	io.Closer
}

func rebuilt(read []byte, rest io.ReadCloser) io.ReadCloser {
	return replayBody{Reader: io.MultiReader(bytes.NewReader(read), rest), Closer: rest}
}

// appsecState is the runtime state of the AppSec step.
type appsecState struct {
	client   *Client
	offUntil atomic.Int64 // unix nanoseconds: the daemon said AppSec is off
}

// inspects says whether a request allowed at now (unix nanoseconds) goes to AppSec:
// the step is on, and the daemon did not say AppSec is off there less than
// appsecOffPause ago.
func (h *Handler) inspects(now int64) bool {
	return h.appsec != nil && now >= h.appsec.offUntil.Load()
}

// inspect runs the AppSec step for a request the IP check allowed (when inspects);
// it serves the request (next) or refuses it.
func (h *Handler) inspect(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler,
	repl *caddy.Replacer, addr netip.Addr) error {
	body, truncated, err := appsecBody(r, int64(h.AppsecMaxBody))
	if err != nil {
		return fmt.Errorf("cerberus: reading the request body for AppSec: %w", err)
	}
	host := r.Host
	req := &AppsecRequest{Addr: addr, Method: r.Method, URI: r.RequestURI, Host: host,
		HTTPVersion: strconv.Itoa(r.ProtoMajor) + "." + strconv.Itoa(r.ProtoMinor),
		Header:      r.Header, Body: body, Truncated: truncated}
	if req.URI == "" {
		req.URI = r.URL.RequestURI()
	}
	ans, err := h.appsec.client.Appsec(r.Context(), req)
	if err != nil {
		appsecOutcomes.WithLabelValues("unavailable").Inc()
		failures.WithLabelValues("appsec_" + failureReason(err)).Inc()
		h.failLog.record("appsec_"+failureReason(err), h.Fail, err)
		if h.Fail == FailClosed {
			return h.refuse(w, PageData{Status: http.StatusServiceUnavailable, Title: "Service unavailable",
				Remediation: "unavailable"}, fmt.Errorf("cerberus: AppSec: fail closed: %w", err))
		}
		return next.ServeHTTP(w, r)
	}
	if ans.Reason == AppsecOff {
		h.appsec.offUntil.Store(time.Now().Add(appsecOffPause).UnixNano())
		return next.ServeHTTP(w, r)
	}
	appsecOutcomes.WithLabelValues(ans.Remediation.String()).Inc()
	if ans.Remediation == Allow {
		return next.ServeHTTP(w, r)
	}
	// ban: 403; captcha: the daemon's captcha flow (its challenge, or 403 when it has
	// no provider or refuses).
	repl.Set("http.cerberus.remediation", ans.Remediation.String())
	repl.Set("http.cerberus.origin", "appsec")
	repl.Set("http.cerberus.scenario", "")
	var cause error
	if h.Errors {
		cause = fmt.Errorf("cerberus: %s: %s by AppSec", addr, ans.Remediation)
	}
	d := PageData{Status: http.StatusForbidden, Title: "Access denied", IP: addr.String(),
		Remediation: ans.Remediation.String(), Origin: "appsec"}
	if ans.Remediation == Captcha {
		passed, err := h.captcha(w, r, addr, true, d, cause)
		if passed {
			return next.ServeHTTP(w, r)
		}
		return err
	}
	return h.refuse(w, d, cause)
}

// AppendAppsecAnswer appends an AppSec answer frame (the server side; tests).
func AppendAppsecAnswer(dst []byte, id uint32, a AppsecAnswer) []byte {
	start := len(dst)
	dst = appendHeader(dst, KindAppsecAnswer, id)
	dst = append(dst, byte(a.Remediation), a.Reason)
	return finish(dst, start)
}

// decodeAppsecAnswer reads the payload of a 0x85 frame.
func decodeAppsecAnswer(p *payload) AppsecAnswer {
	a := AppsecAnswer{Remediation: Remediation(p.u8()), Reason: p.u8()}
	if p.err == nil && (a.Remediation > Captcha || a.Reason > AppsecOff) {
		p.fail("bad_value")
	}
	return a
}

var appsecOutcomes = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "http_cerberus",
	Name:      "appsec_total",
	Help:      "AppSec answers through the cerberus daemon, by remediation (allow, ban, captcha) or unavailable.",
}, []string{"remediation"})
