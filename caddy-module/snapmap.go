package cerberus

// The mapped snapshot: the daemon's segment files (SNAPSHOT.md) mapped read-only and
// switched without a lock on the request path.
//
// One snapReader per directory is shared by every handler of the process (and across
// config reloads, which provision the new handlers before cleaning up the old ones), so
// a reload maps nothing again. A refresher goroutine reads the mapped `current` file
// (a seqlock: no syscall to notice a new set), maps new segment files, and publishes a
// snapSet through an atomic.Pointer. Lookups hold a reference count on the set they
// read; a replaced set is unmapped only once it is retired and its count is zero:
//
//	lookup:    s := cur.Load(); s.refs.add(k, 1); if s.retired.Load() { s.refs.add(k, -1); retry }
//	refresher: cur.Store(next); s.retired.Store(true); ... later, s.refs.sum() == 0 -> unmap
//
// Go's atomics are sequentially consistent, so either the refresher sees the lookup's
// increment (and waits), or the lookup sees `retired` (and leaves before touching the
// mapping). Answers copy nothing out of the mapping (their strings were copied at
// parse time), so they stay valid after the unmap. The count is striped (stripes.go):
// a lookup adds to and takes from the stripe of its request, the refresher sums them,
// and the argument holds for each stripe as for one word.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"
)

const (
	currentLen   = 4096
	currentMagic = "CERBCURR"
	// snapTick is how often the refresher reads `current`: the bound on how late an
	// unban reaches the module (plus the daemon's write).
	snapTick = 2 * time.Millisecond
	// snapStale: a heartbeat older than this means the daemon is gone.
	snapStale = 5 * time.Second
	// snapStatEvery: how often the refresher checks that `current` is still the file it
	// mapped (removed directory, another daemon).
	snapStatEvery = 500 * time.Millisecond
)

// mapping is one mapped segment file.
type mapping struct {
	name  string
	data  []byte
	seg   *segment
	users int // sets that use it (refresher only)
}

func mapFile(path string, size int) ([]byte, uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	n := int(st.Size())
	if size > 0 && n != size {
		return nil, 0, fmt.Errorf("%s: %d bytes, want %d", path, n, size)
	}
	if n < segHeaderLen {
		return nil, 0, fmt.Errorf("%s: only %d bytes", path, n)
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, n, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, 0, fmt.Errorf("mmap %s: %w", path, err)
	}
	var ino uint64
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		ino = sys.Ino
	}
	return data, ino, nil
}

// snapSet is one base and at most one overlay, in force together.
type snapSet struct {
	base, overlay *mapping
	b, o          *segment
	// alive points at the heartbeat word of the mapped `current`: the daemon zeroes it
	// when it stops, and lookups then go to the socket at once.
	alive   *uint64
	refs    stripes // lookups reading the set now
	retired atomic.Bool
}

// snapReader maps one snapshot directory.
type snapReader struct {
	dir    string
	logger *zap.Logger
	cur    atomic.Pointer[snapSet]
	stop   chan struct{}
	done   chan struct{}
	users  int // handlers (under readersMu)

	// refresher only:
	current    []byte
	currentIno uint64
	// earlier mappings of `current` (replaced file): sets may still point into them,
	// so they are unmapped only when the reader stops.
	oldCurrents [][]byte
	lastStat    time.Time
	shown       [2]uint64 // base and overlay serials in force
	maps        map[string]*mapping
	retiring    []*snapSet
	status      string // why the segments are not used ("" when they are)
}

var (
	readersMu sync.Mutex
	readers   = map[string]*snapReader{}
)

// acquireSnapshot returns the shared reader of dir, starting it for its first user.
func acquireSnapshot(dir string, logger *zap.Logger) *snapReader {
	readersMu.Lock()
	defer readersMu.Unlock()
	if r := readers[dir]; r != nil {
		r.users++
		return r
	}
	r := &snapReader{dir: dir, logger: logger, stop: make(chan struct{}), done: make(chan struct{}),
		users: 1, maps: map[string]*mapping{}, status: "not mapped yet"}
	readers[dir] = r
	r.refresh() // map what is there now, so the first requests use it
	go r.run()
	return r
}

