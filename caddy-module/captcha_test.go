package cerberus

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

// decodeCaptchaRequest joins the frames of one request (the layout of PROTOCOL.md
// section 3.4) and reads its fields back.
func decodeCaptchaRequest(t testing.TB, r io.Reader) (uint32, CaptchaRequest) {
	t.Helper()
	var msg []byte
	var id uint32
	for {
		head := make([]byte, 2)
		if _, err := io.ReadFull(r, head); err != nil {
			t.Fatalf("read: %v", err)
		}
		frame := make([]byte, binary.BigEndian.Uint16(head))
		if _, err := io.ReadFull(r, frame); err != nil {
			t.Fatalf("read: %v", err)
		}
		if len(frame)+2 > MaxFrameSize || frame[0] != 1 || frame[1] != KindCaptcha {
			t.Fatalf("bad frame % x", frame[:6])
		}
		id = binary.BigEndian.Uint32(frame[2:6])
		msg = append(msg, frame[7:]...)
		if frame[6] == 0 {
			break
		}
	}
	var req CaptchaRequest
	n := 4
	if msg[0] == 6 {
		n = 16
	}
	req.Addr, _ = netip.AddrFromSlice(msg[1 : 1+n])
	m := msg[1+n:]
	req.HTTPS = m[0]&1 == 1
	req.FromAppsec = m[0]&2 == 2
	l := int(m[1])
	req.Method = string(m[2 : 2+l])
	m = m[2+l:]
	l = int(binary.BigEndian.Uint16(m))
	req.URI = string(m[2 : 2+l])
	m = m[2+l:]
	l = int(binary.BigEndian.Uint16(m))
	req.Cookie = string(m[2 : 2+l])
	return id, req
}

// encodeCaptchaAnswer writes an answer as the daemon does (section 4.4).
func encodeCaptchaAnswer(id uint32, a CaptchaAnswer) []byte {
	m := []byte{byte(a.Action)}
	if a.Action == CaptchaRespond {
		m = binary.BigEndian.AppendUint16(m, uint16(a.Status))
		m = append(m, byte(len(a.Headers)))
		for _, kv := range a.Headers {
			m = putText(m, kv[0], false)
			m = putText(m, kv[1], true)
		}
		m = append(m, a.Body...)
	}
	var out []byte
	for {
		n := min(len(m), captchaChunk)
		more := byte(0)
		if n < len(m) {
			more = 1
		}
		out = binary.BigEndian.AppendUint16(out, uint16(7+n))
		out = append(out, 1, KindCaptchaAnswer)
		out = binary.BigEndian.AppendUint32(out, id)
		out = append(append(out, more), m[:n]...)
		m = m[n:]
		if more == 0 {
			return out
		}
	}
}

// captchaDaemon answers one captcha request with answer and hands back what it got.
func captchaDaemon(t *testing.T, answer CaptchaAnswer) (string, chan CaptchaRequest) {
	path := socketPath(t)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan CaptchaRequest, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		id, req := decodeCaptchaRequest(t, c)
		got <- req
		_, _ = c.Write(encodeCaptchaAnswer(id, answer))
	}()
	return path, got
}

func TestCaptchaRequestSpansFramesAndCarriesTheCookie(t *testing.T) {
	long := "/search?q=" + strings.Repeat("x", 3000)
	page := CaptchaAnswer{Action: CaptchaRespond, Status: 403,
		Headers: [][2]string{{"Content-Type", "text/html; charset=utf-8"},
			{"Content-Security-Policy", "default-src 'none'"}},
		Body: bytes.Repeat([]byte("<p>challenge</p>"), 600)}
	path, got := captchaDaemon(t, page)
	h := provisioned(t, &Handler{Socket: path, SnapshotDir: "off"})
	r := httptest.NewRequest(http.MethodGet, "http://example.com"+long, nil)
	r.AddCookie(&http.Cookie{Name: CaptchaCookie, Value: "123.abc"})
	w := httptest.NewRecorder()
	passed, err := h.captcha(w, r, netip.MustParseAddr("192.0.2.9"), false, PageData{Status: 403}, nil)
	if passed || err != nil {
		t.Fatalf("passed %v err %v", passed, err)
	}
	req := <-got
	want := CaptchaRequest{Addr: netip.MustParseAddr("192.0.2.9"), Method: "GET", URI: long, Cookie: "123.abc"}
	if req != want {
		t.Fatalf("daemon got %+v", req)
	}
	if w.Code != 403 || w.Body.String() != string(page.Body) ||
		w.Header().Get("Content-Security-Policy") != "default-src 'none'" {
		t.Fatalf("wrote %d %v (%d bytes)", w.Code, w.Header(), w.Body.Len())
	}
}

func TestCaptchaRedirectPassAndRefuse(t *testing.T) {
	redirect := CaptchaAnswer{Action: CaptchaRespond, Status: 303,
		Headers: [][2]string{{"Location", "/shop?x=1"}, {"Set-Cookie", "cerberus_captcha=1.x; HttpOnly"}}}
	path, _ := captchaDaemon(t, redirect)
	h := provisioned(t, &Handler{Socket: path, SnapshotDir: "off"})
	w := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "http://example.com/shop?__cerberus_captcha=x", nil)
	if passed, _ := h.captcha(w, r, netip.MustParseAddr("192.0.2.9"), false, PageData{Status: 403}, nil); passed {
		t.Fatal("a redirect is not a pass")
	}
	if w.Code != 303 || w.Header().Get("Location") != "/shop?x=1" || !strings.HasPrefix(w.Header().Get("Set-Cookie"), "cerberus_captcha=") {
		t.Fatalf("wrote %d %v", w.Code, w.Header())
	}

	path, _ = captchaDaemon(t, CaptchaAnswer{Action: CaptchaPass})
	h = provisioned(t, &Handler{Socket: path, SnapshotDir: "off"})
	if passed, err := h.captcha(httptest.NewRecorder(), r, netip.MustParseAddr("192.0.2.9"), false, PageData{Status: 403}, nil); !passed || err != nil {
		t.Fatalf("pass: %v %v", passed, err)
	}

	path, _ = captchaDaemon(t, CaptchaAnswer{Action: CaptchaRefuse})
	h = provisioned(t, &Handler{Socket: path, SnapshotDir: "off"})
	w = httptest.NewRecorder()
	passed, _ := h.captcha(w, r, netip.MustParseAddr("192.0.2.9"), false, PageData{Status: 403, Remediation: "captcha"}, nil)
	if passed || w.Code != 403 || !strings.Contains(w.Body.String(), "captcha") {
		t.Fatalf("refuse: %v %d %q", passed, w.Code, w.Body.String())
	}

	// No daemon: refused, never passed.
	h = provisioned(t, &Handler{Socket: socketPath(t), SnapshotDir: "off"})
	w = httptest.NewRecorder()
	if passed, _ := h.captcha(w, r, netip.MustParseAddr("192.0.2.9"), false, PageData{Status: 403}, nil); passed || w.Code != 403 {
		t.Fatalf("no daemon: %v %d", passed, w.Code)
	}
}

func TestCaptchaAnswerDecodingRejectsGarbage(t *testing.T) {
	for _, m := range [][]byte{{}, {9}, {0, 1}, {1, 0}, {1, 1, 0x2f, 1, 5, 'a'}} {
		if _, err := parseCaptchaAnswer(m); err == nil {
			t.Errorf("% x decoded", m)
		}
	}
}
