package appliance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"

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
		Identify: func(ctx context.Context, conn net.Conn) (string, error) {
			tc, ok := conn.(*tls.Conn)
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
func (d *Daemon) lookupSink(ctx context.Context, site, disk string) (replication.Sink, error) {
	return nil, fmt.Errorf("%w: %s from %s", replication.ErrUnknownDisk, disk, site)
}
