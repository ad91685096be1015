package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "per disk: role, state, lag, recovery window, throughput",
		ArgsUsage: "[NAME]",
		Flags:     []cli.Flag{dataFlag(), jsonFlag()},
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usagef("status: want at most one disk NAME")
			}
			st, err := client(c).Status(c.Context, c.Args().First())
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c, st)
			}
			if len(st) == 0 {
				fmt.Fprintln(c.App.Writer, "no disks")
			}
			for _, s := range st {
				fmt.Fprintln(c.App.Writer, s.String())
			}
			return nil
		},
	}
}
