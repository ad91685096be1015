package attach

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"
)

// ErrNoKernelNBD is wrapped by the error NBD returns on a kernel that has
// no NBD client: nbd is neither built in nor available as a module.
var ErrNoKernelNBD = errors.New("attach: kernel has no NBD client")

// noNBDError says plainly why there is no /dev/nbdN and what to do.
type noNBDError struct {
	release, why string
}

func (e *noNBDError) Error() string {
	return fmt.Sprintf("this kernel (%s) has no NBD client: nbd is not built in and %s; attach with --loop instead", e.release, e.why)
}

func (e *noNBDError) Is(target error) bool { return target == ErrNoKernelNBD }

// kernelRelease is uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// moduleSuffixes are the file names a module may have, compressed or not.
var moduleSuffixes = []string{".ko", ".ko.zst", ".ko.xz", ".ko.gz"}

// LoadNBD makes sure the kernel's NBD client is present, loading the nbd
// module when it is installed but not loaded. On a kernel without one it
// returns an error wrapping ErrNoKernelNBD that says so and points to
// --loop. NBD calls it itself; a caller can call it first to fail before
// it connects to a server.
func LoadNBD(ctx context.Context) error {
	if err := loadNBDModule(ctx); err != nil {
		return fmt.Errorf("nbd attach: %w", err)
	}
	return nil
}

// loadNBDModule makes sure the nbd driver is present: built in or
// loaded already (/sys/module/nbd), else found through modules.dep under
// /lib/modules/RELEASE and loaded with finit_module or init_module.
func loadNBDModule(ctx context.Context) error {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		return nil
	}
	release := kernelRelease()
	root := filepath.Join("/lib/modules", release)
	paths, err := findModule(root, "nbd")
	if err != nil {
		return &noNBDError{release: release, why: err.Error()}
	}
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("load module %s: %w", p, err)
		}
		if err := loadModuleFile(ctx, p); err != nil {
			return fmt.Errorf("load module %s: %w", p, err)
		}
	}
	for range 100 { // the driver registers asynchronously
		if _, err := os.Stat("/sys/module/nbd"); err == nil {
			return nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	return &noNBDError{release: release, why: "loading " + paths[len(paths)-1] + " did not create /sys/module/nbd"}
}

// findModule returns the files to load for module name under the modules
// root of one kernel, dependencies first, read from modules.dep (or, when
// that is missing, found by walking the tree).
func findModule(root, name string) ([]string, error) {
	dep, err := os.ReadFile(filepath.Join(root, "modules.dep"))
	if err != nil {
		if p, werr := walkForModule(root, name); werr == nil {
			return []string{p}, nil
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no modules are installed for it (%s does not exist)", root)
		}
		return nil, fmt.Errorf("read %s: %v", filepath.Join(root, "modules.dep"), err)
	}
	rel, deps, ok := parseModulesDep(dep, name)
	if !ok {
		return nil, fmt.Errorf("no %s module is listed in %s", name, filepath.Join(root, "modules.dep"))
	}
	var out []string
	for i := len(deps) - 1; i >= 0; i-- { // modules.dep lists the deepest dependency last
		out = append(out, filepath.Join(root, deps[i]))
	}
	return append(out, filepath.Join(root, rel)), nil
}

// parseModulesDep finds module name in the text of a modules.dep file:
// lines "kernel/drivers/block/nbd.ko.zst: dep1.ko dep2.ko". It returns
// the module's path and its dependencies, relative to the modules root.
func parseModulesDep(data []byte, name string) (string, []string, bool) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		mod, rest, ok := strings.Cut(line, ":")
		mod = strings.TrimSpace(mod)
		if !ok || !isModuleFile(filepath.Base(mod), name) {
			continue
		}
		return mod, strings.Fields(rest), true
	}
	return "", nil, false
}

func isModuleFile(base, name string) bool {
	for _, s := range moduleSuffixes {
		if base == name+s {
			return true
		}
	}
	return false
}

func walkForModule(root, name string) (string, error) {
	var found string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && isModuleFile(d.Name(), name) {
			found = p
			return fs.SkipAll
		}
		return nil
	})
	if err == nil && found == "" {
		err = fs.ErrNotExist
	}
	return found, err
}

// loadModuleFile loads one module file. The kernel decompresses with
// MODULE_INIT_COMPRESSED_FILE where it can; else zstd and gzip are
// decompressed here, and xz is left to modprobe.
func loadModuleFile(ctx context.Context, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	if !strings.HasSuffix(path, ".ko") {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if err == nil || errors.Is(err, unix.EEXIST) {
		return nil
	}
	if flags == 0 {
		return fmt.Errorf("finit_module: %w", err)
	}
	var image []byte
	switch {
	case strings.HasSuffix(path, ".zst"):
		d, derr := zstd.NewReader(f)
		if derr != nil {
			return fmt.Errorf("zstd: %w", derr)
		}
		image, err = io.ReadAll(d)
		d.Close()
	case strings.HasSuffix(path, ".gz"):
		z, zerr := gzip.NewReader(f)
		if zerr != nil {
			return fmt.Errorf("gzip: %w", zerr)
		}
		image, err = io.ReadAll(z)
	default:
		return modprobe(ctx, path)
	}
	if _, serr := f.Seek(0, io.SeekStart); serr != nil && err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("decompress: %w", err)
	}
	if err := unix.InitModule(image, ""); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("init_module: %w", err)
	}
	return nil
}

// modprobe loads the module named by the file with modprobe, when it is
// installed.
func modprobe(ctx context.Context, path string) error {
	prog, err := exec.LookPath("modprobe")
	if err != nil {
		return fmt.Errorf("cannot decompress %s and modprobe is not installed", filepath.Base(path))
	}
	name := filepath.Base(path)
	name = name[:strings.Index(name, ".ko")]
	out, err := exec.CommandContext(ctx, prog, name).CombinedOutput()
	if err != nil {
		return fmt.Errorf("modprobe %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
