package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/nbd"
)

// defaultNBDListen is where `tandem nbd serve` listens when given neither
// --socket nor --listen and not socket-activated (the IANA NBD port on
// loopback).
const defaultNBDListen = "127.0.0.1:10809"

func nbdCommand() *cli.Command {
	return &cli.Command{
		Name:  "nbd",
		Usage: "the NBD protocol layer on its own",
		Subcommands: []*cli.Command{{
			Name:      "serve",
			Usage:     "serve one raw file or block device over NBD (no journal), like qemu-nbd",
			ArgsUsage: "FILE",
			Description: "Serves FILE on a unix socket (--socket), a TCP address (--listen), or both; " +
				"by default on " + defaultNBDListen + ". Started by its client through systemd socket " +
				"activation (LISTEN_PID/LISTEN_FDS), it serves the sockets it was given.",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "socket", Usage: "listen on this unix socket `PATH`"},
				&cli.StringFlag{Name: "listen", Usage: "listen on this TCP `ADDR` (host:port)"},
				&cli.StringFlag{Name: "name", Usage: "the export `NAME` (the default export \"\" is served too)"},
				&cli.BoolFlag{Name: "readonly", Aliases: []string{"r"}, Usage: "refuse writes"},
				&cli.StringFlag{Name: "tls-cert", Usage: "server certificate `FILE` (PEM) for NBD_OPT_STARTTLS"},
				&cli.StringFlag{Name: "tls-key", Usage: "server private key `FILE` (PEM)"},
				&cli.StringFlag{Name: "tls-ca", Usage: "CA `FILE` (PEM) that client certificates must chain to"},
				&cli.StringFlag{Name: "tls", Usage: "`MODE`: required or optional (default optional when --tls-cert is given)"},
				&cli.BoolFlag{Name: "tls-verify-peer", Usage: "require a client certificate signed by --tls-ca"},
				&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "log every connection"},
			},
			Action: nbdServe,
		}},
	}
}

func nbdServe(c *cli.Context) error {
	if c.NArg() != 1 {
		return usagef("nbd serve: want exactly one FILE, got %d arguments", c.NArg())
	}
	mode, tlsCfg, err := nbdTLS(c)
	if err != nil {
		return err
	}
	level := slog.LevelWarn
	if c.Bool("verbose") {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	path := c.Args().First()
	f, err := disk.OpenFile(path, disk.FileOptions{ReadOnly: c.Bool("readonly")})
	if err != nil {
		return err
	}
	defer f.Close()

	lns, err := nbdListeners(c)
	if err != nil {
		return err
	}
	srv := nbd.NewServer(&nbd.SingleExport{
		Name:     c.String("name"),
		Backend:  f,
		ReadOnly: c.Bool("readonly"),
	}, nbd.ServerOptions{Logger: log})

	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	errc := make(chan error, len(lns))
	for _, ln := range lns {
		fmt.Fprintf(os.Stderr, "tandem nbd: serving %s (%d bytes) on %s:%s\n", path, f.Size(), ln.Addr().Network(), ln.Addr())
		go func(ln net.Listener) { errc <- srv.ServeTLS(ctx, ln, tlsCfg, mode) }(ln)
	}
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	srv.Shutdown(sctx)
	if s := c.String("socket"); s != "" {
		os.Remove(s)
	}
	if serveErr != nil && !errors.Is(serveErr, nbd.ErrServerClosed) && !errors.Is(serveErr, context.Canceled) {
		return serveErr
	}
	if err := f.Flush(context.Background()); err != nil {
		return err
	}
	return nil
}

// nbdTLS builds the listener TLS settings from the flags.
func nbdTLS(c *cli.Context) (nbd.TLSMode, *tls.Config, error) {
	cert, key, ca := c.String("tls-cert"), c.String("tls-key"), c.String("tls-ca")
	mode := nbd.TLSOff
	switch c.String("tls") {
	case "":
		if cert != "" {
			mode = nbd.TLSOptional
		}
	case "optional", "on":
		mode = nbd.TLSOptional
	case "required", "require":
		mode = nbd.TLSRequired
	case "off":
	default:
		return 0, nil, usagef("nbd serve: --tls %q: want required or optional", c.String("tls"))
	}
	if mode == nbd.TLSOff {
		if cert != "" {
			return 0, nil, usagef("nbd serve: --tls off with --tls-cert")
		}
		return mode, nil, nil
	}
	if cert == "" || key == "" {
		return 0, nil, usagef("nbd serve: TLS needs --tls-cert and --tls-key")
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return 0, nil, fmt.Errorf("load TLS certificate %s: %w", cert, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return 0, nil, fmt.Errorf("read TLS CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return 0, nil, fmt.Errorf("read TLS CA %s: no certificate in it", ca)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if c.Bool("tls-verify-peer") {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	} else if c.Bool("tls-verify-peer") {
		return 0, nil, usagef("nbd serve: --tls-verify-peer needs --tls-ca")
	}
	return mode, cfg, nil
}

// nbdListeners returns the sockets to serve: those passed by systemd socket
// activation, else --socket and --listen, else the default TCP address.
func nbdListeners(c *cli.Context) ([]net.Listener, error) {
	if lns, err := activationListeners(); err != nil || len(lns) > 0 {
		return lns, err
	}
	var lns []net.Listener
	fail := func(err error) ([]net.Listener, error) {
		for _, ln := range lns {
			ln.Close()
		}
		return nil, err
	}
	if s := c.String("socket"); s != "" {
		if fi, err := os.Lstat(s); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(s) // a stale socket of an earlier run
		}
		ln, err := net.Listen("unix", s)
		if err != nil {
			return fail(fmt.Errorf("listen on unix socket %s: %w", s, err))
		}
		lns = append(lns, ln)
	}
	addr := c.String("listen")
	if addr == "" && len(lns) == 0 {
		addr = defaultNBDListen
	}
	if addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fail(fmt.Errorf("listen on %s: %w", addr, err))
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// activationListeners returns the sockets of systemd socket activation
// (LISTEN_PID is this process, LISTEN_FDS sockets from fd 3), or none.
func activationListeners() ([]net.Listener, error) {
	pid, err := strconv.Atoi(os.Getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n <= 0 {
		return nil, nil
	}
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(k)
	}
	var lns []net.Listener
	for fd := 3; fd < 3+n; fd++ {
		syscall.CloseOnExec(fd)
		f := os.NewFile(uintptr(fd), "listen-fd-"+strconv.Itoa(fd))
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("socket activation fd %d: %w", fd, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}
