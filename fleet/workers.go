package fleet

import (
	"context"
	"time"

	"github.com/orchardci/orchard/fleet/store"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// Worker returns the worker named name, with last_seen as of now.
func (c *Controller) Worker(name string) (*v1.Worker, error) {
	w, ok := c.store.Worker(name)
	if !ok {
		return nil, notFound("worker", name)
	}
	return c.withWorkerLiveness(w, time.Now()), nil
}

// Workers returns every worker, with last_seen as of now.
func (c *Controller) Workers() []*v1.Worker {
	now := time.Now()
	ws := c.store.Workers()
	for i, w := range ws {
		ws[i] = c.withWorkerLiveness(w, now)
	}
	return ws
}

// WorkerUpdate is what PUT /v1/workers/{name} may change.
type WorkerUpdate struct {
	SchedulingPaused bool
	// LastSeen, when not zero, is recorded, as in Orchard.
	LastSeen time.Time
}

// UpdateWorker pauses or resumes scheduling onto the worker named name.
func (c *Controller) UpdateWorker(ctx context.Context, name string, u WorkerUpdate) (*v1.Worker, error) {
	var out *v1.Worker
	err := c.store.Update(func(tx *store.Tx) error {
		w, ok := tx.Worker(name)
		if !ok {
			return notFound("worker", name)
		}
		if w.SchedulingPaused == u.SchedulingPaused && (u.LastSeen.IsZero() || u.LastSeen.Equal(w.LastSeen)) {
			out = w
			return nil
		}
		w.SchedulingPaused = u.SchedulingPaused
		if !u.LastSeen.IsZero() {
			w.LastSeen = u.LastSeen.UTC()
		}
		tx.PutWorker(w)
		out = w.Clone()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return c.withWorkerLiveness(out, time.Now()), nil
}

// DeleteWorker deletes the worker named name. A connected worker is
// disconnected; its VMs fail, as their worker no longer exists.
func (c *Controller) DeleteWorker(ctx context.Context, name string) error {
	return c.store.Update(func(tx *store.Tx) error {
		if _, ok := tx.Worker(name); !ok {
			return notFound("worker", name)
		}
		tx.DeleteWorker(name)
		return nil
	})
}
