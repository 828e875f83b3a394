package cerberus

import (
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

// The Go encoder gives the bytes of PROTOCOL.md's example (which the Rust decoder's
// test also checks).
func TestReportFrameMatchesProtocolExample(t *testing.T) {
	got := appendReport(nil, 9, []reportEntry{
		{countKey{remediation: Allow}, 1000},
		{countKey{Ban, 0, "cscli", "manual", "ban"}, 3},
	})
	want := "0026010300000009" + "0000000003e8000000" + "010000000003056373636c69066d616e75616c0362616e"
	if hex.EncodeToString(got) != want {
		t.Fatalf("got  %x\nwant %s", got, want)
	}
}

// Counts are split into frames of at most 1024 bytes, strings cut to 255 bytes, and
// nothing is lost or counted twice.
func TestReportCountsAndFrames(t *testing.T) {
	c := newReportCounts()
	for i := 0; i < 500; i++ {
		c.add(Answer{Remediation: Ban, Origin: "crowdsec", Scenario: fmt.Sprintf("scenario/%d", i%120), Type: "ban"}, 0)
		c.add(Answer{}, uint32(i)) // over every stripe
		c.add(Answer{Flags: FlagBypassed}, uint32(i*7))
	}
	c.add(Answer{Remediation: Throttle, Origin: "cscli", Scenario: strings.Repeat("é", 300), Type: "throttle"}, 0)
	m := c.take()
	if len(c.take()) != 0 {
		t.Fatal("take did not reset")
	}
	frames := reportFrames(m)
	if len(frames) < 2 {
		t.Fatalf("%d frames for %d keys", len(frames), len(m))
	}
	var total uint64
	for _, f := range frames {
		b := appendReport(nil, 1, f)
		if len(b) > 1024 {
			t.Fatalf("frame of %d bytes", len(b))
		}
		for _, e := range f {
			total += uint64(e.count)
			if len(e.key.scenario) > 255 {
				t.Fatalf("scenario of %d bytes", len(e.key.scenario))
			}
		}
	}
	if total != 1501 {
		t.Fatalf("%d lookups in the frames, want 1501", total)
	}
	c.putBack(map[countKey]uint64{{remediation: Ban}: 4})
	if got := c.take()[countKey{remediation: Ban}]; got != 4 {
		t.Fatalf("put back %d", got)
	}
}