// release drops one user; the last one stops the refresher and unmaps what no lookup
// can still read.
func (r *snapReader) release() {
	readersMu.Lock()
	r.users--
	last := r.users == 0
	if last {
		delete(readers, r.dir)
	}
	readersMu.Unlock()
	if last {
		close(r.stop)
		<-r.done
	}
}

// lookup answers from the mapped set; ok is false when there is none (use the socket).
// hint picks the stripe of the reference count (hintOf).
func (r *snapReader) lookup(addr netip.Addr, now uint32, hint uint32) (Answer, bool) {
	for {
		s := r.cur.Load()
		if s == nil {
			return Answer{}, false
		}
		s.refs.add(hint, 1)
		if s.retired.Load() {
			s.refs.add(hint, -1)
			continue
		}
		if atomic.LoadUint64(s.alive) == 0 {
			s.refs.add(hint, -1)
			return Answer{}, false
		}
		a := segLookup(s.b, s.o, addr, now)
		s.refs.add(hint, -1)
		return a, true
	}
}

func (r *snapReader) run() {
	defer close(r.done)
	t := time.NewTicker(snapTick)
	defer t.Stop()
	for {
		select {
		case <-r.stop:
			r.setSet(nil, "handler stopped")
			for deadline := time.Now().Add(time.Second); len(r.retiring) > 0 && time.Now().Before(deadline); {
				r.drain()
				time.Sleep(time.Millisecond)
			}
			if len(r.retiring) == 0 {
				for _, m := range append(r.oldCurrents, r.current) {
					if m != nil {
						_ = syscall.Munmap(m)
					}
				}
			}
			return
		case <-t.C:
			r.refresh()
			r.drain()
		}
	}
}

// fail stops using the segments (lookups go to the socket) and logs why, once per change.
func (r *snapReader) fail(why string) {
	r.setSet(nil, why)
}

// setSet puts s in force (nil: none, for reason why) and retires the previous set.
func (r *snapReader) setSet(s *snapSet, why string) {
	old := r.cur.Swap(s)
	if old != nil && old != s {
		old.retired.Store(true)
		r.retiring = append(r.retiring, old)
	}
	if s == nil {
		r.shown = [2]uint64{}
	}
	if why != r.status {
		if why == "" {
			r.logger.Info("cerberus: looking up in the daemon's mapped snapshot segments", zap.String("dir", r.dir))
		} else {
			r.logger.Warn("cerberus: not using the snapshot segments; lookups go to the daemon's socket",
				zap.String("dir", r.dir), zap.String("reason", why))
		}
		r.status = why
	}
}

// drain unmaps the segments of retired sets that no lookup reads any more.
func (r *snapReader) drain() {
	kept := r.retiring[:0]
	for _, s := range r.retiring {
		if s.refs.sum() != 0 {
			kept = append(kept, s)
			continue
		}
		for _, m := range []*mapping{s.base, s.overlay} {
			if m == nil {
				continue
			}
			m.users--
			if m.users == 0 {
				delete(r.maps, m.name)
				_ = syscall.Munmap(m.data)
			}
		}
	}
	r.retiring = kept
}

var littleEndianHost = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// readCurrent reads the seqlock of `current`: base and overlay serials, heartbeat.
func (r *snapReader) readCurrent() (base, overlay, heartbeat uint64, ok bool) {
	word := func(i int) uint64 { return atomic.LoadUint64((*uint64)(unsafe.Pointer(&r.current[8*i]))) }
	for try := 0; try < 1000; try++ {
		s1 := word(2)
		base, overlay, heartbeat = word(3), word(4), word(5)
		if s2 := word(2); s1 == s2 && s1%2 == 0 {
			return base, overlay, heartbeat, true
		}
	}
	return 0, 0, 0, false
}

