// Command bench runs tandem's speed and memory benchmarks against peers
// (nbdkit, qemu-nbd, nbdfuse) in the same run and prints tables of ratios.
// `make bench` runs every suite; -suite picks some.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strings"
)

// suite is one benchmark: it prints its own table.
type suite func(ctx context.Context, env *benchEnv) error

// benchEnv is what every suite gets.
type benchEnv struct {
	Bin     string // the tandem binary
	WorkDir string // a scratch directory, removed at the end
	Short   bool
}

func main() {
	bin := flag.String("bin", "bin/tandem", "the tandem binary")
	only := flag.String("suite", "", "comma-separated suites to run (default all)")
	short := flag.Bool("short", false, "smaller sizes and shorter runs")
	flag.Parse()

	// Every suite adds itself here, one line each.
	suites := map[string]suite{
		"nbd":         benchNBD,
		"fuse":        benchFUSE,
		"appliance":   benchAppliance,
		"replication": benchReplication,
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	work, err := os.MkdirTemp("", "tandem-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	defer os.RemoveAll(work)
	env := &benchEnv{Bin: *bin, WorkDir: work, Short: *short}

	names := make([]string, 0, len(suites))
	for name := range suites {
		if *only == "" || strings.Contains(","+*only+",", ","+name+",") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	failed := false
	for _, name := range names {
		fmt.Printf("\n== %s\n", name)
		if err := suites[name](ctx, env); err != nil {
			fmt.Fprintf(os.Stderr, "bench %s: %v\n", name, err)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}
