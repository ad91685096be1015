package appliance

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/tandem-dr/tandem/disk"
	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/replica"
	"github.com/tandem-dr/tandem/replication"
)

// Roles of a disk at this site.
const (
	RolePrimary = "primary"
	RoleReplica = "replica"
)

// Sentinel errors of the disk table; the API maps them to HTTP statuses.
var (
	ErrDiskExists   = errors.New("appliance: disk exists")
	ErrDiskNotFound = errors.New("appliance: no such disk")
	ErrBadRequest   = errors.New("appliance: bad request")
)

var diskNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidateDiskName checks a disk name: letters, digits, '.', '_' and '-',
// at most 63, not starting with a punctuation mark ('@' separates a view's
// point from its disk, so it is never part of a name).
func ValidateDiskName(name string) error {
	if !diskNameRE.MatchString(name) {
		return fmt.Errorf("%w: disk name %q: use letters, digits, '.', '_' and '-' (at most 63, starting with a letter or digit)", ErrBadRequest, name)
	}
	return nil
}

// DiskMeta is a disk's persisted description, DATA/disks/NAME.json.
type DiskMeta struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Path    string    `json:"path"`  // the backing store
	Owned   bool      `json:"owned"` // Path was created by tandem and is removed with the disk
	Role    string    `json:"role"`
	Created time.Time `json:"created"`
	// Peer is the other site: where a protected primary replicates to,
	// or where a replica's primary is.
	Peer string `json:"peer,omitempty"`
	// Protected is set on a primary while it replicates to Peer.
	Protected bool   `json:"protected,omitempty"`
	Policy    Policy `json:"policy,omitempty"`
	// PeerClock is, on a replica, the primary's clock minus this site's
	// as last measured (replication.Policy.Clock): retention goes by the
	// records' times, which are the primary's.
	PeerClock Duration `json:"peer_clock,omitempty"`
}

// openDisk is a disk in service. A primary has its store and journaling
// tap (and a sender while protected); a replica has its replica.Disk.
type openDisk struct {
	meta  DiskMeta
	log   *journal.Log
	meter *meter

	file   *disk.File
	tap    *disk.Tap
	sender *replication.Sender

	replica *replica.Disk

	// On a protected primary: when the last automatic checkpoint was cut
	// (or the daemon first saw the disk protected), and the newest
	// checkpoint cut since the daemon started. Guarded by Daemon.mu.
	cutAt      time.Time
	checkpoint *Checkpoint
}

func (d *Daemon) disksDir() string { return filepath.Join(d.dataDir, "disks") }

func (d *Daemon) metaPath(name string) string {
	return filepath.Join(d.disksDir(), name+".json")
}

// loadDisks opens every disk described in DATA/disks.
func (d *Daemon) loadDisks(ctx context.Context) error {
	if err := os.MkdirAll(d.disksDir(), 0o700); err != nil {
		return fmt.Errorf("create disks dir: %w", err)
	}
	ents, err := os.ReadDir(d.disksDir())
	if err != nil {
		return fmt.Errorf("read disks dir: %w", err)
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		var m DiskMeta
		if err := readJSONFile(filepath.Join(d.disksDir(), e.Name()), &m); err != nil {
			return fmt.Errorf("load disk %s: %w", e.Name(), err)
		}
		od, err := d.openDisk(ctx, m, false)
		if err != nil {
			return fmt.Errorf("open disk %s: %w", m.Name, err)
		}
		d.disks[m.Name] = od
	}
	return nil
}

// openDisk opens a disk of either role. With create a primary's backing
// file is created (sparse) at m.Size.
func (d *Daemon) openDisk(ctx context.Context, m DiskMeta, create bool) (*openDisk, error) {
	if m.Role == RoleReplica {
		return d.openReplica(ctx, m)
	}
	opts := disk.FileOptions{}
	if create && m.Owned {
		opts.Size = m.Size
	}
	f, err := disk.OpenFile(m.Path, opts)
	if err != nil {
		return nil, fmt.Errorf("open backing store: %w", err)
	}
	if f.Size() < m.Size {
		f.Close()
		return nil, fmt.Errorf("backing store %s is %d bytes, disk needs %d", m.Path, f.Size(), m.Size)
	}
	l, err := d.journal.Log(m.Name)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open journal: %w", err)
	}
	tap, err := disk.NewTap(ctx, f, l, disk.TapOptions{}, d.log.With("disk", m.Name))
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open journaling tap: %w", err)
	}
	od := &openDisk{meta: m, file: f, log: l, tap: tap, meter: &meter{}}
	if m.Protected {
		if err := d.startSender(ctx, od); err != nil {
			od.close(ctx)
			return nil, err
		}
	}
	return od, nil
}

