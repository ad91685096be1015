package appliance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/tandem-dr/tandem/pki"
)

// Init creates a data directory for a new site: its configuration and its
// identity (a CA of its own and a certificate signed by it). It refuses a
// directory that already holds a site.
func Init(dataDir, site string) (Config, error) {
	cfg := Config{Site: site}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	if _, err := os.Stat(configPath(dataDir)); err == nil {
		return Config{}, fmt.Errorf("%s already holds a site (config.json exists)", dataDir)
	} else if !errors.Is(err, os.ErrNotExist) {
		return Config{}, err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return Config{}, fmt.Errorf("create data directory: %w", err)
	}
	if _, err := pki.Init(filepath.Join(dataDir, "pki"), site); err != nil {
		return Config{}, fmt.Errorf("create site identity: %w", err)
	}
	if err := writeJSONFile(configPath(dataDir), cfg); err != nil {
		return Config{}, fmt.Errorf("write config: %w", err)
	}
	return cfg, nil
}
