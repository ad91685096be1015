package disk_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tandem-dr/tandem/disk"
)

func openTemp(t *testing.T, size int64) (*disk.File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := disk.OpenFile(path, disk.FileOptions{Size: size})
	if err != nil {
		t.Fatalf("OpenFile: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f, path
}

func TestFileCreateReadWrite(t *testing.T) {
	f, path := openTemp(t, 4<<20)
	if got, want := f.Size(), int64(4<<20); got != want {
		t.Fatalf("Size = %d, want %d", got, want)
	}
	p := bytes.Repeat([]byte{0xab}, 8192)
	if _, err := f.WriteAt(p, 65536); err != nil {
		t.Fatalf("WriteAt: %v", err)
	}
	if err := f.Flush(context.Background()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	got := make([]byte, 8192)
	if _, err := f.ReadAt(got, 65536); err != nil {
		t.Fatalf("ReadAt: %v", err)
	}
	if !bytes.Equal(got, p) {
		t.Fatalf("ReadAt got %x..., want %x...", got[:4], p[:4])
	}
	if _, err := f.WriteAt(p, 4<<20-100); !errors.Is(err, disk.ErrOutOfRange) {
		t.Fatalf("WriteAt past end: got %v, want ErrOutOfRange", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fi.Size(), int64(4<<20); got != want {
		t.Fatalf("file size %d, want %d", got, want)
	}
}

func TestFileGrowAndReadOnly(t *testing.T) {
	_, path := openTemp(t, 1<<20)
	g, err := disk.OpenFile(path, disk.FileOptions{Size: 2 << 20})
	if err != nil {
		t.Fatalf("grow: %v", err)
	}
	if got, want := g.Size(), int64(2<<20); got != want {
		t.Fatalf("grown size %d, want %d", got, want)
	}
	g.Close()
	ro, err := disk.OpenFile(path, disk.FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatalf("open read-only: %v", err)
	}
	defer ro.Close()
	if _, err := ro.WriteAt([]byte{1}, 0); !errors.Is(err, disk.ErrReadOnly) {
		t.Fatalf("WriteAt read-only: got %v, want ErrReadOnly", err)
	}
	if err := ro.Trim(0, 4096); !errors.Is(err, disk.ErrReadOnly) {
		t.Fatalf("Trim read-only: got %v, want ErrReadOnly", err)
	}
	if _, err := disk.OpenFile(filepath.Join(t.TempDir(), "missing"), disk.FileOptions{}); err == nil {
		t.Fatalf("OpenFile of a missing file without Size: got nil error, want one")
	}
}

// sumExtents checks the extents are contiguous and returns the data ranges.
func dataRanges(t *testing.T, f *disk.File, off, length int64) [][2]int64 {
	t.Helper()
	var out [][2]int64
	pos := off
	for pos < off+length {
		ext, err := f.Extents(pos, off+length-pos)
		if err != nil {
			t.Fatalf("Extents(%d): %v", pos, err)
		}
		if len(ext) == 0 {
			t.Fatalf("Extents(%d) returned nothing", pos)
		}
		for _, e := range ext {
			if e.Length <= 0 {
				t.Fatalf("extent of length %d", e.Length)
			}
			if e.Hole != e.Zero {
				t.Fatalf("file extent hole=%v zero=%v, want equal", e.Hole, e.Zero)
			}
			if !e.Hole {
				if n := len(out); n > 0 && out[n-1][1] == pos {
					out[n-1][1] = pos + e.Length
				} else {
					out = append(out, [2]int64{pos, pos + e.Length})
				}
			}
			pos += e.Length
		}
	}
	if pos != off+length {
		t.Fatalf("extents cover to %d, want %d", pos, off+length)
	}
	return out
}

func TestFileExtentsTrimZero(t *testing.T) {
	const mib = 1 << 20
	f, _ := openTemp(t, 8*mib)
	if got := dataRanges(t, f, 0, 8*mib); len(got) != 0 {
		t.Fatalf("fresh sparse file data = %v, want none", got)
	}
	p := bytes.Repeat([]byte{7}, mib)
	for _, off := range []int64{mib, 2 * mib, 5 * mib} {
		if _, err := f.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	got := dataRanges(t, f, 0, 8*mib)
	want := [][2]int64{{mib, 3 * mib}, {5 * mib, 6 * mib}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("data ranges %v, want %v", got, want)
	}
	// A request inside a data run describes no more than asked.
	ext, err := f.Extents(mib+4096, 4096)
	if err != nil || len(ext) != 1 || ext[0].Length != 4096 || ext[0].Hole {
		t.Fatalf("Extents inside data = %+v, %v; want one data extent of 4096", ext, err)
	}

	if err := f.Trim(2*mib, mib); err != nil {
		t.Fatalf("Trim: %v", err)
	}
	got = dataRanges(t, f, 0, 8*mib)
	want = [][2]int64{{mib, 2 * mib}, {5 * mib, 6 * mib}}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("after trim data ranges %v, want %v", got, want)
	}
	if f.Size() != 8*mib {
		t.Fatalf("size after trim %d, want %d", f.Size(), 8*mib)
	}

	for _, mayTrim := range []bool{false, true} {
		if _, err := f.WriteAt(p, 5*mib); err != nil {
			t.Fatal(err)
		}
		if err := f.Zero(5*mib+4096, 65536, mayTrim); err != nil {
			t.Fatalf("Zero(mayTrim=%v): %v", mayTrim, err)
		}
		buf := make([]byte, mib)
		if _, err := f.ReadAt(buf, 5*mib); err != nil {
			t.Fatal(err)
		}
		for i, b := range buf {
			inZero := i >= 4096 && i < 4096+65536
			if wantB := byte(7); inZero && b != 0 || !inZero && b != wantB {
				t.Fatalf("mayTrim=%v byte %d = %d, zeroed=%v", mayTrim, i, b, inZero)
			}
		}
	}
	if err := f.Trim(7*mib, 2*mib); !errors.Is(err, disk.ErrOutOfRange) {
		t.Fatalf("Trim past end: got %v, want ErrOutOfRange", err)
	}
	if !f.CanMultiConn() {
		t.Fatalf("CanMultiConn = false, want true")
	}
}

// TestFileDirectWrites: with DirectWrites, aligned writes (from aligned
// or unaligned buffers) and unaligned ones land where they belong, reads
// see them, and a flush keeps them; on tmpfs too (which refused O_DIRECT
// before Linux 6.6: the writes then go through the page cache).
func TestFileDirectWrites(t *testing.T) {
	dirs := map[string]string{"disk": t.TempDir()}
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		shm, err := os.MkdirTemp("/dev/shm", "tandem-direct-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(shm) })
		dirs["tmpfs"] = shm
	}
	for name, dir := range dirs {
		t.Run(name, func(t *testing.T) {
			const size = 1 << 20
			path := filepath.Join(dir, "staging.img")
			f, err := disk.OpenFile(path, disk.FileOptions{Size: size, DirectWrites: true})
			if err != nil {
				t.Fatalf("OpenFile: %v", err)
			}
			if name == "disk" && !disk.WritesDirect(f) {
				t.Fatalf("no O_DIRECT descriptor on %s", dir)
			}
			want := make([]byte, size)
			put := func(off int64, p []byte) {
				t.Helper()
				if n, err := f.WriteAt(p, off); err != nil || n != len(p) {
					t.Fatalf("WriteAt off=%d len=%d = %d, %v", off, len(p), n, err)
				}
				copy(want[off:], p)
			}
			big := bytes.Repeat([]byte{0xa5}, 64<<10+1)
			put(0, big[1:])                                                             // aligned range, unaligned buffer
			put(128<<10, bytes.Repeat([]byte{0x3c}, 3*disk.DirectAlign))                // aligned range
			put(300<<10+17, []byte("not aligned at all"))                               // through the page cache
			put(128<<10+disk.DirectAlign, bytes.Repeat([]byte{0x77}, disk.DirectAlign)) // over an earlier direct write
			got := make([]byte, size)
			if _, err := f.ReadAt(got, 0); err != nil {
				t.Fatalf("ReadAt: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("contents differ from what was written")
			}
			if err := f.Flush(context.Background()); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			if err := f.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(b, want) {
				t.Fatalf("file after close differs from what was written")
			}
		})
	}
}
