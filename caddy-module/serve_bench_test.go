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
// mapped as the daemon's base; the requests come from random addresses it allows.
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
	// Random addresses the segments allow (some of the vectors' ranges are wide).
	var ips []string
	for x := uint32(7); len(ips) < 4096; {
		x = x*1664525 + 1013904223
		a := netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)})
		if ans, ok := h.snap.lookup(a, uint32(time.Now().Unix()), 0); ok && ans.Remediation == Allow {
			ips = append(ips, a.String())
		}
	}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	run := func(b *testing.B, handle func(w http.ResponseWriter, r *http.Request) error) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			base, _ := http.NewRequest(http.MethodGet, "http://example.com/", nil)
			base.RemoteAddr = "127.0.0.1:40000"
			w := discardWriter{}
			for i := int(time.Now().UnixNano()); pb.Next(); i++ {
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
	b.Run("bare", func(b *testing.B) { run(b, next.ServeHTTP) })
	b.Run("module", func(b *testing.B) {
		run(b, func(w http.ResponseWriter, r *http.Request) error { return h.ServeHTTP(w, r, next) })
		if h.snap.cur.Load() == nil || h.counts.allowed.sum() == 0 {
			b.Fatal("the lookups went to the socket")
		}
	})
}

// httpVarsStandIn takes the place of the provider of http.* placeholders that Caddy's
// server maps on every request's replacer.
func httpVarsStandIn(string) (any, bool) { return nil, false }

// discardWriter is a ResponseWriter that keeps nothing.
type discardWriter struct{}

func (discardWriter) Header() http.Header         { return http.Header{} }
func (discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (discardWriter) WriteHeader(int)             {}
