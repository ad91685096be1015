package replication_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"time"

	"github.com/tandem-dr/tandem/replication"
	"github.com/tandem-dr/tandem/replication/replicationtest"
)

// Example wires a secondary's Server and a primary's Sender over loopback
// TCP, with in-memory disks standing in for the daemon's journal and
// replica. In the daemon, Dial and the listener are mutual TLS.
func Example() {
	ctx := context.Background()
	const size = 4 << 20

	// Secondary: one replica disk, "vm1", for any site.
	replica := replicationtest.NewMemSink(size)
	srv, _ := replication.NewServer(replication.ServerConfig{
		Lookup: func(ctx context.Context, site, disk string) (replication.Sink, error) {
			if disk != "vm1" {
				return nil, replication.ErrUnknownDisk
			}
			return replica, nil
		},
	})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ctx, ln)
	defer srv.Shutdown(ctx)

	// Primary: the disk has data before protection; the initial sync
	// copies it, then records stream.
	disk := replicationtest.NewMemSource(size, 0)
	disk.Write(0, []byte("written before protection"))
	sender, _ := replication.NewSender(replication.SenderConfig{
		Disk:   "vm1",
		Source: disk,
		Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		},
	})
	_ = sender.Open()
	defer sender.Close(ctx)
	seq := disk.Write(1<<20, []byte("written while protected"))

	// Sync mode would call WaitAcked for every write; here, once.
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for sender.Status(ctx).State != replication.StateProtected {
		time.Sleep(time.Millisecond)
	}
	if err := sender.WaitAcked(wctx, seq); err != nil {
		fmt.Println("wait:", err)
		return
	}
	primary, _ := disk.Snapshot()
	secondary, at := replica.Snapshot()
	fmt.Println("replica at seq", at, "identical:", bytes.Equal(primary, secondary))
	// Output: replica at seq 2 identical: true
}
