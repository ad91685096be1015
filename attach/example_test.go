package attach_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/tandem-dr/tandem/attach"
)

// tandem attach NAME --loop: attach the disk's FUSE file with direct I/O
// (the FUSE file is already direct I/O; the loop device must not cache
// either), print the device; tandem detach DEV undoes it.
func ExampleLoop() {
	ctx := context.Background()
	f, _ := os.CreateTemp("", "disk-")
	defer os.Remove(f.Name())
	f.Truncate(16 << 20)
	f.Close()

	dev, err := attach.Loop(ctx, f.Name(), attach.LoopOptions{DirectIO: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	st, _ := attach.LoopStatus(dev)
	fmt.Println(st.BackingFile == f.Name(), st.Size, st.DirectIO)
	fmt.Println(attach.Detach(ctx, dev))
	_, err = attach.LoopStatus(dev)
	fmt.Println(errors.Is(err, attach.ErrNotAttached))
	// Output:
	// true 16777216 true
	// <nil>
	// true
}
