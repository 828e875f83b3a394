package cerberus

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeDaemon serves the protocol on a Unix socket in a test's temp dir, with
// answers chosen by the test. It decodes every request of a read and answers them
// with one write, like the real daemon.
type fakeDaemon struct {
	t    testing.TB
	path string
	ln   net.Listener

	mu       sync.Mutex
	answers  map[netip.Addr]Answer // addresses not in it get allow
	notReady bool
	silent   bool          // read requests, never answer
	delay    time.Duration // before each batch of answers
	reverse  bool          // answer each batch in reverse order
	dropN    int           // close the connection on the next dropN batches instead of answering
	errFor   map[netip.Addr]ErrorCode
	conns    []net.Conn

	appsecAnswer AppsecAnswer // the answer to every AppSec request (default: allow)
	appsecSeen   [][]byte     // the AppSec frames received, whole

	captchaAnswer CaptchaAnswer    // the answer to every one-frame captcha request (default: refuse, as a daemon without a provider)
	captchaSeen   []CaptchaRequest // the captcha requests received

	lookups  atomic.Int64
	accepted atomic.Int64
	dropped  atomic.Int64 // batches dropped by dropN
}

func socketPath(t testing.TB) string {
	return filepath.Join(t.TempDir(), "cerberus.sock")
}

func startFake(t testing.TB, path string) *fakeDaemon {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("listen %s: %v", path, err)
	}
	f := &fakeDaemon{t: t, path: path, ln: ln, answers: map[netip.Addr]Answer{}, errFor: map[netip.Addr]ErrorCode{},
		captchaAnswer: CaptchaAnswer{Action: CaptchaRefuse}}
	go f.acceptLoop()
	t.Cleanup(f.stop)
	return f
}

func (f *fakeDaemon) set(addr string, a Answer) {
	f.mu.Lock()
	f.answers[netip.MustParseAddr(addr)] = a
	f.mu.Unlock()
}

func (f *fakeDaemon) configure(fn func(f *fakeDaemon)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

// stop closes the listener (which unlinks the socket) and every connection: the
// daemon is gone.
func (f *fakeDaemon) stop() {
	_ = f.ln.Close()
	f.mu.Lock()
	for _, c := range f.conns {
		_ = c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	_ = os.Remove(f.path)
}

func (f *fakeDaemon) acceptLoop() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.accepted.Add(1)
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		go f.serve(c)
	}
}

func (f *fakeDaemon) serve(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 0, 64*1024)
	for {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		var reqs []Request
		off := 0
		for {
			if rest := buf[off:]; len(rest) >= 12 && rest[3] == KindAppsec {
				size := int(binary.BigEndian.Uint32(rest[8:]))
				if len(rest) < 12+size {
					break
				}
				f.mu.Lock()
				ans := f.appsecAnswer
				f.appsecSeen = append(f.appsecSeen, append([]byte(nil), rest[:12+size]...))
				f.mu.Unlock()
				_, _ = c.Write(AppendAppsecAnswer(nil, binary.BigEndian.Uint32(rest[4:]), ans))
				off += 12 + size
				continue
			}
			if rest := buf[off:]; len(rest) >= 8 && rest[3] == KindCaptcha {
				size := 2 + int(binary.BigEndian.Uint16(rest))
				if len(rest) < size {
					break
				}
				id, req := decodeCaptchaRequest(f.t, bytes.NewReader(rest[:size]))
				f.mu.Lock()
				ans := f.captchaAnswer
				f.captchaSeen = append(f.captchaSeen, req)
				f.mu.Unlock()
				_, _ = c.Write(encodeCaptchaAnswer(id, ans))
				off += size
				continue
			}
			r, used, derr := DecodeRequest(buf[off:])
			if errors.Is(derr, ErrIncomplete) {
				break
			}
			if derr != nil {
				var fe *FrameError
				errors.As(derr, &fe)
				_, _ = c.Write(AppendResponse(nil, Response{Kind: KindError, ID: fe.ID, Code: fe.WireCode(), Message: fe.Reason}))
				return
			}
			off += used
			reqs = append(reqs, r)
		}
		buf = buf[:copy(buf, buf[off:])]
		if err != nil {
			return
		}
		if len(reqs) == 0 {
			continue
		}
		f.mu.Lock()
		silent, delay, reverse := f.silent, f.delay, f.reverse
		drop := f.dropN > 0
		if drop {
			f.dropN--
		}
		f.mu.Unlock()
		if drop {
			f.dropped.Add(1)
			return
		}
		if silent {
			continue
		}
		if delay > 0 {
			time.Sleep(delay)
		}
		if reverse {
			slices.Reverse(reqs)
		}
		var out []byte
		for _, r := range reqs {
			out = AppendResponse(out, f.answer(r))
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

func (f *fakeDaemon) answer(r Request) Response {
	if r.Kind == KindPing {
		return Response{Kind: KindPong, ID: r.ID}
	}
	f.lookups.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if code, ok := f.errFor[r.Addr]; ok {
		return Response{Kind: KindError, ID: r.ID, Code: code, Message: code.String()}
	}
	a := f.answers[r.Addr]
	if f.notReady {
		a.Status = StatusNotReady
	}
	return Response{Kind: KindLookupAnswer, ID: r.ID, Answer: a}
}
