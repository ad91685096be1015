package main

import (
	"github.com/urfave/cli/v2"

	"github.com/tandem-dr/tandem/appliance/demo"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "walk through tandem on loopback in a temporary directory, checking the data at every step",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "keep", Usage: "keep the temporary directory"},
		},
		Action: func(c *cli.Context) error {
			return demo.Run(c.Context, c.App.Writer, demo.Options{Keep: c.Bool("keep")})
		},
	}
}
