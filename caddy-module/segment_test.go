package cerberus

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

type segCase struct {
	Name    string  `json:"name"`
	Base    string  `json:"base"`
	Overlay *string `json:"overlay"`
	Answers []struct {
		IP          string `json:"ip"`
		Remediation string `json:"remediation"`
		Bypassed    bool   `json:"bypassed"`
		FailClosed  bool   `json:"fail_closed"`
		ExpiresInS  uint32 `json:"expires_in_s"`
		Origin      string `json:"origin"`
		Scenario    string `json:"scenario"`
		Type        string `json:"type"`
	} `json:"answers"`
}

type segExpected struct {
	Now   uint32    `json:"now"`
	Cases []segCase `json:"cases"`
}

func readSegment(t testing.TB, path string) *segment {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := parseSegment(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return s
}

// checkSegmentCases requires segLookup to give expected's answer for every address.
func checkSegmentCases(t *testing.T, dir string) int {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "expected.json"))
	if err != nil {
		t.Fatal(err)
	}
	var exp segExpected
	if err := json.Unmarshal(raw, &exp); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, c := range exp.Cases {
		base := readSegment(t, filepath.Join(dir, c.Base))
		var over *segment
		if c.Overlay != nil {
			over = readSegment(t, filepath.Join(dir, *c.Overlay))
		}
		for _, want := range c.Answers {
			addr := netip.MustParseAddr(want.IP).Unmap()
			got := segLookup(base, over, addr, exp.Now)
			if got.Remediation.String() != want.Remediation || got.ExpiresInS != want.ExpiresInS ||
				got.Origin != want.Origin || got.Scenario != want.Scenario || got.Type != want.Type ||
				(got.Flags&FlagBypassed != 0) != want.Bypassed || (got.Flags&FlagFailClosed != 0) != want.FailClosed {
				t.Errorf("%s: %s: got %+v, want %+v", c.Name, want.IP, got, want)
			}
			n++
		}
	}
	return n
}

// The Go reader agrees with the Rust reference lookup on every address of the shared
// segment vectors (bouncer-api/testdata/segments, written by the Rust writer).
func TestSegmentVectors(t *testing.T) {
	n := checkSegmentCases(t, "../bouncer-api/testdata/segments")
	if n < 1000 {
		t.Fatalf("only %d answers checked", n)
	}
}

// The Go half of bouncer-api/tests/segment_property.rs: that test writes random decision
// sets with the Rust writer and the Rust lookup's answers into a directory in the form
// of the shared vectors, and runs this test on it. Skipped when run alone.
func TestSegmentCasesFromEnv(t *testing.T) {
	dir := os.Getenv("CERBERUS_SEGMENT_CASES_DIR")
	if dir == "" {
		t.Skip("CERBERUS_SEGMENT_CASES_DIR not set (bouncer-api's segment_property test sets it)")
	}
	n := checkSegmentCases(t, dir)
	t.Logf("checked %d answers", n)
}

// Damaged files are refused with a reason, never read out of bounds.
func TestSegmentDamaged(t *testing.T) {
	good, err := os.ReadFile("../bouncer-api/testdata/segments/base.seg")
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(b []byte) []byte{
		"too short":      func(b []byte) []byte { return b[:100] },
		"bad magic":      func(b []byte) []byte { b[0] = 'X'; return b },
		"version":        func(b []byte) []byte { b[8] = 2; return b },
		"kind":           func(b []byte) []byte { b[12] = 9; return b },
		"outage":         func(b []byte) []byte { b[44] = 3; return b },
		"length":         func(b []byte) []byte { return append(b, make([]byte, 64)...) },
		"slots not pow2": func(b []byte) []byte { le.PutUint64(b[72:], 3); return b },
		"huge section":   func(b []byte) []byte { le.PutUint64(b[64+4*16+8:], 1<<62); return b },
	}
	for name, damage := range cases {
		b := damage(append([]byte(nil), good...))
		if _, err := parseSegment(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Every truncation of the header region is refused, none panics.
	for n := 0; n < segHeaderLen+64; n++ {
		if _, err := parseSegment(good[:n]); err == nil {
			t.Errorf("truncated to %d: accepted", n)
		}
	}
}

// A lookup allocates nothing (and makes no syscall: it only reads memory).
func TestSegmentLookupAllocatesNothing(t *testing.T) {
	dir := "../bouncer-api/testdata/segments"
	base := readSegment(t, filepath.Join(dir, "base.seg"))
	over := readSegment(t, filepath.Join(dir, "overlay.seg"))
	addrs := []netip.Addr{
		netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("198.51.100.201"),
		netip.MustParseAddr("2001:db8:1:2::5"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("::1"),
	}
	allocs := testing.AllocsPerRun(1000, func() {
		for _, a := range addrs {
			segSink = segLookup(base, over, a, 1_800_000_000)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per run", allocs)
	}
}

// segSink keeps lookups in tests and benchmarks from being optimised away.
var segSink Answer

// BenchmarkSegmentLookup measures the mapped lookup at 100k and 1M decisions, over
// segments written by the Rust writer (bouncer-api/examples/segment_gen) into
// $CERBERUS_BENCH_SEGMENTS as base-100000.seg and base-1000000.seg (benches/README.md
// says how); half the addresses asked are banned keys' neighbours, half random.
func BenchmarkSegmentLookup(b *testing.B) {
	dir := os.Getenv("CERBERUS_BENCH_SEGMENTS")
	if dir == "" {
		b.Skip("CERBERUS_BENCH_SEGMENTS not set (see benches/README.md)")
	}
	for _, n := range []string{"100000", "1000000"} {
		b.Run(n, func(b *testing.B) {
			data, _, err := mapFile(filepath.Join(dir, "base-"+n+".seg"), 0)
			if err != nil {
				b.Fatal(err)
			}
			s, err := parseSegment(data)
			if err != nil {
				b.Fatal(err)
			}
			// Addresses that are keys (read from the table) and random ones.
			var addrs []netip.Addr
			for i := 0; i+8 <= len(s.v4) && len(addrs) < 4096; i += 8 * 97 {
				if le.Uint32(s.v4[i+4:]) != segEmpty {
					k := le.Uint32(s.v4[i:])
					addrs = append(addrs, netip.AddrFrom4([4]byte{byte(k >> 24), byte(k >> 16), byte(k >> 8), byte(k)}))
				}
			}
			x := uint32(12345)
			for len(addrs) < 8192 {
				x = x*1664525 + 1013904223
				addrs = append(addrs, netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)}))
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				segSink = segLookup(s, nil, addrs[i&8191], 1_800_000_000)
			}
		})
	}
}

// BenchmarkReferenceGoMap is the yardstick of the same run: a plain Go map of the same
// number of IPv4 keys, asked the same mix (half known keys, half random).
func BenchmarkReferenceGoMap(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			m := make(map[uint32]uint32, n)
			x := uint32(99)
			keys := make([]uint32, 0, 8192)
			for len(m) < n {
				x = x*1664525 + 1013904223
				m[x] = x
				if len(keys) < 4096 && len(m)%97 == 0 {
					keys = append(keys, x)
				}
			}
			for len(keys) < 8192 {
				x = x*22695477 + 1
				keys = append(keys, x)
			}
			var sink uint32
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				sink += m[keys[i&8191]]
			}
			refSink = sink
		})
	}
}

var refSink uint32
