package appliance

import (
	"encoding/json"
	"fmt"
	"time"
)

// Policy defaults of `tandem protect`.
const (
	DefaultRetention       = 24 * time.Hour
	DefaultCheckpointEvery = time.Hour
	DefaultRPOAlert        = 30 * time.Second
	ModeAsync              = "async"
	ModeSync               = "sync"
	CompressZstd           = "zstd"
	CompressNone           = "none"
)

// Duration is a time.Duration that reads and writes JSON as "1h30m".
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "1h30m" (or a number of nanoseconds).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n int64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return fmt.Errorf("duration: want a string such as \"30s\": %w", err)
		}
		*d = Duration(n)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Policy is a protected disk's replication policy (the flags of protect).
// Zero fields take the defaults.
type Policy struct {
	Mode            string   `json:"mode,omitempty"`
	Retention       Duration `json:"retention,omitempty"`
	CheckpointEvery Duration `json:"checkpoint_every,omitempty"`
	RPOAlert        Duration `json:"rpo_alert,omitempty"`
	Compress        string   `json:"compress,omitempty"`
	// Bandwidth limits bytes per second on the wire; 0 is unlimited.
	Bandwidth int64  `json:"bandwidth,omitempty"`
	Group     string `json:"group,omitempty"`
	// PeerAway is what sync mode does when the secondary does not
	// acknowledge within SyncTimeout: "async" (fall back, with an alert;
	// the default) or "hold" (fail the wait, holding writes each time for
	// at most SyncTimeout).
	PeerAway    string   `json:"peer_away,omitempty"`
	SyncTimeout Duration `json:"sync_timeout,omitempty"`
}

// Peer-away policies of sync mode.
const (
	PeerAwayAsync = "async"
	PeerAwayHold  = "hold"
)

// withDefaults fills in zero fields.
func (p Policy) withDefaults() Policy {
	if p.Mode == "" {
		p.Mode = ModeAsync
	}
	if p.Retention == 0 {
		p.Retention = Duration(DefaultRetention)
	}
	if p.CheckpointEvery == 0 {
		p.CheckpointEvery = Duration(DefaultCheckpointEvery)
	}
	if p.RPOAlert == 0 {
		p.RPOAlert = Duration(DefaultRPOAlert)
	}
	if p.Compress == "" {
		p.Compress = CompressZstd
	}
	if p.PeerAway == "" {
		p.PeerAway = PeerAwayAsync
	}
	return p
}

// Validate checks a policy.
func (p Policy) Validate() error {
	switch p.Mode {
	case "", ModeAsync, ModeSync:
	default:
		return fmt.Errorf("%w: --mode %q: want async or sync", ErrBadRequest, p.Mode)
	}
	switch p.Compress {
	case "", CompressZstd, CompressNone:
	default:
		return fmt.Errorf("%w: --compress %q: want zstd or none", ErrBadRequest, p.Compress)
	}
	switch p.PeerAway {
	case "", PeerAwayAsync, PeerAwayHold:
	default:
		return fmt.Errorf("%w: --peer-away %q: want async or hold", ErrBadRequest, p.PeerAway)
	}
	if p.SyncTimeout < 0 || p.Retention < 0 || p.CheckpointEvery < 0 || p.RPOAlert < 0 || p.Bandwidth < 0 {
		return fmt.Errorf("%w: durations and bandwidth must not be negative", ErrBadRequest)
	}
	if p.Group != "" && !diskNameRE.MatchString(p.Group) {
		return fmt.Errorf("%w: --group %q: use letters, digits, '.', '_' and '-'", ErrBadRequest, p.Group)
	}
	return nil
}