// openReplica opens a replica disk: its store, staging area and
// retention journal under DATA/replicas/NAME.
func (d *Daemon) openReplica(ctx context.Context, m DiskMeta) (*openDisk, error) {
	l, err := d.journal.Log(m.Name)
	if err != nil {
		return nil, fmt.Errorf("open journal: %w", err)
	}
	rd, err := replica.Open(ctx, m.Path, l, m.Size, replica.Options{Logger: d.log.With("disk", m.Name)})
	if err != nil {
		return nil, fmt.Errorf("open replica: %w", err)
	}
	return &openDisk{meta: m, log: l, replica: rd, meter: &meter{}}, nil
}

// close stops a disk: its sender, then its tap and store (or its replica).
func (od *openDisk) close(ctx context.Context) error {
	var errs []error
	if od.sender != nil {
		if err := od.sender.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stop replication: %w", err))
		}
		od.sender = nil
	}
	if od.tap != nil {
		errs = append(errs, od.tap.Close(ctx), od.file.Close())
	}
	if od.replica != nil {
		errs = append(errs, od.replica.Close(ctx))
	}
	return errors.Join(errs...)
}

// CreateOptions describe a new disk.
type CreateOptions struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	// From names an existing file or block device to protect in place.
	// When empty, a sparse raw file is created in the data directory.
	From string `json:"from,omitempty"`
}

// CreateDisk creates a disk and starts serving it.
func (d *Daemon) CreateDisk(ctx context.Context, o CreateOptions) (DiskInfo, error) {
	if err := ValidateDiskName(o.Name); err != nil {
		return DiskInfo{}, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.disks[o.Name]; ok {
		return DiskInfo{}, fmt.Errorf("%w: %s", ErrDiskExists, o.Name)
	}
	m := DiskMeta{Name: o.Name, Size: o.Size, Role: RolePrimary, Created: time.Now().UTC()}
	if o.From != "" {
		abs, err := filepath.Abs(o.From)
		if err != nil {
			return DiskInfo{}, fmt.Errorf("%w: --from %s: %v", ErrBadRequest, o.From, err)
		}
		st, err := os.Stat(abs)
		if err != nil {
			return DiskInfo{}, fmt.Errorf("%w: --from: %v", ErrBadRequest, err)
		}
		if st.IsDir() {
			return DiskInfo{}, fmt.Errorf("%w: --from %s is a directory", ErrBadRequest, abs)
		}
		m.Path = abs
		if m.Size == 0 {
			f, err := disk.OpenFile(abs, disk.FileOptions{ReadOnly: true})
			if err != nil {
				return DiskInfo{}, fmt.Errorf("%w: --from: %v", ErrBadRequest, err)
			}
			m.Size = f.Size()
			f.Close()
		}
	} else {
		m.Path = filepath.Join(d.disksDir(), o.Name+".img")
		m.Owned = true
		if _, err := os.Stat(m.Path); err == nil {
			return DiskInfo{}, fmt.Errorf("%w: %s: backing file %s already exists", ErrDiskExists, o.Name, m.Path)
		}
	}
	if m.Size <= 0 || m.Size%512 != 0 {
		return DiskInfo{}, fmt.Errorf("%w: size %d: must be a positive multiple of 512 bytes", ErrBadRequest, m.Size)
	}
	od, err := d.openDisk(ctx, m, true)
	if err != nil {
		if m.Owned {
			os.Remove(m.Path)
		}
		return DiskInfo{}, err
	}
	if err := writeJSONFile(d.metaPath(o.Name), m); err != nil {
		od.close(ctx)
		if m.Owned {
			os.Remove(m.Path)
		}
		return DiskInfo{}, fmt.Errorf("save disk %s: %w", o.Name, err)
	}
	d.disks[o.Name] = od
	d.log.Info("disk created", "disk", o.Name, "size", m.Size, "path", m.Path)
	d.notifyChange(o.Name)
	return od.info(ctx), nil
}

// RemoveDisk stops serving a disk, drops its journal and, when tandem
// created its backing file, deletes it.
func (d *Daemon) RemoveDisk(ctx context.Context, name string) error {
	d.mu.Lock()
	od, ok := d.disks[name]
	if ok {
		delete(d.disks, name)
	}
	if ok {
		d.notifyChange(name)
	}
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrDiskNotFound, name)
	}
	var errs []error
	if err := od.close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("close: %w", err))
	}
	if err := d.journal.DropLog(ctx, name); err != nil {
		errs = append(errs, fmt.Errorf("drop journal: %w", err))
	}
	if err := os.Remove(d.metaPath(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if od.meta.Owned {
		if err := os.RemoveAll(od.meta.Path); err != nil {
			errs = append(errs, err)
		}
	}
	d.log.Info("disk removed", "disk", name)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove disk %s: %w", name, err)
	}
	return nil
}

