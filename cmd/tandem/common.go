package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/tandem-dr/tandem/appliance"
)

// dataFlag lets every command take --data after its name too
// (`tandem disk list --data D` as well as `tandem --data D disk list`).
func dataFlag() cli.Flag {
	return &cli.StringFlag{Name: "data", Usage: "the site's data directory", EnvVars: []string{"TANDEM_DATA"}, Value: "./tandem-data"}
}

// jsonFlag is --json on read commands.
func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print machine-readable JSON"}
}

// dataDir is the innermost --data that was set, else the environment or
// the default.
func dataDir(c *cli.Context) string {
	for _, ctx := range c.Lineage() {
		if ctx.IsSet("data") {
			return ctx.String("data")
		}
	}
	return c.String("data")
}

// client is an API client for the daemon serving the command's data directory.
func client(c *cli.Context) *appliance.Client {
	return appliance.NewClient(dataDir(c))
}

// printJSON writes v as indented JSON to stdout.
func printJSON(c *cli.Context, v any) error {
	enc := json.NewEncoder(c.App.Writer)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newLogger is the daemon's logger: text to stderr.
func newLogger(debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// needArgs checks the number of positional arguments.
func needArgs(c *cli.Context, n int, names string) error {
	if c.NArg() != n {
		return usagef("%s: want %s", c.Command.FullName(), names)
	}
	return nil
}

// groupAction is the Action of a command group: a missing or unknown
// subcommand is a usage error (exit 2) that names the choices.
func groupAction(c *cli.Context) error {
	names := make([]string, 0, len(c.Command.Subcommands))
	for _, s := range c.Command.Subcommands {
		names = append(names, s.Name)
	}
	if c.NArg() == 0 {
		return usagef("%s: want a subcommand: %s", c.Command.FullName(), strings.Join(names, ", "))
	}
	return usagef("%s: unknown subcommand %q (want %s)", c.Command.FullName(), c.Args().First(), strings.Join(names, ", "))
}
