package journal

import (
	"fmt"
	"time"
)

// Defaults for Options. They keep a daemon under sustained write load well
// below 256 MiB of resident memory while leaving badger room to batch.
const (
	// DefaultMaxBytes is the per-log limit of unreleased record bytes.
	DefaultMaxBytes = 1 << 30
	// DefaultMemTableSize is badger's memtable size. Records go to the
	// value log (see DefaultValueThreshold), so memtables hold only keys
	// and value pointers and a small one suffices (badger's 6.7 MiB floor
	// applies only to its default 1 MB value threshold).
	DefaultMemTableSize = 2 << 20
	// DefaultNumMemtables is how many memtables badger keeps before it
	// stalls writes.
	DefaultNumMemtables = 4
	// DefaultValueThreshold: values at least this long live in the value
	// log, written once; shorter ones (zero, trim, holds, small writes)
	// stay in the LSM.
	DefaultValueThreshold = 1 << 10
	// DefaultBlockCacheSize is badger's block cache.
	DefaultBlockCacheSize = 8 << 20
	// DefaultIndexCacheSize is badger's table index cache.
	DefaultIndexCacheSize = 4 << 20
	// DefaultValueLogFileSize is the size of one value-log file: the unit
	// that value-log GC reclaims.
	DefaultValueLogFileSize = 8 << 20
	// DefaultNumCompactors is how many compaction goroutines badger runs
	// (badger needs at least 2).
	DefaultNumCompactors = 2
	// DefaultNumLevelZeroTables is how many level-0 tables badger keeps
	// before it compacts them.
	DefaultNumLevelZeroTables = 2
	// DefaultGCInterval is how often the value-log GC loop runs.
	DefaultGCInterval = 50 * time.Millisecond
	// DefaultReclaimBytes of released records make the GC loop flush
	// badger's memtable and collect the value log at once.
	DefaultReclaimBytes = 16 << 20
	// DefaultGCDiscardRatio is the share of garbage a value-log file must
	// hold before GC rewrites it.
	DefaultGCDiscardRatio = 0.5
	// DefaultMaxBatchBytes caps the record bytes in one group commit.
	DefaultMaxBatchBytes = 16 << 20
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
	// GCInterval is how often the value-log GC loop runs; negative
	// disables it.
	GCInterval time.Duration
	// GCDiscardRatio is the garbage share at which GC rewrites a file.
	GCDiscardRatio float64
	// ReclaimBytes of released record bytes trigger a memtable flush and
	// a GC run, so that released records' space is reclaimed promptly.
	ReclaimBytes int64
	// MaxBatchBytes caps the record bytes committed in one badger write.
	MaxBatchBytes int64
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
	set64(&o.MaxBatchBytes, DefaultMaxBatchBytes)
	set64(&o.ReclaimBytes, DefaultReclaimBytes)
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
	case d.ReclaimBytes < 0:
		return fmt.Errorf("journal options: ReclaimBytes %d is negative", d.ReclaimBytes)
	case d.ValueLogFileSize < 2*(MaxData+HeaderSize):
		return fmt.Errorf("journal options: ValueLogFileSize %d too small for a %d-byte record", d.ValueLogFileSize, MaxData)
	case d.NumCompactors < 2:
		return fmt.Errorf("journal options: NumCompactors %d under 2", d.NumCompactors)
	case d.NumLevelZeroTables < 1:
		return fmt.Errorf("journal options: NumLevelZeroTables %d under 1", d.NumLevelZeroTables)
	case d.BlockCacheSize < 0 || d.IndexCacheSize < 0:
		return fmt.Errorf("journal options: negative cache size")
	case d.GCDiscardRatio <= 0 || d.GCDiscardRatio >= 1:
		return fmt.Errorf("journal options: GCDiscardRatio %v outside (0, 1)", d.GCDiscardRatio)
	case d.MaxBatchBytes < MaxData+HeaderSize:
		return fmt.Errorf("journal options: MaxBatchBytes %d under one record", d.MaxBatchBytes)
	}
	return nil
}
