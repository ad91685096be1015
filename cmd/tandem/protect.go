package main

import (
	"context"
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tandem-dr/tandem/appliance"
)

func protectCommand() *cli.Command {
	return &cli.Command{
		Name:      "protect",
		Usage:     "start replicating a disk to a paired site: initial sync, then continuous deltas",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			dataFlag(),
			&cli.StringFlag{Name: "peer", Usage: "the paired secondary site", Required: true},
			&cli.StringFlag{Name: "mode", Usage: "async, or sync (a write is acknowledged once the secondary's journal holds it)", Value: "async"},
			&cli.DurationFlag{Name: "retention", Usage: "how far back points in time are kept", Value: appliance.DefaultRetention},
			&cli.DurationFlag{Name: "checkpoint-every", Usage: "interval of automatic checkpoints (tagged points, shipped to the secondary)", Value: appliance.DefaultCheckpointEvery},
			&cli.DurationFlag{Name: "rpo-alert", Usage: "raise an alert when the lag passes this", Value: appliance.DefaultRPOAlert},
			&cli.StringFlag{Name: "compress", Usage: "zstd or none", Value: "zstd"},
			&cli.StringFlag{Name: "bandwidth", Usage: "limit on the wire, e.g. 50M (bytes per second); default unlimited"},
			&cli.StringFlag{Name: "group", Usage: "consistency group: the automatic checkpoints of its disks are cut at one instant"},
			&cli.StringFlag{Name: "peer-away", Usage: "sync mode when the secondary is away: async (fall back, with an alert) or hold (hold writes up to --sync-timeout)", Value: "async"},
			&cli.DurationFlag{Name: "sync-timeout", Usage: "sync mode: how long a write waits for the secondary", Value: 5 * time.Second},
		},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, "NAME"); err != nil {
				return err
			}
			p := appliance.Policy{
				Mode:            c.String("mode"),
				Retention:       appliance.Duration(c.Duration("retention")),
				CheckpointEvery: appliance.Duration(c.Duration("checkpoint-every")),
				RPOAlert:        appliance.Duration(c.Duration("rpo-alert")),
				Compress:        c.String("compress"),
				Group:           c.String("group"),
				PeerAway:        c.String("peer-away"),
				SyncTimeout:     appliance.Duration(c.Duration("sync-timeout")),
			}
			if s := c.String("bandwidth"); s != "" {
				n, err := appliance.ParseRate(s)
				if err != nil {
					return usagef("--bandwidth: %v", err)
				}
				p.Bandwidth = n
			}
			if err := p.Validate(); err != nil {
				return usageError{err}
			}
			di, err := client(c).Protect(c.Context, c.Args().First(), appliance.ProtectOptions{Peer: c.String("peer"), Policy: p})
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "protecting %s to %s (%s): %s\n", di.Name, di.Peer, p.Mode, di.State)
			return nil
		},
	}
}

func unprotectCommand() *cli.Command {
	return &cli.Command{
		Name:      "unprotect",
		Usage:     "stop replicating a disk (the secondary keeps its replica)",
		ArgsUsage: "NAME",
		Flags:     []cli.Flag{dataFlag()},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, "NAME"); err != nil {
				return err
			}
			di, err := client(c).Unprotect(c.Context, c.Args().First())
			if err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "%s: %s\n", di.Name, di.State)
			return nil
		},
	}
}

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "check the replica's journal chain and compare primary and replica region by region (digests only)",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			dataFlag(), jsonFlag(),
			&cli.DurationFlag{Name: "timeout", Usage: "give up after this long", Value: 10 * time.Minute},
		},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, "NAME"); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
			defer cancel()
			rep, err := client(c).Verify(ctx, c.Args().First())
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if err := printJSON(c, rep); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(c.App.Writer, "compared %d regions at point %d: %d differ, %d unsettled\n", rep.Regions, rep.Seq, len(rep.Differ), len(rep.Unsettled))
				for _, r := range rep.Differ {
					fmt.Fprintf(c.App.Writer, "  differs: offset %d length %d\n", r.Off, r.Len)
				}
				if rep.ChainChecked {
					if rep.ChainError != "" {
						fmt.Fprintf(c.App.Writer, "journal chain: BROKEN after %d: %s\n", rep.ChainThrough, rep.ChainError)
					} else {
						fmt.Fprintf(c.App.Writer, "journal chain: intact through %d\n", rep.ChainThrough)
					}
				}
			}
			if !rep.OK() {
				return fmt.Errorf("verify %s: the replica differs from the primary", c.Args().First())
			}
			return nil
		},
	}
}
