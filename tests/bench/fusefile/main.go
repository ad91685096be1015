// Command fusefile mounts one raw file through package fusefs, as
// MOUNT/disks/NAME, until it is interrupted. The fuse bench suite uses it
// to measure fusefs over a plain file (the floor under the daemon's
// journaled file) and to profile it; it is not part of the product.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"

	"github.com/tandem-dr/tandem/fusefs"
	"golang.org/x/sys/unix"
)

// rawFile is a raw image file as a fusefs.File: fsync flushes, punch hole
// trims.
type rawFile struct {
	*os.File
	size int64
}

func (f rawFile) Size() int64                     { return f.size }
func (f rawFile) Flush(ctx context.Context) error { return f.File.Sync() }
func (f rawFile) Trim(off, length int64) error {
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

func main() {
	file := flag.String("file", "", "the raw image to present")
	mount := flag.String("mount", "", "the mount point")
	name := flag.String("name", "", "the file's name under disks/ (default the image's base name)")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile here")
	debug := flag.Bool("debug", false, "log every FUSE request")
	flag.Parse()
	if err := run(*file, *mount, *name, *cpuprofile, *debug); err != nil {
		fmt.Fprintln(os.Stderr, "fusefile:", err)
		os.Exit(1)
	}
}

func run(file, mount, name, cpuprofile string, debug bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if name == "" {
		name = filepath.Base(file)
	}
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	var set fusefs.Set
	if err := set.Put(fusefs.Entry{Dir: fusefs.DirDisks, Name: name, File: rawFile{f, st.Size()}}); err != nil {
		return err
	}
	if cpuprofile != "" {
		pf, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fsys, err := fusefs.Mount(ctx, mount, &set, fusefs.Options{Debug: debug}, logger)
	if err != nil {
		return err
	}
	fmt.Println("ready", filepath.Join(mount, fusefs.DirDisks, name))
	<-ctx.Done()
	return fsys.Unmount(context.Background())
}
