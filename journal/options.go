package journal

import (
	"fmt"
	"time"
)

// Defaults for Options. They keep a daemon under sustained write load well
// below 256 MiB of resident memory: record data lives in segment files
// read and written with pread and pwrite (page cache, not the process),
// and badger holds only small values.
const (
	// DefaultMaxBytes is the per-log limit of unreleased record bytes.
	DefaultMaxBytes = 1 << 30
	// DefaultSegmentSize is the size at which a log starts a new segment
	// file.
	DefaultSegmentSize = 64 << 20
	// DefaultFreeSegments is the least number of released segment files
	// the store keeps for reuse; by default it keeps as many as one log
	// may fill (MaxBytes / SegmentSize), if that is more.
	DefaultFreeSegments = 4
	// DefaultMemTableSize is badger's memtable size: badger holds names,
	// bases, holds, sync marks and metadata, all small.
	DefaultMemTableSize = 2 << 20
	// DefaultNumMemtables is how many memtables badger keeps before it
	// stalls writes.
	DefaultNumMemtables = 4
	// DefaultValueThreshold: values shorter than this stay in badger's
	// LSM tree (all of the journal's own ones do).
	DefaultValueThreshold = 1 << 10
	// DefaultBlockCacheSize is badger's block cache.
	DefaultBlockCacheSize = 8 << 20
	// DefaultIndexCacheSize is badger's table index cache.
	DefaultIndexCacheSize = 4 << 20
	// DefaultValueLogFileSize is the size of one badger value-log file.
	DefaultValueLogFileSize = 8 << 20
	// DefaultNumCompactors is how many compaction goroutines badger runs
	// (badger needs at least 2).
	DefaultNumCompactors = 2
	// DefaultNumLevelZeroTables is how many level-0 tables badger keeps
	// before it compacts them.
	DefaultNumLevelZeroTables = 2
	// DefaultGCInterval is how often badger's value-log GC runs.
	DefaultGCInterval = time.Minute
	// DefaultGCDiscardRatio is the share of garbage a value-log file must
	// hold before GC rewrites it.
	DefaultGCDiscardRatio = 0.5
	// DefaultMinFreeBytes is the space the journal leaves free on its
	// file system (see Options.MinFreeBytes).
	DefaultMinFreeBytes = 256 << 20
)

// Options configures a Store. The zero value of every field means its
// Default* constant.
type Options struct {
	// MaxBytes is the per-log limit of unreleased record bytes (headers
	// included). An Append that would pass it fails with ErrFull.
	// AppendReceived is not limited: the secondary's retention decides.
	MaxBytes int64
	// SegmentSize is the size at which a log starts a new segment file;
	// at least two records of MaxData.
	SegmentSize int64
	// FreeSegments is how many released segment files are kept for reuse;
	// negative keeps none, zero is the default: MaxBytes / SegmentSize,
	// at least DefaultFreeSegments. Overwriting a reused file writes into
	// pages the page cache already holds and blocks the file system has
	// already allocated; a new file costs both, several times the copy
	// itself (see doc.go). The pool gives its space back when the file
	// system runs short (see Options.MinFreeBytes).
	FreeSegments int
	// MemTableSize, NumMemtables, ValueThreshold, BlockCacheSize,
	// IndexCacheSize, ValueLogFileSize, NumCompactors and
	// NumLevelZeroTables are passed to badger.
	MemTableSize       int64
	NumMemtables       int
	ValueThreshold     int64
	BlockCacheSize     int64
	IndexCacheSize     int64
	ValueLogFileSize   int64
	NumCompactors      int
	NumLevelZeroTables int
	// GCInterval is how often badger's value-log GC runs; negative
	// disables it.
	GCInterval time.Duration
	// GCDiscardRatio is the garbage share at which GC rewrites a file.
	GCDiscardRatio float64
	// MinFreeBytes is the space kept free on the journal's file system:
	// appends fail with an error wrapping syscall.ENOSPC rather than use
	// it (holds and metadata may use half of it). Badger writes through
	// mmap, where a full file system means SIGBUS, not an error; this
	// reserve also covers badger's own files. Negative disables the check.
	MinFreeBytes int64
	// FreeSpace reports the bytes available to the journal in dir; nil
	// means statfs. It is the seam through which tests simulate a full
	// file system.
	FreeSpace func(dir string) (int64, error)
}

