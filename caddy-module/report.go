package cerberus

// Counts of the lookups answered from the mapped snapshot, reported to the daemon in
// batches over the socket (the report frame, PROTOCOL.md section 3.3), so its
// Prometheus counters and the usage metrics it pushes to LAPI include them.

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// KindReport is the report request; the daemon answers it with a pong.
const KindReport byte = 0x03

// reportEvery is the interval between two reports.
const reportEvery = time.Second

type countKey struct {
	remediation      Remediation
	flags            uint8
	origin, scenario string
	typ              string
}

// reportCounts counts answers: an allow is one atomic add to a stripe, a refusal
// takes the lock of its stripe's map (both striped by the request, stripes.go, so
// two cores refusing at once do not queue on one lock).
type reportCounts struct {
	allowed  stripes
	bypassed stripes
	refused  [stripeCount]refusedStripe
}

type refusedStripe struct {
	mu sync.Mutex
	m  map[countKey]uint64
	_  [48]byte // with the mutex and the map pointer, one cache line
}

func newReportCounts() *reportCounts {
	c := &reportCounts{}
	for i := range c.refused {
		c.refused[i].m = map[countKey]uint64{}
	}
	return c
}

// add counts a; hint picks the stripe (hintOf).
func (c *reportCounts) add(a Answer, hint uint32) {
	if a.Remediation == Allow {
		if a.Flags&FlagBypassed != 0 {
			c.bypassed.add(hint, 1)
		} else {
			c.allowed.add(hint, 1)
		}
		return
	}
	k := countKey{a.Remediation, a.Flags, a.Origin, a.Scenario, a.Type}
	st := &c.refused[stripeOf(hint)]
	st.mu.Lock()
	st.m[k]++
	st.mu.Unlock()
}

// take returns the counts since the last take and resets them.
func (c *reportCounts) take() map[countKey]uint64 {
	out := map[countKey]uint64{}
	for i := range c.refused {
		st := &c.refused[i]
		st.mu.Lock()
		m := st.m
		if len(m) > 0 {
			st.m = map[countKey]uint64{}
		}
		st.mu.Unlock()
		for k, n := range m {
			out[k] += n
		}
	}
	if n := c.allowed.take(); n > 0 {
		out[countKey{remediation: Allow}] += uint64(n)
	}
	if n := c.bypassed.take(); n > 0 {
		out[countKey{remediation: Allow, flags: FlagBypassed}] += uint64(n)
	}
	return out
}

// putBack returns counts that could not be sent, for the next report.
func (c *reportCounts) putBack(m map[countKey]uint64) {
	st := &c.refused[0]
	st.mu.Lock()
	for k, n := range m {
		st.m[k] += n
	}
	st.mu.Unlock()
}

func cut255(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= 255 {
		return s
	}
	i := 255
	for i > 0 && s[i]&0xC0 == 0x80 { // do not split a character
		i--
	}
	return s[:i]
}

// appendReport appends one report frame holding entries; the caller keeps it under
// the maximum frame size (reportFrames does).
func appendReport(dst []byte, id uint32, entries []reportEntry) []byte {
	start := len(dst)
	dst = appendHeader(dst, KindReport, id)
	for _, e := range entries {
		dst = append(dst, byte(e.key.remediation), e.key.flags)
		dst = binary.BigEndian.AppendUint32(dst, e.count)
		for _, s := range []string{e.key.origin, e.key.scenario, e.key.typ} {
			dst = append(dst, byte(len(s)))
			dst = append(dst, s...)
		}
	}
	return finish(dst, start)
}

type reportEntry struct {
	key   countKey
	count uint32
}

// reportFrames splits counts into groups that each fit one frame (at most 1024
// bytes), counts above 2^32-1 split over several entries.
func reportFrames(m map[countKey]uint64) [][]reportEntry {
	var frames [][]reportEntry
	var cur []reportEntry
	size := 8
	for k, n := range m {
		k.origin, k.scenario, k.typ = cut255(k.origin), cut255(k.scenario), cut255(k.typ)
		for n > 0 {
			c := uint32(min(n, 0xffffffff))
			n -= uint64(c)
			need := 9 + len(k.origin) + len(k.scenario) + len(k.typ)
			if size+need > 1024 {
				frames = append(frames, cur)
				cur, size = nil, 8
			}
			cur = append(cur, reportEntry{k, c})
			size += need
		}
	}
	if len(cur) > 0 {
		frames = append(frames, cur)
	}
	return frames
}

// Report sends counts to the daemon, one frame per group, each answered by a pong.
func (c *Client) Report(ctx context.Context, frames [][]reportEntry) error {
	for i, f := range frames {
		resp, err := c.call(ctx, func(id uint32, b []byte) []byte { return appendReport(b, id, f) })
		if err == nil && resp.Kind != KindPong {
			err = fmt.Errorf("unexpected answer kind 0x%02x to a report", resp.Kind)
		}
		if err != nil {
			return &reportError{sent: i, err: err}
		}
	}
	return nil
}

type reportError struct {
	sent int
	err  error
}

func (e *reportError) Error() string { return "cerberus: report: " + e.err.Error() }
func (e *reportError) Unwrap() error { return e.err }

// runReporter sends the counts every reportEvery until stop is closed, then once more.
func runReporter(client *Client, counts *reportCounts, logger *zap.Logger, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(reportEvery)
	defer t.Stop()
	failed := false
	send := func(timeout time.Duration) {
		m := counts.take()
		if len(m) == 0 {
			return
		}
		frames := reportFrames(m)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		err := client.Report(ctx, frames)
		cancel()
		if err != nil {
			sent := 0
			if re, ok := err.(*reportError); ok {
				sent = re.sent
			}
			back := map[countKey]uint64{}
			for _, f := range frames[sent:] {
				for _, e := range f {
					back[e.key] += uint64(e.count)
				}
			}
			counts.putBack(back)
			if !failed {
				logger.Warn("cerberus: cannot report lookup counts to the daemon; kept for the next report", zap.Error(err))
			}
		} else if failed {
			logger.Info("cerberus: lookup counts reported to the daemon again")
		}
		failed = err != nil
	}
	for {
		select {
		case <-stop:
			send(200 * time.Millisecond)
			return
		case <-t.C:
			send(time.Second)
		}
	}
}
