package cerberus

import (
	"sync"
	"testing"
	"unsafe"
)

// Each stripe has a cache line of its own, and nothing added is lost to concurrent
// takes.
func TestStripes(t *testing.T) {
	if unsafe.Sizeof(stripe{}) != 64 || unsafe.Sizeof(refusedStripe{}) != 64 {
		t.Fatalf("stripe %d bytes, refused stripe %d bytes; want 64", unsafe.Sizeof(stripe{}), unsafe.Sizeof(refusedStripe{}))
	}
	var s stripes
	var wg sync.WaitGroup
	var taken int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 1000; i++ {
			taken += s.take()
		}
	}()
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 10000; i++ {
				s.add(uint32(g*31+i), 1)
			}
		}(g)
	}
	wg.Wait()
	<-done
	if got := taken + s.sum(); got != 40000 {
		t.Fatalf("%d counted, want 40000", got)
	}
}
