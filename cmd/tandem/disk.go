package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/tandem-dr/tandem/appliance"
)

func diskCommand() *cli.Command {
	return &cli.Command{
		Name:   "disk",
		Usage:  "manage protected disks",
		Action: groupAction,
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create a disk",
				ArgsUsage: "NAME",
				Flags: []cli.Flag{
					dataFlag(),
					&cli.StringFlag{Name: "size", Usage: "size with K, M, G or T suffix (powers of 1024)"},
					&cli.StringFlag{Name: "from", Usage: "protect this existing file or block device in place"},
				},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "NAME"); err != nil {
						return err
					}
					o := appliance.CreateOptions{Name: c.Args().First(), From: c.String("from")}
					switch s := c.String("size"); {
					case s != "":
						n, err := appliance.ParseSize(s)
						if err != nil {
							return usagef("--size: %v", err)
						}
						o.Size = n
					case o.From == "":
						return usagef("disk create: --size is required (or --from an existing file)")
					}
					di, err := client(c).CreateDisk(c.Context, o)
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "created disk %s (%s) at %s\n", di.Name, appliance.FormatSize(di.Size), di.Path)
					return nil
				},
			},
			{
				Name:  "list",
				Usage: "list the disks",
				Flags: []cli.Flag{dataFlag(), jsonFlag()},
				Action: func(c *cli.Context) error {
					disks, err := client(c).Disks(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c, disks)
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "NAME\tSIZE\tROLE\tSTATE\tPEER\tJOURNAL")
					for _, d := range disks {
						peer := d.Peer
						if peer == "" {
							peer = "-"
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", d.Name, appliance.FormatSize(d.Size), d.Role, d.State, peer, d.JournalHead)
					}
					return tw.Flush()
				},
			},
			{
				Name:      "info",
				Usage:     "describe a disk",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{dataFlag(), jsonFlag()},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "NAME"); err != nil {
						return err
					}
					d, err := client(c).Disk(c.Context, c.Args().First())
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(c, d)
					}
					tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
					fmt.Fprintf(tw, "name:\t%s\nsize:\t%s (%d bytes)\npath:\t%s\nrole:\t%s\nstate:\t%s\ncreated:\t%s\njournal head:\t%d\njournal bytes:\t%d\n",
						d.Name, appliance.FormatSize(d.Size), d.Size, d.Path, d.Role, d.State, d.Created.Format("2006-01-02 15:04:05Z07:00"), d.JournalHead, d.JournalBytes)
					if d.Peer != "" {
						fmt.Fprintf(tw, "peer:\t%s\n", d.Peer)
					}
					if d.Role == appliance.RoleReplica {
						retention := "every record kept (the primary sent none)"
						if d.Retention > 0 {
							retention = time.Duration(d.Retention).String() + " (the primary's policy)"
						}
						fmt.Fprintf(tw, "retention:\t%s\n", retention)
					}
					if p := d.Policy; p != nil {
						fmt.Fprintf(tw, "policy:\tmode %s, retention %s, checkpoint every %s, rpo alert %s, compress %s",
							p.Mode, time.Duration(p.Retention), time.Duration(p.CheckpointEvery), time.Duration(p.RPOAlert), p.Compress)
						if p.Bandwidth > 0 {
							fmt.Fprintf(tw, ", bandwidth %s/s", appliance.FormatRate(float64(p.Bandwidth)))
						}
						if p.Group != "" {
							fmt.Fprintf(tw, ", group %s", p.Group)
						}
						fmt.Fprintln(tw)
					}
					return tw.Flush()
				},
			},
			{
				Name:      "rm",
				Usage:     "remove a disk and its journal",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{dataFlag()},
				Action: func(c *cli.Context) error {
					if err := needArgs(c, 1, "NAME"); err != nil {
						return err
					}
					if err := client(c).RemoveDisk(c.Context, c.Args().First()); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "removed disk %s\n", c.Args().First())
					return nil
				},
			},
		},
	}
}
