package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/tandem-dr/tandem/appliance"
)

func initCommand() *cli.Command {
	return &cli.Command{
		Name:  "init",
		Usage: "create the data directory, the site's identity and its configuration",
		Flags: []cli.Flag{
			dataFlag(),
			&cli.StringFlag{Name: "site", Usage: "the site's name", Required: true},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 0 {
				return usagef("init takes no arguments")
			}
			dir := dataDir(c)
			cfg, err := appliance.Init(dir, c.String("site"))
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "initialized site %s in %s\n", cfg.Site, dir)
			return nil
		},
	}
}
