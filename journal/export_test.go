package journal

// DirectSegments reports how many of l's segments are written with direct
// I/O, and how many it has.
func DirectSegments(l *Log) (direct, total int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range l.segs {
		if g.dw != nil {
			direct++
		}
	}
	return direct, len(l.segs)
}