// DiskInfo is what `disk list` and `disk info` show.
type DiskInfo struct {
	Name    string    `json:"name"`
	Size    int64     `json:"size"`
	Path    string    `json:"path"`
	Role    string    `json:"role"`
	State   string    `json:"state"`
	Created time.Time `json:"created"`
	// Journal: the newest sequence number and the unreleased bytes.
	JournalHead  uint64 `json:"journal_head"`
	JournalBytes int64  `json:"journal_bytes"`
	// Overflowed is set when the journal reached its limit and the disk
	// tracks dirty regions for a later resync.
	Overflowed bool    `json:"overflowed"`
	Peer       string  `json:"peer,omitempty"`
	Policy     *Policy `json:"policy,omitempty"`
	// Retention is a replica's retention, as its primary sent it; zero
	// (none sent) keeps every record.
	Retention Duration `json:"retention,omitempty"`
}

func (od *openDisk) info(ctx context.Context) DiskInfo {
	di := DiskInfo{
		Name:         od.meta.Name,
		Size:         od.meta.Size,
		Path:         od.meta.Path,
		Role:         od.meta.Role,
		Peer:         od.meta.Peer,
		State:        od.state(ctx),
		Created:      od.meta.Created,
		JournalHead:  od.log.Head(),
		JournalBytes: od.log.Bytes(),
	}
	if od.tap != nil {
		di.Overflowed = od.tap.Overflowed()
	}
	if od.meta.Protected {
		p := od.meta.Policy.withDefaults()
		di.Policy = &p
	}
	if od.replica != nil {
		di.Retention = od.meta.Policy.Retention
	}
	return di
}

// state is the disk's replication state, in the words of the spec.
func (od *openDisk) state(ctx context.Context) string {
	switch {
	case od.replica != nil:
		st, err := od.replica.State(ctx)
		switch {
		case err != nil:
			return "failed"
		case !st.Initialized:
			return "initial-sync"
		case st.Sync != nil:
			return "resync"
		}
		return "protected"
	case od.sender != nil:
		return od.sender.Status(ctx).State
	case od.tap != nil && od.tap.NeedsResync():
		return "resync"
	}
	return "unprotected"
}

// Disks lists the disks, by name.
func (d *Daemon) Disks(ctx context.Context) []DiskInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]DiskInfo, 0, len(d.disks))
	for _, od := range d.disks {
		out = append(out, od.info(ctx))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Disk describes one disk.
func (d *Daemon) Disk(ctx context.Context, name string) (DiskInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	od, ok := d.disks[name]
	if !ok {
		return DiskInfo{}, fmt.Errorf("%w: %s", ErrDiskNotFound, name)
	}
	return od.info(ctx), nil
}

func (d *Daemon) lookup(name string) (*openDisk, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	od, ok := d.disks[name]
	return od, ok
}
