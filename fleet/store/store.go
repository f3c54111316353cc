package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// Key layout. Values are the JSON of the v1 types.
const (
	prefixVM      = "vms/"
	prefixWorker  = "workers/"
	prefixAccount = "service-accounts/"
	prefixEvents  = "events/" // events/<vm uid>/<revision %016x>-<index %06x>
	keySettings   = "cluster-settings"
	keyRevision   = "meta/revision"
)

// errStoreClosed is why a closed store refuses writes.
var errStoreClosed = errors.New("store is closed")

// Options tune Open.
type Options struct {
	// Logger receives Badger's warnings and the store's own messages.
	Logger *slog.Logger
	// InMemory runs Badger without a disk, for benchmarks only.
	InMemory bool
}

// Store is the controller's state. See the package documentation.
type Store struct {
	db     *badger.DB
	logger *slog.Logger

	// mu serializes writers (Lock) against each other and against readers
	// (RLock) of the in-memory state below.
	mu       sync.RWMutex
	vms      map[string]vmRecord
	vmNames  []string // sorted keys of vms
	workers  map[string]*v1.Worker
	accounts map[string]*v1.ServiceAccount
	settings v1.ClusterSettings
	rev      uint64

	// errMu guards broken, set once a commit failed (or the store closed):
	// every later write fails. It is apart from mu because commit
	// callbacks set it, and one may run while a writer holds mu.
	errMu  sync.Mutex
	broken error

	publisher publisher
	cleanup   sync.WaitGroup // background event deletions
	closed    chan struct{}
}

// vmRecord is a decoded VM and the exact JSON it was stored as.
type vmRecord struct {
	vm  *v1.VM
	raw []byte
}

// Open opens (creating if needed) the store in dir and loads its state.
func Open(dir string, opts Options) (*Store, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	bopts := badger.DefaultOptions(filepath.Join(dir, "db")).
		WithSyncWrites(true).
		WithLogger(badgerLogger{logger}).
		WithMetricsEnabled(false).
		// A controller's state is megabytes, not gigabytes: small tables keep
		// its memory flat.
		WithMemTableSize(16 << 20).
		WithNumMemtables(2).
		WithBlockCacheSize(16 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2)
	if opts.InMemory {
		bopts = bopts.WithDir("").WithValueDir("").WithInMemory(true)
	}
	db, err := badger.Open(bopts)
	if err != nil {
		return nil, fmt.Errorf("open database in %s: %w", dir, err)
	}
	s := &Store{
		db:       db,
		logger:   logger,
		vms:      map[string]vmRecord{},
		workers:  map[string]*v1.Worker{},
		accounts: map[string]*v1.ServiceAccount{},
		closed:   make(chan struct{}),
	}
	s.publisher.subs = map[*Subscription]struct{}{}
	if err := s.load(); err != nil {
		db.Close()
		return nil, fmt.Errorf("load state from %s: %w", dir, err)
	}
	s.deleteOrphanEvents()
	go s.collectGarbage()
	return s, nil
}

// Close waits for background work and closes the database. Writes after
// Close fail.
func (s *Store) Close() error {
	s.fail(errStoreClosed)
	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
	s.cleanup.Wait()
	s.publisher.closeAll()
	return s.db.Close()
}

// Err reports why the store refuses writes, or nil when it is healthy.
func (s *Store) Err() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.broken
}

// Revision is the revision of the last write.
func (s *Store) Revision() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.rev
}

