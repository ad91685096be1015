package fusefs_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/tandem-dr/tandem/fusefs"
)

// nbdExtent stands for nbd.Extent, which fusefs does not import.
type nbdExtent struct {
	Length     int64
	Hole, Zero bool
}

// volume stands for the daemon's journaling tap: the method set of an
// NBD backend.
type volume struct{ *memFile }

func (v volume) Extents(off, length int64) ([]nbdExtent, error) {
	return []nbdExtent{{Length: length}}, nil
}

// The daemon presents its disks through a Set it keeps up to date (or a
// Source of its own), adapting the tap's extents with ExtentsFunc.
func ExampleMount() {
	ctx := context.Background()
	tap := volume{newMemFile(64 << 20)}
	var set fusefs.Set
	set.Put(fusefs.Entry{
		Dir:     fusefs.DirDisks,
		Name:    "db",
		File:    tap,
		Extents: fusefs.ExtentsFunc(tap.Extents, func(e nbdExtent) fusefs.Extent { return fusefs.Extent(e) }),
	})
	dir, _ := os.MkdirTemp("", "fuse-")
	defer os.RemoveAll(dir)
	fsys, err := fusefs.Mount(ctx, dir, &set, fusefs.Options{}, slog.Default())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer fsys.Unmount(ctx)

	st, _ := os.Stat(dir + "/disks/db")
	fmt.Println(st.Size())

	// A disk removed at run time disappears from the mount.
	set.Delete(fusefs.DirDisks, "db")
	fsys.Invalidate(fusefs.DirDisks, "db")
	_, err = os.Stat(dir + "/disks/db")
	fmt.Println(os.IsNotExist(err))
	// Output:
	// 67108864
	// true
}
