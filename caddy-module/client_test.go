package cerberus

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func newTestClient(t *testing.T, path string, conns int, timeout time.Duration) *Client {
	t.Helper()
	c := NewClient(path, conns, timeout)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestClientLookup(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	ban := Answer{Remediation: Ban, ExpiresInS: 14400, Origin: "crowdsec", Scenario: "crowdsecurity/ssh-bf", Type: "ban"}
	f.set("192.0.2.1", ban)
	f.set("2001:db8::1", Answer{Remediation: Captcha, Origin: "CAPI", Type: "captcha"})
	c := newTestClient(t, path, 2, time.Second)

	tests := []struct {
		addr string
		want Answer
	}{
		{"192.0.2.1", ban},
		{"::ffff:192.0.2.1", ban}, // sent as IPv4
		{"2001:db8::1", Answer{Remediation: Captcha, Origin: "CAPI", Type: "captcha"}},
		{"198.51.100.9", Answer{}},
	}
	for _, tt := range tests {
		got, err := c.Lookup(context.Background(), netip.MustParseAddr(tt.addr))
		if err != nil {
			t.Fatalf("%s: %v", tt.addr, err)
		}
		if got != tt.want {
			t.Errorf("%s: got %+v, want %+v", tt.addr, got, tt.want)
		}
	}
	if err := c.Ping(context.Background()); err != nil {
		t.Errorf("ping: %v", err)
	}
}

// Many goroutines share two connections; the server answers every batch backwards,
// so only id matching gives each caller its own answer.
func TestClientConcurrentCallersGetTheirOwnAnswers(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.configure(func(f *fakeDaemon) { f.reverse = true })
	const callers, perCaller = 64, 100
	for i := range callers {
		f.set(fmt.Sprintf("10.0.0.%d", i), Answer{Remediation: Ban, Scenario: fmt.Sprintf("s%d", i)})
	}
	c := newTestClient(t, path, 2, 5*time.Second)

	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for i := range callers {
		wg.Go(func() {
			addr := netip.MustParseAddr(fmt.Sprintf("10.0.0.%d", i))
			for range perCaller {
				a, err := c.Lookup(context.Background(), addr)
				if err != nil {
					errs <- err
					return
				}
				if want := fmt.Sprintf("s%d", i); a.Scenario != want {
					errs <- fmt.Errorf("caller %d got %q, want %q", i, a.Scenario, want)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := f.accepted.Load(); n > 2 {
		t.Errorf("%d connections for a pool of 2", n)
	}
}

func TestClientTimeoutThenLateAnswerDropped(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.set("192.0.2.1", Answer{Remediation: Ban, Scenario: "first"})
	f.set("192.0.2.2", Answer{Remediation: Throttle, Scenario: "second"})
	f.configure(func(f *fakeDaemon) { f.delay = 200 * time.Millisecond })
	c := newTestClient(t, path, 1, 50*time.Millisecond)

	_, err := c.Lookup(context.Background(), netip.MustParseAddr("192.0.2.1"))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
	f.configure(func(f *fakeDaemon) { f.delay = 0 })
	// Same connection: the late answer to the first call arrives first and must be
	// dropped, not taken for this call's.
	c.timeout = 2 * time.Second
	a, err := c.Lookup(context.Background(), netip.MustParseAddr("192.0.2.2"))
	if err != nil || a.Scenario != "second" {
		t.Fatalf("got %+v, %v; want the second answer", a, err)
	}
	if n := f.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want the one kept after the timeout", n)
	}
}

func TestClientSilentDaemonTimesOut(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.configure(func(f *fakeDaemon) { f.silent = true })
	c := newTestClient(t, path, 1, 20*time.Millisecond)
	if _, err := c.Lookup(context.Background(), netip.MustParseAddr("192.0.2.1")); !errors.Is(err, ErrTimeout) {
		t.Fatalf("got %v, want ErrTimeout", err)
	}
}

func TestClientNoDaemonFailsAtOnce(t *testing.T) {
	c := newTestClient(t, socketPath(t), 1, time.Second)
	if _, err := c.Lookup(context.Background(), netip.MustParseAddr("192.0.2.1")); !errors.Is(err, ErrConnect) {
		t.Fatalf("got %v, want ErrConnect", err)
	}
}

func TestClientReconnectsAfterDaemonRestart(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	c := newTestClient(t, path, 1, time.Second)
	if _, err := c.Lookup(context.Background(), netip.MustParseAddr("192.0.2.1")); err != nil {
		t.Fatal(err)
	}
	f.stop()
	f2 := startFake(t, path)
	f2.set("192.0.2.1", Answer{Remediation: Ban, Scenario: "after restart"})
	a, err := c.Lookup(context.Background(), netip.MustParseAddr("192.0.2.1"))
	if err != nil || a.Scenario != "after restart" {
		t.Fatalf("got %+v, %v", a, err)
	}
}

// A connection closed under a request is retried once on a new connection.
func TestClientRetriesOnceWhenConnectionBreaks(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.set("192.0.2.1", Answer{Remediation: Ban})
	c := newTestClient(t, path, 1, time.Second)

	f.configure(func(f *fakeDaemon) { f.dropN = 1 })
	a, err := c.Lookup(context.Background(), netip.MustParseAddr("192.0.2.1"))
	if err != nil || a.Remediation != Ban {
		t.Fatalf("one drop: got %+v, %v; want ban after a retry", a, err)
	}

	before := f.dropped.Load()
	f.configure(func(f *fakeDaemon) { f.dropN = 10 })
	_, err = c.Lookup(context.Background(), netip.MustParseAddr("192.0.2.1"))
	if !errors.Is(err, ErrBroken) {
		t.Fatalf("every try dropped: got %v, want ErrBroken", err)
	}
	if n := f.dropped.Load() - before; n != 2 {
		t.Errorf("the call was sent %d times, want 2 (one retry only)", n)
	}
}

func TestClientErrorFrameFailsOnlyThatRequest(t *testing.T) {
	path := socketPath(t)
	f := startFake(t, path)
	f.configure(func(f *fakeDaemon) { f.errFor[netip.MustParseAddr("192.0.2.66")] = CodeBusy })
	c := newTestClient(t, path, 1, time.Second)
	_, err := c.Lookup(context.Background(), netip.MustParseAddr("192.0.2.66"))
	var se *ServerError
	if !errors.As(err, &se) || se.Code != CodeBusy {
		t.Fatalf("got %v, want a busy ServerError", err)
	}
	if _, err := c.Lookup(context.Background(), netip.MustParseAddr("192.0.2.1")); err != nil {
		t.Fatalf("after busy: %v", err)
	}
	if n := f.accepted.Load(); n != 1 {
		t.Errorf("%d connections, want 1 (busy keeps the connection)", n)
	}
}

func TestClientClosed(t *testing.T) {
	path := socketPath(t)
	startFake(t, path)
	c := NewClient(path, 2, time.Second)
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	_ = c.Close()
	if err := c.Ping(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("got %v, want ErrClosed", err)
	}
}

// benchFake starts a fake daemon for a benchmark.
func benchFake(b *testing.B) string {
	path := filepath.Join(b.TempDir(), "cerberus.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	f := &fakeDaemon{path: path, ln: ln, answers: map[netip.Addr]Answer{}, errFor: map[netip.Addr]ErrorCode{}}
	go f.acceptLoop()
	b.Cleanup(f.stop)
	return path
}

// Lookups from many goroutines through a pool of 4 connections to the fake daemon
// (which shares the machine): the cost of the client and the transport.
func BenchmarkClientLookupParallel(b *testing.B) {
	c := NewClient(benchFake(b), DefaultConnections, time.Second)
	defer c.Close()
	addr := netip.MustParseAddr("192.0.2.1")
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Lookup(context.Background(), addr); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// One lookup at a time: the round-trip latency.
func BenchmarkClientLookupSerial(b *testing.B) {
	c := NewClient(benchFake(b), DefaultConnections, time.Second)
	defer c.Close()
	addr := netip.MustParseAddr("192.0.2.1")
	for b.Loop() {
		if _, err := c.Lookup(context.Background(), addr); err != nil {
			b.Fatal(err)
		}
	}
}
