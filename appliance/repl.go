package appliance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/tandem-dr/tandem/pki"
	"github.com/tandem-dr/tandem/replication"
)

// startRepl opens the replication listener: mutual TLS with paired sites
// only (pairing connections excepted, which pki serves itself), each
// connection routed to the receiver of the replica disk it names.
func (d *Daemon) startRepl(ctx context.Context, wg *sync.WaitGroup, fail func(error)) error {
	network, addr, err := ParseAddr(d.opts.Repl)
	if err != nil {
		return fmt.Errorf("replication listener: %w", err)
	}
	if network != "tcp" {
		return fmt.Errorf("replication listener %s: must be tcp:HOST:PORT", d.opts.Repl)
	}
	tcp, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("replication listener: %w", err)
	}
	d.replAddr = tcp.Addr()
	log := d.log.With("component", "replication")
	ln, err := pki.NewListener(tcp, pki.ListenerConfig{
		Identity: d.id,
		Logger:   log,
		OnPaired: func(p pki.PeerInfo) { log.Info("paired", "peer", p.Site, "address", p.Address) },
	})
	if err != nil {
		tcp.Close()
		return fmt.Errorf("replication listener: %w", err)
	}
	d.repl, err = replication.NewServer(replication.ServerConfig{
		Lookup: d.lookupSink,
		Create: d.createReplica,
		Policy: d.setReplicaPolicy,
		Identify: func(ctx context.Context, conn net.Conn) (string, error) {
			tc, ok := conn.(interface{ ConnectionState() tls.ConnectionState })
			if !ok {
				return "", errors.New("replication connection without TLS")
			}
			return pki.PeerSite(tc.ConnectionState())
		},
		Logger: log,
	})
	if err != nil {
		ln.Close()
		return err
	}
	log.Info("replication listening", "addr", d.replAddr.String())
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := d.repl.Serve(ctx, ln); err != nil && ctx.Err() == nil && !errors.Is(err, replication.ErrServerClosed) {
			fail(fmt.Errorf("replication: %w", err))
		}
	}()
	return nil
}

// lookupSink finds the replica disk a peer site replicates here.
func (d *Daemon) lookupSink(ctx context.Context, site, name string) (replication.Sink, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	od, ok := d.disks[name]
	if !ok {
		return nil, fmt.Errorf("%w: %s from %s", replication.ErrUnknownDisk, name, site)
	}
	if od.replica == nil {
		return nil, fmt.Errorf("disk %s is a %s at %s, not a replica of %s: refused", name, od.meta.Role, d.cfg.Site, site)
	}
	if od.meta.Peer != site {
		return nil, fmt.Errorf("disk %s here replicates site %s, not %s: refused", name, od.meta.Peer, site)
	}
	return od.replica, nil
}

// createReplica creates the replica of a disk that a paired site starts
// protecting: DATA/replicas/NAME holds its store and staging area, the
// site's journal its retention journal.
func (d *Daemon) createReplica(ctx context.Context, site, name string, size int64) (replication.Sink, error) {
	if err := ValidateDiskName(name); err != nil {
		return nil, fmt.Errorf("%w: %v", replication.ErrUnknownDisk, err)
	}
	if size <= 0 || size%512 != 0 {
		return nil, fmt.Errorf("%w: %s: size %d", replication.ErrUnknownDisk, name, size)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.disks[name]; ok {
		return nil, fmt.Errorf("disk %s exists at %s already: refused", name, d.cfg.Site)
	}
	m := DiskMeta{
		Name:    name,
		Size:    size,
		Path:    filepath.Join(d.dataDir, "replicas", name),
		Owned:   true,
		Role:    RoleReplica,
		Peer:    site,
		Created: time.Now().UTC(),
	}
	od, err := d.openReplica(ctx, m)
	if err != nil {
		return nil, err
	}
	if err := writeJSONFile(d.metaPath(name), m); err != nil {
		od.close(ctx)
		return nil, fmt.Errorf("save replica %s: %w", name, err)
	}
	d.disks[name] = od
	d.notifyChange(name)
	d.log.Info("replica created", "disk", name, "peer", site, "size", size)
	return od.replica, nil
}
