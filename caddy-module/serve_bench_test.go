package cerberus

import (
	"context"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// What the handler adds to a request Caddy serves, from the segments, on every core
// at once (b.RunParallel), as a Caddy process under load runs it. Each request gets
// what Caddy's server gives it (a new replacer with one provider mapped, the vars map
// with client_ip, both in
// the context); "bare" is that harness with next called directly, so the handler's
// cost is the difference. The snapshot is
// base-100000.seg of $CERBERUS_BENCH_SEGMENTS (benches/README.md says how to write it),
// mapped as the daemon's base; the requests come from random addresses it allows
// (bare, allowed) or bans (refused: the built-in page).
func BenchmarkServeHTTPMapped(b *testing.B) {
	src := os.Getenv("CERBERUS_BENCH_SEGMENTS")
	if src == "" {
		b.Skip("CERBERUS_BENCH_SEGMENTS not set (see benches/README.md)")
	}
	seg, err := os.ReadFile(filepath.Join(src, "base-100000.seg"))
	if err != nil {
		b.Fatal(err)
	}
	d := &segDir{t: b, dir: filepath.Join(b.TempDir(), "snapshot")}
	if err := os.Mkdir(d.dir, 0o750); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, "base-"+pad20(1)+".seg"), seg, 0o640); err != nil {
		b.Fatal(err)
	}
	d.point(1, 0, time.Now().Unix())
	beat := time.NewTicker(500 * time.Millisecond) // the daemon's heartbeat
	defer beat.Stop()
	go func() {
		for range beat.C {
			d.point(1, 0, time.Now().Unix())
		}
	}()
	path := socketPath(b)
	startFake(b, path)
	h := &Handler{Socket: path, SnapshotDir: d.dir, Appsec: "off"}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = h.Cleanup() }()
	if h.snap.cur.Load() == nil {
		b.Fatal("the segments are not mapped")
	}
	// 4096 random addresses the segments allow, and 4096 of their banned keys.
	var allowed, banned []string
	now := uint32(time.Now().Unix())
	for x := uint32(7); len(allowed) < 4096; {
		x = x*1664525 + 1013904223
		a := netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
		if ans, ok := h.snap.lookup(a, now, 0); ok && ans.Remediation == Allow {
			allowed = append(allowed, a.String())
		}
	}
	v4 := h.snap.cur.Load().b.v4
	for i := 0; i+8 <= len(v4) && len(banned) < 4096; i += 8 * 7 {
		if le.Uint32(v4[i+4:]) == segEmpty {
			continue
		}
		k := le.Uint32(v4[i:])
		a := netip.AddrFrom4([4]byte{byte(k >> 24), byte(k >> 16), byte(k >> 8), byte(k)})
		if ans, ok := h.snap.lookup(a, now, 0); ok && ans.Remediation == Ban {
			banned = append(banned, a.String())
		}
	}
	if len(banned) < 4096 {
		b.Fatalf("%d banned keys found", len(banned))
	}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	run := func(b *testing.B, ips []string, handle func(w http.ResponseWriter, r *http.Request) error) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			base, _ := http.NewRequest(http.MethodGet, "http://example.com/", nil)
			base.RemoteAddr = "127.0.0.1:40000"
			w := &headerWriter{h: http.Header{}}
			for i := int(time.Now().UnixNano()); pb.Next(); i++ {
				clear(w.h)
				ip := ips[i&4095]
				repl := caddy.NewReplacer()
				repl.Map(httpVarsStandIn) // Caddy's server maps its http.* provider first
				c := context.WithValue(base.Context(), caddy.ReplacerCtxKey, repl)
				c = context.WithValue(c, caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip})
				if err := handle(w, base.WithContext(c)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	module := func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, next) }
	b.Run("bare", func(b *testing.B) { run(b, allowed, next.ServeHTTP) })
	b.Run("allowed", func(b *testing.B) {
		run(b, allowed, module)
		if h.snap.cur.Load() == nil || h.counts.allowed.sum() == 0 {
			b.Fatal("the lookups went to the socket")
		}
	})
	b.Run("refused", func(b *testing.B) {
		run(b, banned, module)
		if h.snap.cur.Load() == nil {
			b.Fatal("the lookups went to the socket")
		}
	})
}

// httpVarsStandIn takes the place of the provider of http.* placeholders that Caddy's
// server maps on every request's replacer.
func httpVarsStandIn(string) (any, bool) { return nil, false }

// headerWriter is a ResponseWriter that keeps only its header map, reused as
// net/http reuses a connection's.
type headerWriter struct{ h http.Header }

func (w *headerWriter) Header() http.Header         { return w.h }
func (w *headerWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *headerWriter) WriteHeader(int)             {}
