package fleet

import (
	"errors"

	"github.com/orchardci/orchard/fleet/store"
)

// updateEach commits n independent writes (stage(tx, i) for each i) in as
// few transactions as hold them: all at once when they fit, otherwise
// split in halves until they do. A write too big even alone is skipped
// and reported in the error; the others still land.
func (c *Controller) updateEach(n int, stage func(tx *store.Tx, i int)) error {
	return c.updateRange(0, n, stage)
}

func (c *Controller) updateRange(from, to int, stage func(tx *store.Tx, i int)) error {
	if from >= to {
		return nil
	}
	err := c.store.Update(func(tx *store.Tx) error {
		for i := from; i < to; i++ {
			stage(tx, i)
		}
		return nil
	})
	if !errors.Is(err, store.ErrTooBig) || to-from == 1 {
		return err
	}
	mid := from + (to-from)/2
	return errors.Join(c.updateRange(from, mid, stage), c.updateRange(mid, to, stage))
}
