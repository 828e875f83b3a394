package cerberus

// A reader of the daemon's snapshot segments (bouncer-api/SNAPSHOT.md): a checked view
// of one segment in memory (mapped read-only by snapmap.go) and the lookup over a base
// and an overlay, with no allocation and no syscall.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Layout constants of SNAPSHOT.md, version 1.
const (
	segMagic     = "CERBSNAP"
	segVersion   = 1
	segHeaderLen = 256
	segKindBase  = 0
	segKindOver  = 1
	segDisabled  = 1 // header flag: protection disabled
	segRanges    = 2 // header flag: this overlay carries the ranges
	segEmpty     = 0
	segTombstone = 0xffffffff
	segMore      = 1 << 31
	segSections  = 7
)

var segRecord = [segSections]uint64{8, 24, 16, 40, 8, 16, 1}

const (
	secV4 = iota
	secV6
	secR4
	secR6
	secVerdicts
	secMetas
	secStrings
)

var le = binary.LittleEndian

// segMeta is one meta with its strings copied out of the mapping, so answers stay
// valid after the segment is unmapped.
type segMeta struct {
	remediation      Remediation
	rank             uint8
	origin, scenario string
	typ              string
}

// segment is a checked segment. Its tables are sub-slices of the mapping.
type segment struct {
	kind           uint32
	generation     uint64
	baseGeneration uint64
	seed           uint64
	flags          uint32
	outage         uint32
	v4, v6         []byte
	r4, r6         []byte
	verdicts       []byte
	mask4, mask6   uint64
	metas          []segMeta
	// r4idx[p] is the number of IPv4 intervals whose first address is below p << r4shift:
	// a lookup binary-searches only the intervals of its own bucket (built at parse
	// time; without it the search over thousands of ranges dominated the lookup).
	r4idx   []uint32
	r4shift uint32
	// rtop4 and rtop6 are the strongest (rank, expires) of any verdict of any IPv4 or
	// IPv6 interval, packed by rankKey: an exact answer at least that strong decides
	// without the range search (a range only wins when it ranks strictly higher).
	rtop4, rtop6 uint64
}

// rankKey packs (rank, expires) so that comparing keys compares the pairs.
func rankKey(rank uint8, expires uint32) uint64 { return uint64(rank)<<32 | uint64(expires) }

func rankOf(r Remediation) uint8 {
	switch r {
	case Ban:
		return 4
	case Captcha:
		return 3
	case Throttle:
		return 2
	case Other:
		return 1
	}
	return 0
}

// parseSegment checks buf as SNAPSHOT.md section 2 asks and copies its metas.
func parseSegment(buf []byte) (*segment, error) {
	if len(buf) < segHeaderLen {
		return nil, fmt.Errorf("segment too short (%d bytes)", len(buf))
	}
	if string(buf[:8]) != segMagic {
		return nil, errors.New("not a segment (bad magic)")
	}
	if v := le.Uint32(buf[8:]); v != segVersion {
		return nil, fmt.Errorf("segment version %d, this reader knows 1", v)
	}
	s := &segment{
		kind: le.Uint32(buf[12:]), generation: le.Uint64(buf[16:]), baseGeneration: le.Uint64(buf[24:]),
		seed: le.Uint64(buf[32:]), flags: le.Uint32(buf[40:]), outage: le.Uint32(buf[44:]),
	}
	if s.kind > segKindOver {
		return nil, fmt.Errorf("unknown segment kind %d", s.kind)
	}
	if s.outage > 2 {
		return nil, fmt.Errorf("unknown outage value %d", s.outage)
	}
	if n := le.Uint64(buf[48:]); n != uint64(len(buf)) {
		return nil, fmt.Errorf("file_len %d but the file has %d bytes", n, len(buf))
	}
	var sec [segSections][]byte
	for i := range sec {
		off, count := le.Uint64(buf[64+i*16:]), le.Uint64(buf[72+i*16:])
		if count > uint64(len(buf)) || off < segHeaderLen || off > uint64(len(buf)) ||
			count*segRecord[i] > uint64(len(buf))-off || (i <= secV6 && count&(count-1) != 0) {
			return nil, fmt.Errorf("section %d lies outside the file or is misshapen", i)
		}
		sec[i] = buf[off : off+count*segRecord[i] : off+count*segRecord[i]]
	}
	s.v4, s.v6, s.r4, s.r6, s.verdicts = sec[secV4], sec[secV6], sec[secR4], sec[secR6], sec[secVerdicts]
	s.mask4 = uint64(len(s.v4)/8) - 1
	s.mask6 = uint64(len(s.v6)/24) - 1
	strs := sec[secStrings]
	metas := sec[secMetas]
	s.metas = make([]segMeta, len(metas)/16)
	for i := range s.metas {
		m := metas[i*16 : i*16+16]
		olen, tlen, slen := int(m[1]), int(m[2]), int(le.Uint16(m[4:]))
		start := int(le.Uint32(m[8:]))
		end := start + olen + slen + tlen
		if m[0] < 1 || m[0] > 4 || end > len(strs) {
			return nil, fmt.Errorf("meta %d is damaged", i)
		}
		r := Remediation(m[0])
		s.metas[i] = segMeta{
			remediation: r, rank: rankOf(r),
			origin:   strings.ToValidUTF8(string(strs[start:start+olen]), "\uFFFD"),
			scenario: strings.ToValidUTF8(string(strs[start+olen:start+olen+slen]), "\uFFFD"),
			typ:      strings.ToValidUTF8(string(strs[start+olen+slen:end]), "\uFFFD"),
		}
	}
	s.indexRanges4()
	s.rtop4 = s.strongest(s.r4, 16, 8)
	s.rtop6 = s.strongest(s.r6, 40, 32)
	return s, nil
}

