// Command tandem is the disaster-recovery appliance: the daemon, its CLI and
// the standalone NBD server. Each command group lives in a file of its own;
// actions are thin and call into the library with c.Context.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/urfave/cli/v2"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args))
}

// run executes the CLI and maps errors to the exit codes of the spec:
// 0 success, 1 failure, 2 usage.
func run(ctx context.Context, args []string) int {
	app := newApp()
	err := app.RunContext(ctx, permuteArgs(app, args))
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "tandem: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	return 1
}

// usageError marks an error in how a command was called (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func newApp() *cli.App {
	return &cli.App{
		Name:                 "tandem",
		Usage:                "disaster recovery for Linux block storage",
		HideHelpCommand:      true,
		EnableBashCompletion: false,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "data",
				Usage:   "the site's data directory",
				EnvVars: []string{"TANDEM_DATA"},
				Value:   "./tandem-data",
			},
		},
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(os.Stderr, "tandem: unknown command %q (see tandem --help)\n", name)
			os.Exit(2)
		},
		OnUsageError: func(c *cli.Context, err error, isSubcommand bool) error {
			return usageError{err}
		},
		// Every command group adds itself here, one line each.
		Commands: []*cli.Command{
			initCommand(),
			serveCommand(),
			diskCommand(),
			statusCommand(),
			pairCommand(),
			protectCommand(),
			unprotectCommand(),
			verifyCommand(),
			attachCommand(),
			detachCommand(),
			nbdCommand(),
			demoCommand(),
		},
	}
}
