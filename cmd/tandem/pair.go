package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/tandem-dr/tandem/appliance"
)

func pairCommand() *cli.Command {
	return &cli.Command{
		Name:   "pair",
		Usage:  "pair this site with its peer",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:  "token",
				Usage: "on the secondary: print a one-time pairing token (valid 15 minutes)",
				Flags: []cli.Flag{
					dataFlag(),
					&cli.StringFlag{Name: "address", Usage: "HOST:PORT the primary should dial (default the replication listener's)"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 0 {
						return usagef("pair token takes no arguments")
					}
					resp, err := client(c).PairToken(c.Context, appliance.TokenRequest{Address: c.String("address")})
					if err != nil {
						return err
					}
					fmt.Fprintln(c.App.Writer, resp.Token)
					fmt.Fprintf(c.App.ErrWriter, "dial %s, valid until %s; on the primary: tandem pair add TOKEN\n",
						resp.Address, resp.Expires.Local().Format("15:04:05"))
					return nil
				},
			},
			{
				Name:      "add",
				Usage:     "on the primary: pair with the secondary that printed TOKEN",
				ArgsUsage: "TOKEN",
				Flags:     []cli.Flag{dataFlag()},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "TOKEN"); err != nil {
						return err
					}
					p, err := client(c).Pair(c.Context, c.Args().First())
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "paired with site %s at %s (CA %s)\n", p.Site, p.Address, p.CAFingerprint)
					return nil
				},
			},
			{
				Name:  "list",
				Usage: "list the paired sites",
				Flags: []cli.Flag{dataFlag(), jsonFlag()},
				Action: func(c *cli.Context) error {
					peers, err := client(c).Peers(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c, peers)
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "SITE\tADDRESS\tCA FINGERPRINT")
					for _, p := range peers {
						fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Site, p.Address, p.CAFingerprint)
					}
					return tw.Flush()
				},
			},
			{
				Name:      "rm",
				Usage:     "forget a paired site",
				ArgsUsage: "SITE",
				Flags:     []cli.Flag{dataFlag()},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "SITE"); err != nil {
						return err
					}
					if err := client(c).Unpair(c.Context, c.Args().First()); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "unpaired %s\n", c.Args().First())
					return nil
				},
			},
		},
	}
}