// refresh brings the set in force up to date with `current`.
func (r *snapReader) refresh() {
	if !littleEndianHost {
		r.fail("segments are little-endian and this host is not")
		return
	}
	path := filepath.Join(r.dir, "current")
	now := time.Now()
	if r.current != nil && now.Sub(r.lastStat) >= snapStatEvery {
		r.lastStat = now
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil || st.Ino != r.currentIno {
			r.fail("the current file was removed or replaced")
			r.oldCurrents = append(r.oldCurrents, r.current)
			r.current = nil
		}
	}
	if r.current == nil {
		data, ino, err := mapFile(path, currentLen)
		if err != nil {
			r.fail("cannot map " + path + ": " + errText(err))
			return
		}
		if string(data[:8]) != currentMagic || le.Uint32(data[8:]) != segVersion {
			_ = syscall.Munmap(data)
			r.fail(path + " is not a version 1 current file")
			return
		}
		r.current, r.currentIno, r.lastStat = data, ino, now
	}
	base, overlay, heartbeat, ok := r.readCurrent()
	switch {
	case !ok:
		return // the writer is busy; next tick
	case heartbeat == 0:
		r.fail("the daemon stopped writing segments")
		return
	case now.Sub(time.Unix(int64(heartbeat), 0)) > snapStale:
		r.fail("the daemon's heartbeat in " + path + " is stale (daemon gone?)")
		return
	case base == 0:
		r.fail("the daemon has not written a snapshot yet")
		return
	case r.cur.Load() != nil && r.shown == [2]uint64{base, overlay}:
		return
	}
	s, err := r.mapSet(base, overlay)
	if err != nil {
		r.fail(err.Error())
		return
	}
	r.setSet(s, "")
	r.shown = [2]uint64{base, overlay}
}

func (r *snapReader) mapSet(base, overlay uint64) (*snapSet, error) {
	s := &snapSet{alive: (*uint64)(unsafe.Pointer(&r.current[40]))}
	var err error
	if s.base, err = r.mapSegment(fmt.Sprintf("base-%020d.seg", base), segKindBase); err != nil {
		return nil, err
	}
	s.b = s.base.seg
	if overlay != 0 {
		if s.overlay, err = r.mapSegment(fmt.Sprintf("overlay-%020d.seg", overlay), segKindOver); err != nil {
			r.unuse(s.base)
			return nil, err
		}
		s.o = s.overlay.seg
		if s.o.baseGeneration != s.b.generation {
			r.unuse(s.base)
			r.unuse(s.overlay)
			return nil, fmt.Errorf("overlay %d is over generation %d, base %d is generation %d",
				overlay, s.o.baseGeneration, base, s.b.generation)
		}
	}
	return s, nil
}

func (r *snapReader) mapSegment(name string, kind uint32) (*mapping, error) {
	if m := r.maps[name]; m != nil {
		m.users++
		return m, nil
	}
	data, _, err := mapFile(filepath.Join(r.dir, name), 0)
	if err != nil {
		return nil, errors.New("cannot map segment " + name + ": " + errText(err))
	}
	seg, err := parseSegment(data)
	if err == nil && seg.kind != kind {
		err = fmt.Errorf("kind %d where %d was expected", seg.kind, kind)
	}
	if err != nil {
		_ = syscall.Munmap(data)
		return nil, fmt.Errorf("segment %s refused: %w", name, err)
	}
	m := &mapping{name: name, data: data, seg: seg, users: 1}
	r.maps[name] = m
	return m, nil
}

// unuse drops a use of m taken by a set that was never put in force.
func (r *snapReader) unuse(m *mapping) {
	m.users--
	if m.users == 0 {
		delete(r.maps, m.name)
		_ = syscall.Munmap(m.data)
	}
}

func errText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
