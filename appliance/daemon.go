package appliance

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/nbd"
	"github.com/tandem-dr/tandem/pki"
	"github.com/tandem-dr/tandem/replication"
)

// Options are the run-time settings of `tandem serve`; zero fields take
// the configuration's values.
type Options struct {
	NBD  []string // NBD listeners, "unix:PATH" or "tcp:HOST:PORT"
	API  string   // API listener
	Repl string   // replication listener
	FUSE string   // FUSE mount point; empty means no FUSE
	// JournalMaxBytes overrides the per-disk journal limit (tests).
	JournalMaxBytes int64
	// Profile serves Go's profiles (net/http/pprof) on the API under
	// /debug/pprof/, for whoever may use the API socket.
	Profile bool
}

// Daemon is one site's appliance.
type Daemon struct {
	dataDir string
	cfg     Config
	opts    Options
	log     *slog.Logger
	lock    *dirLock
	journal *journal.Store

	mu    sync.Mutex
	disks map[string]*openDisk

	id       *pki.Identity
	replAddr net.Addr // the replication listener's bound address
	repl     *replication.Server

	nbd     *nbd.Server
	api     *http.Server
	chMu    sync.Mutex
	changed func(name string) // called when a disk comes or goes (FUSE refresh); guarded by chMu
}

// Open takes the data directory, opens the journal and every disk, and
// replays what the journal holds that the stores lack. It does not listen
// yet: Serve does.
func Open(ctx context.Context, dataDir string, opts Options, logger *slog.Logger) (*Daemon, error) {
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	cfg, err := LoadConfig(dataDir)
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if len(opts.NBD) == 0 {
		opts.NBD = cfg.NBD
	}
	if opts.API == "" {
		opts.API = cfg.API
	}
	if opts.Repl == "" {
		opts.Repl = cfg.Repl
	}
	if opts.JournalMaxBytes == 0 {
		opts.JournalMaxBytes = cfg.JournalMaxMiB << 20
	}
	lock, err := lockDataDir(dataDir)
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		dataDir: dataDir,
		cfg:     cfg,
		opts:    opts,
		log:     logger.With("site", cfg.Site),
		lock:    lock,
		disks:   make(map[string]*openDisk),
		changed: func(string) {},
	}
	d.id, err = pki.Load(filepath.Join(dataDir, "pki"))
	if err != nil {
		lock.release()
		return nil, fmt.Errorf("load site identity: %w", err)
	}
	jopts := journal.Options{MaxBytes: opts.JournalMaxBytes}
	d.journal, err = journal.Open(ctx, filepath.Join(dataDir, "journal"), jopts, d.log.With("component", "journal"))
	if err != nil {
		lock.release()
		return nil, fmt.Errorf("open journal: %w", err)
	}
	if err := d.loadDisks(ctx); err != nil {
		d.closeAll(ctx)
		return nil, err
	}
	return d, nil
}

// Site is the site's name.
func (d *Daemon) Site() string { return d.cfg.Site }

// DataDir is the site's data directory.
func (d *Daemon) DataDir() string { return d.dataDir }

// notifyChange tells the presentations that disk name came or went. It
// does not wait: the caller may hold d.mu, and a FUSE invalidation can
// wait on a lookup that itself waits on d.mu.
func (d *Daemon) notifyChange(name string) {
	d.chMu.Lock()
	fn := d.changed
	d.chMu.Unlock()
	go fn(name)
}