// withDefaults returns o with zero fields set to their defaults.
func (o Options) withDefaults() Options {
	set64 := func(v *int64, d int64) {
		if *v == 0 {
			*v = d
		}
	}
	set := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	set64(&o.MaxBytes, DefaultMaxBytes)
	set64(&o.MemTableSize, DefaultMemTableSize)
	set(&o.NumMemtables, DefaultNumMemtables)
	set64(&o.ValueThreshold, DefaultValueThreshold)
	set64(&o.BlockCacheSize, DefaultBlockCacheSize)
	set64(&o.IndexCacheSize, DefaultIndexCacheSize)
	set64(&o.ValueLogFileSize, DefaultValueLogFileSize)
	set(&o.NumCompactors, DefaultNumCompactors)
	set(&o.NumLevelZeroTables, DefaultNumLevelZeroTables)
	set64(&o.SegmentSize, DefaultSegmentSize)
	if o.FreeSegments == 0 {
		o.FreeSegments = int(max(o.MaxBytes/max(o.SegmentSize, 1), DefaultFreeSegments))
	}
	if o.FreeSegments < 0 {
		o.FreeSegments = 0
	}
	set64(&o.MinFreeBytes, DefaultMinFreeBytes)
	if o.GCInterval == 0 {
		o.GCInterval = DefaultGCInterval
	}
	if o.GCDiscardRatio == 0 {
		o.GCDiscardRatio = DefaultGCDiscardRatio
	}
	return o
}

// Validate reports settings badger or the journal cannot work with. Zero
// fields are valid (they mean the default).
func (o Options) Validate() error {
	d := o.withDefaults()
	switch {
	case d.MaxBytes < 0:
		return fmt.Errorf("journal options: MaxBytes %d is negative", d.MaxBytes)
	case d.MemTableSize < 1<<20:
		return fmt.Errorf("journal options: MemTableSize %d under 1 MiB", d.MemTableSize)
	case d.NumMemtables < 1:
		return fmt.Errorf("journal options: NumMemtables %d under 1", d.NumMemtables)
	case d.ValueThreshold < 1 || d.ValueThreshold > d.MemTableSize*15/100:
		// badger refuses a threshold above its batch size (15% of a memtable).
		return fmt.Errorf("journal options: ValueThreshold %d outside [1, 15%% of MemTableSize]", d.ValueThreshold)
	case d.ValueLogFileSize < 1<<20 || d.ValueLogFileSize >= 2<<30:
		return fmt.Errorf("journal options: ValueLogFileSize %d outside [1 MiB, 2 GiB)", d.ValueLogFileSize)
	case d.SegmentSize < 2*(MaxData+HeaderSize) || d.SegmentSize > 1<<40:
		return fmt.Errorf("journal options: SegmentSize %d outside [two %d-byte records, 1 TiB]", d.SegmentSize, MaxData)
	case d.NumCompactors < 2:
		return fmt.Errorf("journal options: NumCompactors %d under 2", d.NumCompactors)
	case d.NumLevelZeroTables < 1:
		return fmt.Errorf("journal options: NumLevelZeroTables %d under 1", d.NumLevelZeroTables)
	case d.BlockCacheSize < 0 || d.IndexCacheSize < 0:
		return fmt.Errorf("journal options: negative cache size")
	case d.GCDiscardRatio <= 0 || d.GCDiscardRatio >= 1:
		return fmt.Errorf("journal options: GCDiscardRatio %v outside (0, 1)", d.GCDiscardRatio)
	}
	return nil
}
