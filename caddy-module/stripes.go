package cerberus

// Counters that every request of a busy Caddy touches at once from every core. One
// atomic word written by all cores moves its cache line from core to core on each
// add; a stripe per cache line, picked by a per-request hint, keeps two requests on
// two cores off each other's line, and a reader sums the stripes.

import (
	"net/http"
	"sync/atomic"
	"unsafe"
)

// stripeCount is a power of two, above the cores Caddy usually runs on.
const stripeCount = 16

type stripe struct {
	n atomic.Int64
	_ [56]byte // one cache line per stripe
}

// stripes is a counter spread over stripeCount cache lines.
type stripes [stripeCount]stripe

// stripeOf is the stripe index of hint (see hintOf), for every striped structure.
func stripeOf(hint uint32) uint32 { return hint & (stripeCount - 1) }

// add adds d to the stripe of hint.
func (s *stripes) add(hint uint32, d int64) { s[stripeOf(hint)].n.Add(d) }

// sum is the counter's value: exact when no add runs, and never short of the adds
// that returned before it began.
func (s *stripes) sum() int64 {
	var t int64
	for i := range s {
		t += s[i].n.Load()
	}
	return t
}

// take returns the count and zeroes it; an add that runs meanwhile is in this take or
// the next, never lost.
func (s *stripes) take() int64 {
	var t int64
	for i := range s {
		t += s[i].n.Swap(0)
	}
	return t
}

// hintOf picks a request's stripe from where its *http.Request lives: requests
// served at the same time on two cores were allocated apart, so they land on
// different stripes as often as a random pick would, even from one client address.
func hintOf(r *http.Request) uint32 {
	p := uint64(uintptr(unsafe.Pointer(r)))
	return uint32((p >> 7) ^ (p >> 13))
}
