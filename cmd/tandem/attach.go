package main

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/tandem-dr/tandem/appliance"
	"github.com/tandem-dr/tandem/attach"
	"github.com/tandem-dr/tandem/nbd"
)

func attachCommand() *cli.Command {
	return &cli.Command{
		Name:      "attach",
		Usage:     "attach a disk or view as a local block device",
		ArgsUsage: "NAME",
		Flags: []cli.Flag{
			dataFlag(),
			&cli.BoolFlag{Name: "loop", Usage: "through the FUSE file and a loop device (the default)"},
			&cli.BoolFlag{Name: "nbd", Usage: "through the kernel NBD client"},
			&cli.StringFlag{Name: "at", Usage: "a view's point (NAME@POINT) instead of the disk"},
		},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, "NAME"); err != nil {
				return err
			}
			if c.Bool("loop") && c.Bool("nbd") {
				return usagef("attach: --loop and --nbd exclude each other")
			}
			name := c.Args().First()
			export := name
			if at := c.String("at"); at != "" {
				export = name + "@" + at
			}
			si, err := client(c).Site(c.Context)
			if err != nil {
				return err
			}
			var dev string
			if c.Bool("nbd") {
				dev, err = attachNBD(c, si, export)
			} else {
				dev, err = attachLoop(c, si, name, export)
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(c.App.Writer, dev)
			return nil
		},
	}
}

// attachLoop attaches the disk's FUSE file (or the view's) to a loop device
// with direct I/O, so blocks are not cached twice.
func attachLoop(c *cli.Context, si appliance.SiteInfo, name, export string) (string, error) {
	if si.FUSE == "" {
		return "", errors.New("attach --loop needs the daemon's FUSE mount: start tandem serve with --fuse DIR")
	}
	path := filepath.Join(si.FUSE, "disks", name)
	readOnly := false
	if export != name {
		path = filepath.Join(si.FUSE, "views", export)
		readOnly = true
	}
	dev, err := attach.Loop(c.Context, path, attach.LoopOptions{DirectIO: true, ReadOnly: readOnly})
	if err != nil {
		return "", fmt.Errorf("attach %s: %w", export, err)
	}
	return dev, nil
}

// attachNBD negotiates the export with the daemon and hands the connection
// to the kernel's NBD client.
func attachNBD(c *cli.Context, si appliance.SiteInfo, export string) (string, error) {
	var network, addr string
	for _, a := range si.NBD {
		if n, ad, err := appliance.ParseAddr(a); err == nil {
			network, addr = n, ad
			if n == "unix" {
				break
			}
		}
	}
	if addr == "" {
		return "", errors.New("attach --nbd: the daemon has no NBD listener")
	}
	cl, err := nbd.Dial(c.Context, network, addr, export, nbd.ClientOptions{})
	if err != nil {
		return "", fmt.Errorf("attach %s: %w", export, err)
	}
	dev, err := attach.NBD(c.Context, cl.Conn(), cl.Size(), cl.Flags(), attach.NBDOptions{})
	if err != nil {
		cl.Close()
		return "", fmt.Errorf("attach %s: %w", export, err)
	}
	return dev, nil
}

func detachCommand() *cli.Command {
	return &cli.Command{
		Name:      "detach",
		Usage:     "detach a block device attached with tandem attach",
		ArgsUsage: "DEVICE",
		Flags:     []cli.Flag{dataFlag()},
		Action: func(c *cli.Context) error {
			if err := needArgs(c, 1, "DEVICE"); err != nil {
				return err
			}
			if err := attach.Detach(c.Context, c.Args().First()); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "detached %s\n", c.Args().First())
			return nil
		},
	}
}