// strongest is the highest rankKey over every verdict of every interval in r (records
// of size rec, val at offset at).
func (s *segment) strongest(r []byte, rec, at int) uint64 {
	top := uint64(0)
	nv := len(s.verdicts) / 8
	for off := 0; off+rec <= len(r); off += rec {
		val := le.Uint32(r[off+at:])
		if val == segEmpty || val == segTombstone {
			continue
		}
		for i := int(val - 1); i < nv; i++ {
			v := le.Uint64(s.verdicts[i*8:])
			exp, m := uint32(v), uint32(v>>32)
			if int(m&^segMore) < len(s.metas) {
				top = max(top, rankKey(s.metas[m&^segMore].rank, exp))
			}
			if m&segMore == 0 {
				break
			}
		}
	}
	return top
}

func fmix64(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}

// exact results: the slot's value, with found=false when the key is not in the table.
func (s *segment) exact4(key uint32) (val uint32, found bool) {
	if len(s.v4) == 0 {
		return 0, false
	}
	v4, mask := s.v4, s.mask4
	i := fmix64(uint64(key)^s.seed) & mask
	for n := uint64(0); n <= mask; n++ {
		slot := le.Uint64(v4[i*8:]) // key in the low half, val in the high half
		v := uint32(slot >> 32)
		if v == segEmpty {
			return 0, false
		}
		if uint32(slot) == key {
			return v, true
		}
		i = (i + 1) & mask
	}
	return 0, false
}

func (s *segment) exact6(hi, lo uint64) (val uint32, found bool) {
	if len(s.v6) == 0 {
		return 0, false
	}
	i := fmix64(hi^fmix64(lo^s.seed)) & s.mask6
	for n := uint64(0); n <= s.mask6; n++ {
		slot := s.v6[i*24 : i*24+24]
		v := le.Uint32(slot[16:])
		if v == segEmpty {
			return 0, false
		}
		if le.Uint64(slot) == hi && le.Uint64(slot[8:]) == lo {
			return v, true
		}
		i = (i + 1) & s.mask6
	}
	return 0, false
}

// indexRanges4 builds r4idx: about one bucket per interval, between 2^8 and 2^16.
func (s *segment) indexRanges4() {
	n := len(s.r4) / 16
	if n == 0 {
		return
	}
	bits := uint32(8)
	for bits < 16 && 1<<bits < n {
		bits++
	}
	s.r4shift = 32 - bits
	s.r4idx = make([]uint32, 1<<bits+1)
	i := 0
	for p := range s.r4idx {
		for i < n && uint64(le.Uint32(s.r4[i*16:])) < uint64(p)<<s.r4shift {
			i++
		}
		s.r4idx[p] = uint32(i)
	}
}

