package nbd_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/tandem-dr/tandem/nbd"
	"github.com/tandem-dr/tandem/nbd/nbdtest"
)

// Serve one in-memory backend on a unix socket and use it with the client.
func Example() {
	dir, _ := os.MkdirTemp("", "nbd-example-")
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	srv := nbd.NewServer(&nbd.SingleExport{Name: "disk", Backend: nbdtest.NewMem(1 << 20)}, nbd.ServerOptions{})
	go srv.Serve(ctx, ln)
	defer srv.Shutdown(ctx)

	c, err := nbd.Dial(ctx, "unix", sock, "disk", nbd.ClientOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	c.WriteAt([]byte("hello"), 4096)
	buf := make([]byte, 5)
	c.ReadAt(buf, 4096)
	fmt.Println(c.Size(), string(buf), c.Flags()&nbd.FlagCanMultiConn != 0)
	// Output: 1048576 hello true
}
