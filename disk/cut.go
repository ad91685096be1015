package disk

import (
	"context"
	"fmt"

	"github.com/tandem-dr/tandem/journal"
)

// Cut appends a marker record labelled label while no write of this tap is
// in flight: a clean recovery point. It returns the marker's seq once it
// is synced.
func (t *Tap) Cut(ctx context.Context, label []byte) (uint64, error) {
	seqs, err := Cut(ctx, []*Tap{t}, label)
	if err != nil {
		return 0, err
	}
	return seqs[0], nil
}

// Cut appends a marker to each tap's journal at the same instant: writes
// to all of them are held off while the markers are appended, so the
// markers form one consistent point across the group. It returns the
// markers' seqs, in the order of taps, once they are synced.
func Cut(ctx context.Context, taps []*Tap, label []byte) ([]uint64, error) {
	for _, t := range taps {
		t.gate.Lock()
	}
	ps := make([]*journal.Pending, len(taps))
	var err error
	for i, t := range taps {
		ps[i], err = t.log.Append(ctx, journal.Record{Kind: journal.KindMarker, Data: label})
		if err != nil {
			break
		}
	}
	for _, t := range taps {
		t.gate.Unlock()
	}
	if err != nil {
		return nil, fmt.Errorf("cut %q: %w", label, err)
	}
	seqs := make([]uint64, len(taps))
	for i, p := range ps {
		if err := p.Wait(ctx); err != nil {
			return nil, fmt.Errorf("cut %q: %w", label, err)
		}
		seqs[i] = p.Seq()
	}
	for _, t := range taps {
		if err := t.log.Sync(ctx); err != nil {
			return nil, fmt.Errorf("cut %q: %w", label, err)
		}
	}
	return seqs, nil
}
