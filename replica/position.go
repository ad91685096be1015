package replica

import (
	"context"
	"errors"
	"fmt"

	"github.com/tandem-dr/tandem/journal"
	"github.com/tandem-dr/tandem/replication"
)

// errStop stops a journal read after the first record.
var errStop = errors.New("replica: stop")

// headPosition returns the newest committed record of l with its chained
// sum: the base when every record is released.
func headPosition(ctx context.Context, l *journal.Log) (replication.Position, error) {
	for attempt := 0; attempt < 64; attempt++ {
		c := l.Committed()
		base, baseSum := l.Base()
		if c <= base {
			return replication.Position{Seq: base, Sum: baseSum}, nil
		}
		var pos replication.Position
		err := l.ReadFrom(ctx, c, func(r journal.Record) error {
			pos = replication.Position{Seq: r.Seq, Sum: r.Sum}
			return errStop
		})
		switch {
		case errors.Is(err, errStop):
			return pos, nil
		case errors.Is(err, journal.ErrReleased):
			continue // released meanwhile: the base moved past it
		case err != nil:
			return replication.Position{}, fmt.Errorf("read journal head seq=%d: %w", c, err)
		}
		if err := ctx.Err(); err != nil {
			return replication.Position{}, err
		}
	}
	return replication.Position{}, fmt.Errorf("read journal head of %s: kept moving", l.Name())
}