// load decodes every object into memory. VMs, the bulk of the state, are
// decoded in parallel.
func (s *Store) load() error {
	type rawVM struct{ key, val []byte }
	var raws []rawVM
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{PrefetchValues: true, PrefetchSize: 256})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			key := string(item.Key())
			if strings.HasPrefix(key, prefixEvents) {
				// Events stay on disk; skip their whole range at once.
				it.Seek([]byte(prefixEvents + "\xff"))
				if !it.Valid() {
					break
				}
				item = it.Item()
				key = string(item.Key())
			}
			val, err := item.ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("read %s: %w", key, err)
			}
			switch {
			case strings.HasPrefix(key, prefixVM):
				raws = append(raws, rawVM{[]byte(key), val})
			case strings.HasPrefix(key, prefixWorker):
				w := new(v1.Worker)
				if err := json.Unmarshal(val, w); err != nil {
					return fmt.Errorf("decode %s: %w", key, err)
				}
				s.workers[w.Name] = w
			case strings.HasPrefix(key, prefixAccount):
				sa := new(v1.ServiceAccount)
				if err := json.Unmarshal(val, sa); err != nil {
					return fmt.Errorf("decode %s: %w", key, err)
				}
				s.accounts[sa.Name] = sa
			case key == keySettings:
				if err := json.Unmarshal(val, &s.settings); err != nil {
					return fmt.Errorf("decode %s: %w", key, err)
				}
			case key == keyRevision:
				if len(val) == 8 {
					s.rev = binary.BigEndian.Uint64(val)
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}

	records := make([]vmRecord, len(raws))
	errs := make([]error, len(raws))
	var wg sync.WaitGroup
	chunk := (len(raws) + runtime.GOMAXPROCS(0) - 1) / max(runtime.GOMAXPROCS(0), 1)
	for start := 0; start < len(raws); start += chunk {
		end := min(start+chunk, len(raws))
		wg.Go(func() {
			for i := start; i < end; i++ {
				vm := new(v1.VM)
				if err := json.Unmarshal(raws[i].val, vm); err != nil {
					errs[i] = fmt.Errorf("decode %s: %w", raws[i].key, err)
					continue
				}
				records[i] = vmRecord{vm: vm, raw: raws[i].val}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	s.vmNames = make([]string, 0, len(records))
	for _, r := range records {
		s.vms[r.vm.Name] = r
		s.vmNames = append(s.vmNames, r.vm.Name)
		s.rev = max(s.rev, r.vm.Version)
	}
	slices.Sort(s.vmNames)
	return nil
}

// VM returns the VM named name. The result is shared: do not modify it.
func (s *Store) VM(name string) (*v1.VM, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	r, ok := s.vms[name]
	return r.vm, ok
}

// VMs returns the VMs for which keep returns true (all when keep is nil),
// sorted by name. The results are shared: do not modify them.
func (s *Store) VMs(keep func(*v1.VM) bool) []*v1.VM {
	vms, _ := s.VMsAt(keep)
	return vms
}

// AppendVMsJSON appends to dst a JSON array of the VMs keep accepts (all
// when keep is nil), sorted by name, as the API returns them.
func (s *Store) AppendVMsJSON(dst []byte, keep func(*v1.VM) bool) []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	dst = append(dst, '[')
	first := true
	for _, name := range s.vmNames {
		r := s.vms[name]
		if keep != nil && !keep(r.vm) {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, r.raw...)
	}
	return append(dst, ']')
}

// CountVMs returns the number of stored VMs.
func (s *Store) CountVMs() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.vms)
}

// Worker returns the worker named name. The result is shared.
func (s *Store) Worker(name string) (*v1.Worker, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	w, ok := s.workers[name]
	return w, ok
}

// Workers returns all workers sorted by name. The results are shared.
func (s *Store) Workers() []*v1.Worker {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return sortedValues(s.workers)
}

// ServiceAccount returns the account named name. The result is shared.
func (s *Store) ServiceAccount(name string) (*v1.ServiceAccount, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	sa, ok := s.accounts[name]
	return sa, ok
}

// ServiceAccounts returns all accounts sorted by name. The results are shared.
func (s *Store) ServiceAccounts() []*v1.ServiceAccount {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return sortedValues(s.accounts)
}

// Settings returns the cluster settings.
func (s *Store) Settings() v1.ClusterSettings {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.settings
}

func sortedValues[T any](m map[string]*T) []*T {
	out := make([]*T, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k])
	}
	return out
}

// collectGarbage reclaims value-log space now and then; Badger does not do
// it by itself.
func (s *Store) collectGarbage() {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-s.closed:
			return
		case <-t.C:
			for s.db.RunValueLogGC(0.5) == nil {
			}
		}
	}
}

// badgerLogger routes Badger's own log lines to slog, keeping its chatty
// info lines at debug.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) {
	b.l.Error("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Warningf(f string, a ...any) {
	b.l.Warn("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Infof(f string, a ...any) {
	b.l.Debug("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}
func (b badgerLogger) Debugf(f string, a ...any) {
	b.l.Debug("badger: " + strings.TrimSpace(fmt.Sprintf(f, a...)))
}

// VMsAt is VMs with the revision of the state it read: every change with a
// higher revision is newer than what it returned.
func (s *Store) VMsAt(keep func(*v1.VM) bool) ([]*v1.VM, uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]*v1.VM, 0)
	for _, name := range s.vmNames {
		if vm := s.vms[name].vm; keep == nil || keep(vm) {
			out = append(out, vm)
		}
	}
	return out, s.rev
}
