package main

import (
	"os"
	"runtime/debug"

	"github.com/urfave/cli/v2"

	"github.com/tandem-dr/tandem/appliance"
)

// defaultMemoryLimit is the Go heap's soft limit in the daemon: well
// inside the appliance's 256 MiB budget, leaving room for mapped files.
const defaultMemoryLimit = 128 << 20

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the appliance in the foreground",
		Flags: []cli.Flag{
			dataFlag(),
			&cli.StringSliceFlag{Name: "nbd", Usage: "NBD listener, unix:PATH or tcp:HOST:PORT, with ?tls=optional or ?tls=required for STARTTLS with the site's certificate (repeatable; default unix:DATA/nbd.sock and tcp:127.0.0.1:10809)"},
			&cli.StringFlag{Name: "api", Usage: "API listener (default unix:DATA/api.sock)"},
			&cli.StringFlag{Name: "repl", Usage: "replication listener, mutual TLS only (default tcp:0.0.0.0:7800)"},
			&cli.StringFlag{Name: "fuse", Usage: "mount disks and views as files under this directory"},
			&cli.StringFlag{Name: "journal-max", Usage: "per-disk journal limit, e.g. 4G (default from config)"},
			&cli.BoolFlag{Name: "debug", Usage: "log at debug level"},
			&cli.BoolFlag{Name: "profile", Usage: "serve Go's profiles on the API under /debug/pprof/"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return usagef("serve takes no arguments")
			}
			opts := appliance.Options{
				NBD:     c.StringSlice("nbd"),
				API:     c.String("api"),
				Repl:    c.String("repl"),
				FUSE:    c.String("fuse"),
				Profile: c.Bool("profile"),
			}
			if s := c.String("journal-max"); s != "" {
				n, err := appliance.ParseSize(s)
				if err != nil {
					return usagef("--journal-max: %v", err)
				}
				opts.JournalMaxBytes = n
			}
			// The appliance's memory budget: the collector works harder
			// rather than let the heap grow past it (GOMEMLIMIT overrides).
			if os.Getenv("GOMEMLIMIT") == "" {
				debug.SetMemoryLimit(defaultMemoryLimit)
			}
			logger := newLogger(c.Bool("debug"))
			d, err := appliance.Open(c.Context, dataDir(c), opts, logger)
			if err != nil {
				return err
			}
			return d.Serve(c.Context)
		},
	}
}