func (s *segment) range4(key uint32) uint32 {
	if len(s.r4idx) == 0 {
		return 0
	}
	p := key >> s.r4shift
	lo, hi := int(s.r4idx[p]), int(s.r4idx[p+1]) // lo: number of intervals with first <= key
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if le.Uint32(s.r4[mid*16:]) <= key {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == 0 {
		return 0
	}
	iv := s.r4[(lo-1)*16 : lo*16]
	if key <= le.Uint32(iv[4:]) {
		return le.Uint32(iv[8:])
	}
	return 0
}

func less128(ahi, alo, bhi, blo uint64) bool { return ahi < bhi || ahi == bhi && alo < blo }

func (s *segment) range6(khi, klo uint64) uint32 {
	n := len(s.r6) / 40
	lo, hi := 0, n
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		iv := s.r6[mid*40 : mid*40+40]
		if !less128(khi, klo, le.Uint64(iv), le.Uint64(iv[8:])) { // first <= key
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == 0 {
		return 0
	}
	iv := s.r6[(lo-1)*40 : lo*40]
	if !less128(le.Uint64(iv[16:]), le.Uint64(iv[24:]), khi, klo) { // key <= last
		return le.Uint32(iv[32:])
	}
	return 0
}

// firstLive returns the first verdict of the list at slot value val that has not
// expired at now: its expiry and meta index.
func (s *segment) firstLive(val uint32, now uint32) (expires uint32, meta uint32, ok bool) {
	if val == segEmpty || val == segTombstone {
		return 0, 0, false
	}
	verdicts := s.verdicts
	for i := int(val - 1); i < len(verdicts)/8; i++ {
		v := le.Uint64(verdicts[i*8:])
		exp, m := uint32(v), uint32(v>>32)
		if exp > now {
			if int(m&^segMore) >= len(s.metas) {
				return 0, 0, false
			}
			return exp, m &^ segMore, true
		}
		if m&segMore == 0 {
			break
		}
	}
	return 0, 0, false
}

// hit is one live verdict of one segment.
type hit struct {
	seg     *segment
	expires uint32
	meta    uint32
}

func (h hit) key() uint64 { return rankKey(h.seg.metas[h.meta].rank, h.expires) }

// segLookup answers for addr at unix second now from base and overlay (nil: none),
// as SNAPSHOT.md section 6 says. addr is already unmapped (IPv4 as IPv4).
func segLookup(base, overlay *segment, addr netip.Addr, now uint32) Answer {
	top := base
	if overlay != nil {
		top = overlay
	}
	if top.flags&segDisabled != 0 {
		return Answer{Flags: FlagBypassed}
	}
	switch top.outage {
	case 2:
		return Answer{Remediation: Ban, Flags: FlagFailClosed}
	case 1:
		return Answer{}
	}
	ranges := base
	if overlay != nil && overlay.flags&segRanges != 0 {
		ranges = overlay
	}
	var ex, rg hit
	var exOK, rgOK bool
	if addr.Is4() {
		b := addr.As4()
		key := binary.BigEndian.Uint32(b[:])
		seg, val, found := overlay, uint32(0), false
		if overlay != nil {
			val, found = overlay.exact4(key)
		}
		if !found {
			seg = base
			val, _ = base.exact4(key)
		}
		ex.seg = seg
		ex.expires, ex.meta, exOK = seg.firstLive(val, now)
		if !exOK || ex.key() < ranges.rtop4 {
			rg.seg = ranges
			rg.expires, rg.meta, rgOK = ranges.firstLive(ranges.range4(key), now)
		}
	} else {
		b := addr.As16()
		hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
		seg, val, found := overlay, uint32(0), false
		if overlay != nil {
			val, found = overlay.exact6(hi, lo)
		}
		if !found {
			seg = base
			val, _ = base.exact6(hi, lo)
		}
		ex.seg = seg
		ex.expires, ex.meta, exOK = seg.firstLive(val, now)
		if !exOK || ex.key() < ranges.rtop6 {
			rg.seg = ranges
			rg.expires, rg.meta, rgOK = ranges.firstLive(ranges.range6(hi, lo), now)
		}
	}
	best := ex
	switch {
	case exOK && rgOK:
		if rg.key() > ex.key() {
			best = rg
		}
	case rgOK:
		best = rg
	case !exOK:
		return Answer{}
	}
	m := &best.seg.metas[best.meta]
	return Answer{Remediation: m.remediation, ExpiresInS: best.expires - now,
		Origin: m.origin, Scenario: m.scenario, Type: m.typ}
}
