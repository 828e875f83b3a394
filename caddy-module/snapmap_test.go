package cerberus

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

const vectorsDir = "../bouncer-api/testdata/segments"

// segDir is a snapshot directory laid out as the daemon does, from the shared vectors:
// base.seg as serial 1, overlay.seg as serial 2, overlay-disabled.seg as serial 3.
type segDir struct {
	t   testing.TB
	dir string
}

func newSegDir(t testing.TB) *segDir {
	d := &segDir{t: t, dir: filepath.Join(t.TempDir(), "snapshot")}
	if err := os.Mkdir(d.dir, 0o750); err != nil {
		t.Fatal(err)
	}
	for serial, src := range map[int]string{1: "base.seg", 2: "overlay.seg", 3: "overlay-disabled.seg"} {
		b, err := os.ReadFile(filepath.Join(vectorsDir, src))
		if err != nil {
			t.Fatal(err)
		}
		kind := "overlay"
		if serial == 1 {
			kind = "base"
		}
		name := filepath.Join(d.dir, kind+"-"+pad20(serial)+".seg")
		if err := os.WriteFile(name, b, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func pad20(n int) string {
	s := []byte("00000000000000000000")
	for i := len(s) - 1; n > 0; i-- {
		s[i] = byte('0' + n%10)
		n /= 10
	}
	return string(s)
}

// point writes `current` in place (same inode, as the daemon's mapped writes) naming
// base and overlay, with a fresh heartbeat (0: stopped).
func (d *segDir) point(base, overlay uint64, heartbeat int64) {
	path := filepath.Join(d.dir, "current")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		d.t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, currentLen)
	copy(b, currentMagic)
	le.PutUint32(b[8:], 1)
	le.PutUint64(b[24:], base)
	le.PutUint64(b[32:], overlay)
	le.PutUint64(b[40:], uint64(heartbeat))
	if _, err := f.WriteAt(b, 0); err != nil {
		d.t.Fatal(err)
	}
}

func loadCase(t *testing.T, name string) (uint32, map[netip.Addr]Answer) {
	raw, err := os.ReadFile(filepath.Join(vectorsDir, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var exp segExpected
	if err := json.Unmarshal(raw, &exp); err != nil {
		t.Fatal(err)
	}
	for _, c := range exp.Cases {
		if c.Name != name {
			continue
		}
		out := map[netip.Addr]Answer{}
		for _, a := range c.Answers {
			ans := Answer{ExpiresInS: a.ExpiresInS, Origin: a.Origin, Scenario: a.Scenario, Type: a.Type}
			for _, r := range []Remediation{Allow, Ban, Captcha, Throttle, Other} {
				if r.String() == a.Remediation {
					ans.Remediation = r
				}
			}
			if a.Bypassed {
				ans.Flags |= FlagBypassed
			}
			out[netip.MustParseAddr(a.IP).Unmap()] = ans
		}
		return exp.Now, out
	}
	t.Fatalf("no case %q", name)
	return 0, nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// The reader maps the set named by `current`, switches when it changes, falls back
// (ok=false, with a log line saying why) when the daemon stopped, its heartbeat is
// stale or the directory is gone, and maps again when the segments come back.
func TestSnapshotReaderSwitchesAndFallsBack(t *testing.T) {
	d := newSegDir(t)
	core, logs := observer.New(zap.InfoLevel)
	now, withOverlay := loadCase(t, "base and overlay")
	_, baseOnly := loadCase(t, "base only")
	r := acquireSnapshot(d.dir, zap.New(core))
	defer r.release()
	if _, ok := r.lookup(netip.MustParseAddr("192.0.2.1"), now, 0); ok {
		t.Fatal("answered without a current file")
	}
	if logs.FilterMessageSnippet("not using the snapshot segments").Len() == 0 {
		t.Fatal("no log line saying why the segments are not used")
	}
	agrees := func(want map[netip.Addr]Answer) bool {
		for a, w := range want {
			if got, ok := r.lookup(a, now, 0); !ok || got != w {
				return false
			}
		}
		return true
	}
	d.point(1, 2, time.Now().Unix())
	waitFor(t, "base and overlay mapped", func() bool { return agrees(withOverlay) })
	d.point(1, 0, time.Now().Unix())
	waitFor(t, "switch to the base alone", func() bool { return agrees(baseOnly) })
	d.point(1, 0, 0)
	waitFor(t, "fallback after the daemon stopped", func() bool {
		_, ok := r.lookup(netip.MustParseAddr("192.0.2.1"), now, 0)
		return !ok
	})
	d.point(1, 2, time.Now().Unix())
	waitFor(t, "back to the segments", func() bool { return agrees(withOverlay) })
	d.point(1, 2, time.Now().Add(-time.Minute).Unix())
	waitFor(t, "fallback on a stale heartbeat", func() bool {
		_, ok := r.lookup(netip.MustParseAddr("192.0.2.1"), now, 0)
		return !ok
	})
	d.point(1, 2, time.Now().Unix())
	waitFor(t, "back again", func() bool { return agrees(withOverlay) })
	if err := os.RemoveAll(d.dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "fallback after the directory is removed", func() bool {
		_, ok := r.lookup(netip.MustParseAddr("192.0.2.1"), now, 0)
		return !ok
	})
	d2 := newSegDir(t)
	if err := os.Rename(d2.dir, d.dir); err != nil {
		t.Fatal(err)
	}
	d.point(1, 0, time.Now().Unix())
	waitFor(t, "a new directory mapped", func() bool { return agrees(baseOnly) })
	if logs.FilterMessageSnippet("looking up in the daemon's mapped snapshot").Len() < 3 {
		t.Errorf("switches back to the segments not logged: %v", logs.All())
	}
}

// Sets switched back to back under concurrent lookups: every answer is the one of a
// set that was in force (never a mix, never garbage), and replaced mappings are unmapped.
func TestSnapshotReaderStress(t *testing.T) {
	d := newSegDir(t)
	d.point(1, 2, time.Now().Unix())
	now, withOverlay := loadCase(t, "base and overlay")
	_, baseOnly := loadCase(t, "base only")
	_, disabled := loadCase(t, "protection disabled")
	r := acquireSnapshot(d.dir, zap.NewNop())
	defer r.release()
	var addrs []netip.Addr
	for a := range withOverlay {
		addrs = append(addrs, a)
	}
	var stop atomic.Bool
	var lookups, wrong atomic.Int64
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; !stop.Load(); i++ {
				a := addrs[i%len(addrs)]
				got, ok := r.lookup(a, now, uint32(i)) // every stripe of the count
				if !ok {
					continue
				}
				lookups.Add(1)
				if got != withOverlay[a] && got != baseOnly[a] && got != disabled[a] {
					wrong.Add(1)
				}
			}
		}(g)
	}
	sets := [][2]uint64{{1, 0}, {1, 2}, {1, 3}}
	for i := 0; i < 300; i++ {
		s := sets[i%len(sets)]
		d.point(s[0], s[1], time.Now().Unix())
		time.Sleep(3 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	if wrong.Load() != 0 || lookups.Load() == 0 {
		t.Fatalf("%d wrong answers in %d lookups", wrong.Load(), lookups.Load())
	}
	t.Logf("%d lookups over 300 switches", lookups.Load())
}

// Handlers of one process share one reader per directory: a config reload provisions
// the new handler (same mapping, nothing mapped again) before the old one's cleanup,
// and lookups go on through it.
func TestSnapshotReaderSharedAcrossReloads(t *testing.T) {
	d := newSegDir(t)
	d.point(1, 2, time.Now().Unix())
	now, withOverlay := loadCase(t, "base and overlay")
	old := acquireSnapshot(d.dir, zap.NewNop())
	set := old.cur.Load()
	if set == nil {
		t.Fatal("nothing mapped")
	}
	reloaded := acquireSnapshot(d.dir, zap.NewNop())
	if reloaded != old || reloaded.cur.Load() != set {
		t.Fatal("a second handler mapped the directory again")
	}
	old.release()
	for a, want := range withOverlay {
		if got, ok := reloaded.lookup(a, now, 0); !ok || got != want {
			t.Fatalf("%s after the old handler's cleanup: %+v %v, want %+v", a, got, ok, want)
		}
	}
	reloaded.release()
	readersMu.Lock()
	left := len(readers)
	readersMu.Unlock()
	if left != 0 {
		t.Fatalf("%d readers left after the last release", left)
	}
}