// Serve listens on the configured addresses and serves until ctx is done,
// then shuts everything down in order: listeners, NBD connections, disks
// (their journals synced), the journal store, the lock.
func (d *Daemon) Serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup
	errc := make(chan error, 8)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
		cancel()
	}

	stopFUSE, err := d.startFUSE(ctx)
	if err != nil {
		fail(err)
	}

	d.nbd = nbd.NewServer(exporter{d}, nbd.ServerOptions{Logger: d.log.With("component", "nbd")})
	for _, spec := range d.opts.NBD {
		addr, mode, err := parseNBDListener(spec)
		if err != nil {
			fail(err)
			break
		}
		ln, err := d.listen(addr)
		if err != nil {
			fail(fmt.Errorf("nbd listener %s: %w", addr, err))
			break
		}
		var tlsCfg *tls.Config
		if mode != nbd.TLSOff {
			tlsCfg = d.id.NBDServerTLS()
		}
		d.log.Info("nbd listening", "addr", addr, "tls", tlsModeName(mode))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.nbd.ServeTLS(ctx, ln, tlsCfg, mode); err != nil && ctx.Err() == nil {
				fail(fmt.Errorf("nbd %s: %w", addr, err))
			}
		}()
	}

	if err := d.startRepl(ctx, &wg, fail); err != nil {
		fail(err)
	}

	// The API socket comes last: once it answers, every listener and the
	// FUSE mount are up (scripts and tests wait for it).
	if ctx.Err() == nil {
		apiLn, err := d.listen(d.opts.API)
		if err != nil {
			fail(fmt.Errorf("api listener: %w", err))
		} else {
			d.api = &http.Server{Handler: d.apiHandler(), ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := d.api.Serve(apiLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
					fail(fmt.Errorf("api: %w", err))
				}
			}()
		}
	}

	wg.Add(2)
	go func() {
		defer wg.Done()
		// Replicas release the records older than their retention.
		d.runPeriodic(ctx, retentionEvery, "retention", "disk", d.expireReplicas)
	}()
	go func() {
		defer wg.Done()
		// Protected primaries cut their automatic checkpoints when due.
		d.runPeriodic(ctx, checkpointTick, "automatic checkpoint", "cut", d.cutDue)
	}()
	if ctx.Err() == nil {
		d.log.Info("serving", "data", d.dataDir, "api", d.opts.API, "disks", len(d.disks))
	}
	<-ctx.Done()
	d.log.Info("stopping")

	sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer scancel()
	if d.api != nil {
		d.api.Shutdown(sctx)
	}
	d.nbd.Shutdown(sctx)
	if d.repl != nil {
		d.repl.Shutdown(sctx)
	}
	if stopFUSE != nil {
		stopFUSE(sctx)
	}
	wg.Wait()
	closeErr := d.closeAll(sctx)
	select {
	case err := <-errc:
		return err
	default:
	}
	return closeErr
}

// closeAll closes every disk, the journal and the lock.
func (d *Daemon) closeAll(ctx context.Context) error {
	var errs []error
	d.mu.Lock()
	for name, od := range d.disks {
		if err := od.close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("close disk %s: %w", name, err))
		}
		delete(d.disks, name)
	}
	d.mu.Unlock()
	if d.journal != nil {
		if err := d.journal.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close journal: %w", err))
		}
	}
	if d.lock != nil {
		d.lock.release()
		d.lock = nil
	}
	return errors.Join(errs...)
}

// listen opens "unix:PATH" (relative to the data directory; a stale
// socket file is removed: the data-directory lock proves no daemon owns it)
// or "tcp:HOST:PORT".
func (d *Daemon) listen(addr string) (net.Listener, error) {
	network, address, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		if !filepath.IsAbs(address) {
			address = filepath.Join(d.dataDir, address)
		}
		if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	return net.Listen(network, address)
}

// parseNBDListener splits an NBD listener "ADDR[?tls=off|optional|required]":
// STARTTLS with the site's certificate can be offered or required per
// listener.
func parseNBDListener(spec string) (addr string, mode nbd.TLSMode, err error) {
	addr, query, _ := strings.Cut(spec, "?")
	switch query {
	case "", "tls=off":
		return addr, nbd.TLSOff, nil
	case "tls=optional":
		return addr, nbd.TLSOptional, nil
	case "tls=required":
		return addr, nbd.TLSRequired, nil
	}
	return "", 0, fmt.Errorf("nbd listener %q: after '?' want tls=off, tls=optional or tls=required", spec)
}

func tlsModeName(m nbd.TLSMode) string {
	return [...]string{"off", "optional", "required"}[m]
}

// ParseAddr splits "unix:PATH" or "tcp:HOST:PORT". A bare path (containing
// '/') is a unix socket and a bare HOST:PORT is TCP.
func ParseAddr(addr string) (network, address string, err error) {
	switch {
	case strings.HasPrefix(addr, "unix:"):
		return "unix", strings.TrimPrefix(addr, "unix:"), nil
	case strings.HasPrefix(addr, "tcp:"):
		return "tcp", strings.TrimPrefix(addr, "tcp:"), nil
	case strings.Contains(addr, "/"):
		return "unix", addr, nil
	case strings.Contains(addr, ":"):
		return "tcp", addr, nil
	}
	return "", "", fmt.Errorf("address %q: want unix:PATH or tcp:HOST:PORT", addr)
}

// APISocket is the path of the API socket of a data directory.
func APISocket(dataDir string) string {
	cfg, err := LoadConfig(dataDir)
	addr := DefaultAPIAddr
	if err == nil && cfg.API != "" {
		addr = cfg.API
	}
	_, p, err := ParseAddr(addr)
	if err != nil {
		p = "api.sock"
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(dataDir, p)
	}
	return p
}
