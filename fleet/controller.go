package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/orchardci/orchard/fleet/store"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// Config configures a Controller.
type Config struct {
	// DataDir holds the database.
	DataDir string
	// WorkerOfflineTimeout is how long a worker may be disconnected before
	// its VMs fail. After a controller start every worker gets this long
	// to reconnect. Default 3m.
	WorkerOfflineTimeout time.Duration
	// RestartDelay is how long a failed OnFailure VM waits before it goes
	// back to pending. Default 15s.
	RestartDelay time.Duration
	// HeartbeatInterval is how often workers send heartbeats. Default 10s.
	HeartbeatInterval time.Duration
	Logger            *slog.Logger
	// Version and Commit are reported by GET /v1/controller/info.
	Version, Commit string
	// InMemory keeps the store off disk, for benchmarks.
	InMemory bool
}

func (c *Config) setDefaults() {
	if c.WorkerOfflineTimeout <= 0 {
		c.WorkerOfflineTimeout = 3 * time.Minute
	}
	if c.RestartDelay < 0 {
		c.RestartDelay = 0
	} else if c.RestartDelay == 0 {
		c.RestartDelay = 15 * time.Second
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Version == "" {
		c.Version = "dev"
	}
}

// Controller is the fleet's controller. Open starts it; Close stops it.
type Controller struct {
	cfg     Config
	store   *store.Store
	logger  *slog.Logger
	started time.Time
	metrics *metrics

	kickScheduler chan struct{}
	kickHealth    chan struct{}

	mu       sync.Mutex
	sessions map[string]*session  // connected workers by name
	lastSeen map[string]time.Time // last heartbeat or disconnect, by worker
	failedAt map[string]time.Time // when a VM (by UID) was first seen failed

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Open opens the store in cfg.DataDir and starts the controller's loops.
func Open(cfg Config) (*Controller, error) {
	cfg.setDefaults()
	st, err := store.Open(cfg.DataDir, store.Options{Logger: cfg.Logger, InMemory: cfg.InMemory})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Controller{
		cfg:           cfg,
		store:         st,
		logger:        cfg.Logger,
		started:       time.Now(),
		kickScheduler: make(chan struct{}, 1),
		kickHealth:    make(chan struct{}, 1),
		sessions:      map[string]*session{},
		lastSeen:      map[string]time.Time{},
		failedAt:      map[string]time.Time{},
		ctx:           ctx,
		cancel:        cancel,
	}
	c.metrics = newMetrics(c)
	sub := st.Subscribe()
	c.wg.Go(func() { c.dispatch(sub) })
	c.wg.Go(c.runScheduler)
	c.wg.Go(c.runHealth)
	kick(c.kickScheduler)
	kick(c.kickHealth)
	return c, nil
}

// Close disconnects every worker, stops the loops and closes the store.
func (c *Controller) Close() error {
	c.cancel()
	c.mu.Lock()
	sessions := make([]*session, 0, len(c.sessions))
	for _, s := range c.sessions {
		sessions = append(sessions, s)
	}
	c.mu.Unlock()
	for _, s := range sessions {
		s.close()
	}
	c.wg.Wait()
	return c.store.Close()
}

// Registry is the controller's Prometheus registry, for serving metrics on
// a second address.
func (c *Controller) Registry() *prometheus.Registry { return c.metrics.registry }

// Healthy reports whether the controller can serve: its store accepts
// writes.
func (c *Controller) Healthy() error {
	if err := c.store.Err(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// dispatch is the one reader of the store's change feed; see the package
// documentation.
func (c *Controller) dispatch(sub *store.Subscription) {
	for {
		select {
		case <-c.ctx.Done():
			sub.Close()
			return
		case <-sub.Ready():
		}
		changes, ok := sub.Drain()
		if !ok {
			// We fell behind by more than the feed holds: start over from
			// the current state, which is what level-triggered loops need.
			sub.Close()
			if c.ctx.Err() != nil {
				return
			}
			sub = c.store.Subscribe()
			c.logger.Warn("change feed overflowed; resynchronizing every worker")
			kick(c.kickScheduler)
			kick(c.kickHealth)
			c.mu.Lock()
			for _, s := range c.sessions {
				s.resync()
			}
			c.mu.Unlock()
			continue
		}
		c.route(changes)
	}
}

func (c *Controller) route(changes []store.Change) {
	scheduler, health := false, false
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range changes {
		switch ch.Kind {
		case store.KindVM:
			scheduler = true
			if ch.VM != nil && ch.VM.Status == v1.VMStatusFailed && (ch.OldVM == nil || ch.OldVM.Status != v1.VMStatusFailed) {
				c.failedAt[ch.VM.UID] = time.Now()
				health = true
			}
			if ch.VM == nil && ch.OldVM != nil {
				delete(c.failedAt, ch.OldVM.UID)
			}
			if ch.VM != nil && ch.OldVM != nil && ch.OldVM.UID == ch.VM.UID && ch.OldVM.Status == v1.VMStatusFailed && ch.VM.Status != v1.VMStatusFailed {
				delete(c.failedAt, ch.VM.UID)
			}
			if ch.VM != nil && ch.VM.Worker != "" && ch.VM.Status != v1.VMStatusFailed {
				if _, ok := c.sessions[ch.VM.Worker]; !ok && (ch.OldVM == nil || ch.OldVM.Worker != ch.VM.Worker) {
					health = true // assigned to a worker that is not here
				}
			}
			for _, w := range affectedWorkers(ch) {
				if s, ok := c.sessions[w]; ok {
					s.enqueue(ch)
				}
			}
		case store.KindWorker:
			scheduler, health = true, true
			if ch.Worker == nil {
				if s, ok := c.sessions[ch.Name]; ok {
					go s.closeWithError("this worker was deleted from the controller")
				}
			}
		case store.KindSettings:
			scheduler = true
		case store.KindServiceAccount:
			// A deleted account, or a new token or roles: tunnels opened
			// with the old credentials end; workers that still hold valid
			// ones reconnect.
			for _, s := range c.sessions {
				if s.account == ch.Name {
					go s.closeWithError("the service account this worker connected with changed")
				}
			}
		}
	}
	if scheduler {
		kick(c.kickScheduler)
	}
	if health {
		kick(c.kickHealth)
	}
}

// affectedWorkers names the workers whose desired set a VM change alters.
func affectedWorkers(ch store.Change) []string {
	var out []string
	if ch.OldVM != nil && ch.OldVM.Worker != "" {
		out = append(out, ch.OldVM.Worker)
	}
	if ch.VM != nil && ch.VM.Worker != "" && (ch.OldVM == nil || ch.OldVM.Worker != ch.VM.Worker) {
		out = append(out, ch.VM.Worker)
	}
	return out
}

// connected reports whether the worker named name holds a tunnel now.
func (c *Controller) connected(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.sessions[name]
	return ok
}

// seen returns when the worker was last known alive: connected now, its
// last heartbeat or disconnect, its stored last_seen, or the controller's
// start, whichever is latest. The last gives every worker a grace period
// to reconnect after a controller restart.
func (c *Controller) seen(w *v1.Worker, now time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.sessions[w.Name]; ok {
		return now
	}
	t := w.LastSeen
	if ls := c.lastSeen[w.Name]; ls.After(t) {
		t = ls
	}
	if c.started.After(t) {
		t = c.started
	}
	return t
}

// withWorkerLiveness returns w with last_seen as the API shows it.
func (c *Controller) withWorkerLiveness(w *v1.Worker, now time.Time) *v1.Worker {
	out := *w
	c.mu.Lock()
	if _, ok := c.sessions[w.Name]; ok {
		out.LastSeen = now.UTC()
	} else if ls := c.lastSeen[w.Name]; ls.After(out.LastSeen) {
		out.LastSeen = ls.UTC()
	}
	c.mu.Unlock()
	return &out
}

// errClosed is returned by operations on a closed controller.
var errClosed = errors.New("controller is shutting down")
