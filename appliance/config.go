package appliance

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
)

// Defaults of the configuration; a zero field means its default.
const (
	DefaultAPIAddr       = "unix:api.sock"
	DefaultReplAddr      = "tcp:0.0.0.0:7800"
	DefaultNBDUnix       = "unix:nbd.sock"
	DefaultNBDTCP        = "tcp:127.0.0.1:10809"
	DefaultJournalMaxMiB = 4096
)

// Config is the site's configuration, kept in DATA/config.json.
type Config struct {
	// Site is the site's name, unique among paired appliances.
	Site string `json:"site"`
	// NBD lists the NBD listeners ("unix:PATH" or "tcp:HOST:PORT"); relative
	// unix paths are inside the data directory. Empty means the defaults.
	NBD []string `json:"nbd,omitempty"`
	// API is the management API listener. Empty means DATA/api.sock.
	API string `json:"api,omitempty"`
	// Repl is the replication listener (mutual TLS). Empty means :7800.
	Repl string `json:"repl,omitempty"`
	// JournalMaxMiB bounds each disk's unreleased journal; past it the
	// disk falls back to dirty-region tracking. Zero means the default.
	JournalMaxMiB int64 `json:"journal_max_mib,omitempty"`
	// Hooks are the commands run around an app-consistent checkpoint.
	FreezeHook string `json:"freeze_hook,omitempty"`
	ThawHook   string `json:"thaw_hook,omitempty"`
}

var siteNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// Validate checks the configuration.
func (c *Config) Validate() error {
	if !siteNameRE.MatchString(c.Site) {
		return fmt.Errorf("site name %q: use letters, digits, '.', '_' and '-' (at most 63)", c.Site)
	}
	if c.JournalMaxMiB < 0 {
		return fmt.Errorf("journal_max_mib %d: must not be negative", c.JournalMaxMiB)
	}
	return nil
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	if len(c.NBD) == 0 {
		c.NBD = []string{DefaultNBDUnix, DefaultNBDTCP}
	}
	if c.API == "" {
		c.API = DefaultAPIAddr
	}
	if c.Repl == "" {
		c.Repl = DefaultReplAddr
	}
	if c.JournalMaxMiB == 0 {
		c.JournalMaxMiB = DefaultJournalMaxMiB
	}
	return c
}

// ErrNotInitialized is returned when a data directory has no configuration.
var ErrNotInitialized = errors.New("appliance: data directory not initialized (run tandem init --site NAME)")

func configPath(dataDir string) string { return filepath.Join(dataDir, "config.json") }

// LoadConfig reads DATA/config.json.
func LoadConfig(dataDir string) (Config, error) {
	b, err := os.ReadFile(configPath(dataDir))
	if errors.Is(err, os.ErrNotExist) {
		return Config{}, fmt.Errorf("%s: %w", dataDir, ErrNotInitialized)
	}
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return Config{}, fmt.Errorf("parse %s: %w", configPath(dataDir), err)
	}
	if err := c.Validate(); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", configPath(dataDir), err)
	}
	return c, nil
}

// writeJSONFile writes v to path atomically (temp file, fsync, rename).
func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readJSONFile decodes the JSON file at path into v.
func readJSONFile(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	return nil
}
