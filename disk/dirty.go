package disk

import (
	"encoding/binary"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// DefaultRegionSize is the granularity of dirty-region tracking.
const DefaultRegionSize = 1 << 20

// regionsPerChunk is how many regions one persisted bitmap chunk covers
// (512 bytes of bits), so that marking one region rewrites little.
const regionsPerChunk = 4096

// Region is a byte range of a disk.
type Region struct {
	Off int64
	Len int64
}

// DirtyMap tracks which fixed-size regions of a disk were written without
// being journaled, so that a resync can later copy just those. Each mark
// carries a generation from one counter, so a resync can clear exactly
// the regions it copied and keep those written again meanwhile. It is safe
// for concurrent use.
type DirtyMap struct {
	regionSize int64
	size       int64

	mu      sync.Mutex
	gen     uint64
	marks   map[int64]uint64 // region index -> generation of its last mark
	changed map[int64]bool   // bitmap chunks changed since the last Encode
}

// NewDirtyMap tracks a disk of size bytes in regions of regionSize bytes
// (DefaultRegionSize when 0).
func NewDirtyMap(size, regionSize int64) *DirtyMap {
	if regionSize <= 0 {
		regionSize = DefaultRegionSize
	}
	return &DirtyMap{regionSize: regionSize, size: size, marks: make(map[int64]uint64), changed: make(map[int64]bool)}
}

// RegionSize is the tracking granularity in bytes.
func (m *DirtyMap) RegionSize() int64 { return m.regionSize }

// Mark records [off, off+length) as dirty. It reports whether a region
// that was clean became dirty (the caller then persists the map before
// relying on it).
func (m *DirtyMap) Mark(off, length int64) bool {
	if length <= 0 {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gen++
	fresh := false
	for r := off / m.regionSize; r <= (off+length-1)/m.regionSize; r++ {
		if _, ok := m.marks[r]; !ok {
			fresh = true
			m.changed[r/regionsPerChunk] = true
		}
		m.marks[r] = m.gen
	}
	return fresh
}

// Len is the number of dirty regions.
func (m *DirtyMap) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.marks)
}

// Regions returns the dirty regions, adjacent ones merged, in disk order,
// and the generation to pass to Clear once they have been copied.
func (m *DirtyMap) Regions() ([]Region, uint64) {
	m.mu.Lock()
	idx := make([]int64, 0, len(m.marks))
	for r := range m.marks {
		idx = append(idx, r)
	}
	gen := m.gen
	m.mu.Unlock()
	sort.Slice(idx, func(i, j int) bool { return idx[i] < idx[j] })
	var out []Region
	for _, r := range idx {
		off := r * m.regionSize
		n := min(m.regionSize, m.size-off)
		if k := len(out) - 1; k >= 0 && out[k].Off+out[k].Len == off {
			out[k].Len += n
			continue
		}
		out = append(out, Region{Off: off, Len: n})
	}
	return out, gen
}

// Clear marks the regions overlapping regs clean, except those marked
// after generation gen (written again since Regions returned gen).
func (m *DirtyMap) Clear(regs []Region, gen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, rg := range regs {
		if rg.Len <= 0 {
			continue
		}
		for r := rg.Off / m.regionSize; r <= (rg.Off+rg.Len-1)/m.regionSize; r++ {
			if g, ok := m.marks[r]; ok && g <= gen {
				delete(m.marks, r)
				m.changed[r/regionsPerChunk] = true
			}
		}
	}
}

// Encode returns the persisted form of the bitmap chunks changed since the
// last Encode: key suffix -> value, an empty value for a chunk with no
// dirty region left (delete it). all returns every chunk.
func (m *DirtyMap) Encode(all bool) map[string][]byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	chunks := m.changed
	if all {
		chunks = make(map[int64]bool)
		for r := range m.marks {
			chunks[r/regionsPerChunk] = true
		}
	}
	out := make(map[string][]byte, len(chunks))
	for c := range chunks {
		bits := make([]byte, 8+regionsPerChunk/8)
		binary.BigEndian.PutUint64(bits, uint64(m.regionSize))
		any := false
		for i := int64(0); i < regionsPerChunk; i++ {
			if _, ok := m.marks[c*regionsPerChunk+i]; ok {
				bits[8+i/8] |= 1 << (i % 8)
				any = true
			}
		}
		if !any {
			bits = nil
		}
		out[strconv.FormatInt(c, 10)] = bits
	}
	m.changed = make(map[int64]bool)
	return out
}

// Decode loads one chunk in the form Encode returned.
func (m *DirtyMap) Decode(suffix string, bits []byte) error {
	c, err := strconv.ParseInt(strings.TrimSpace(suffix), 10, 64)
	if err != nil || c < 0 {
		return fmt.Errorf("decode dirty chunk %q: bad index", suffix)
	}
	if len(bits) == 0 {
		return nil
	}
	if len(bits) != 8+regionsPerChunk/8 {
		return fmt.Errorf("decode dirty chunk %d: %d bytes", c, len(bits))
	}
	if rs := int64(binary.BigEndian.Uint64(bits)); rs != m.regionSize {
		return fmt.Errorf("decode dirty chunk %d: region size %d, tracking %d", c, rs, m.regionSize)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gen++
	for i := int64(0); i < regionsPerChunk; i++ {
		if bits[8+i/8]&(1<<(i%8)) != 0 {
			if r := c*regionsPerChunk + i; r*m.regionSize < m.size {
				m.marks[r] = m.gen
			}
		}
	}
	return nil
}
