package pki

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// FS is the seam through which the package reads and writes every file, so
// tests can inject ENOSPC, EIO and torn writes. OSFS is the real one.
type FS interface {
	// ReadFile returns the whole content of name.
	ReadFile(name string) ([]byte, error)
	// WriteFile replaces name with data and mode perm atomically: after a
	// crash name holds either its old content or data, never a mix. The
	// new content is durable when WriteFile returns nil.
	WriteFile(name string, data []byte, perm fs.FileMode) error
	// Remove deletes name; the removal is durable when Remove returns nil.
	Remove(name string) error
	// ReadDir lists the entries of the directory name.
	ReadDir(name string) ([]fs.DirEntry, error)
	// MkdirAll creates the directory name and any missing parents.
	MkdirAll(name string, perm fs.FileMode) error
	// Stat describes name.
	Stat(name string) (fs.FileInfo, error)
}

// OSFS is the FS of the operating system. WriteFile writes a temporary
// file in the same directory, syncs it, renames it over name and syncs the
// directory.
type OSFS struct{}

var _ FS = OSFS{}

// ReadFile implements FS.
func (OSFS) ReadFile(name string) ([]byte, error) { return os.ReadFile(name) }

// ReadDir implements FS.
func (OSFS) ReadDir(name string) ([]fs.DirEntry, error) { return os.ReadDir(name) }

// MkdirAll implements FS.
func (OSFS) MkdirAll(name string, perm fs.FileMode) error { return os.MkdirAll(name, perm) }

// Stat implements FS.
func (OSFS) Stat(name string) (fs.FileInfo, error) { return os.Stat(name) }

// Remove implements FS.
func (OSFS) Remove(name string) error {
	if err := os.Remove(name); err != nil {
		return err
	}
	return syncDir(filepath.Dir(name))
}

// WriteFile implements FS.
func (OSFS) WriteFile(name string, data []byte, perm fs.FileMode) (err error) {
	dir := filepath.Dir(name)
	f, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, name); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
