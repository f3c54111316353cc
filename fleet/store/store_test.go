package store

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

func open(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return s
}

func putVM(t testing.TB, s *Store, name string) *v1.VM {
	t.Helper()
	vm := &v1.VM{Image: "img", Status: v1.VMStatusPending, UID: "uid-" + name, Meta: v1.Meta{Name: name, CreatedAt: time.Now().UTC()}}
	if err := s.Update(func(tx *Tx) error { tx.PutVM(vm); return nil }); err != nil {
		t.Fatalf("put %s: %v", name, err)
	}
	return vm
}

func TestCRUDAndReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	putVM(t, s, "b")
	putVM(t, s, "a")
	putVM(t, s, "c")
	err := s.Update(func(tx *Tx) error {
		tx.DeleteVM("c")
		tx.PutWorker(&v1.Worker{Resources: v1.Resources{"x": 2}, Meta: v1.Meta{Name: "w1"}})
		tx.PutServiceAccount(&v1.ServiceAccount{Token: "t", Roles: []v1.Role{v1.RoleAdminRead}, Meta: v1.Meta{Name: "sa"}})
		tx.PutSettings(v1.ClusterSettings{SchedulerProfile: v1.SchedulerProfileDistributeLoad})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	check := func(s *Store) {
		t.Helper()
		var names []string
		for _, vm := range s.VMs(nil) {
			names = append(names, vm.Name)
		}
		if fmt.Sprint(names) != "[a b]" {
			t.Errorf("VMs = %v, want [a b]", names)
		}
		var list []v1.VM
		if err := json.Unmarshal(s.AppendVMsJSON(nil, nil), &list); err != nil || len(list) != 2 || list[0].Name != "a" {
			t.Errorf("AppendVMsJSON = %v, %v", list, err)
		}
		if w, ok := s.Worker("w1"); !ok || w.Resources["x"] != 2 {
			t.Errorf("worker = %+v, %v", w, ok)
		}
		if sa, ok := s.ServiceAccount("sa"); !ok || sa.Token != "t" {
			t.Errorf("account = %+v, %v", sa, ok)
		}
		if got := s.Settings().SchedulerProfile; got != v1.SchedulerProfileDistributeLoad {
			t.Errorf("settings profile = %q", got)
		}
		if s.Revision() != 4 {
			t.Errorf("revision = %d, want 4", s.Revision())
		}
		if vm, _ := s.VM("b"); vm.Version != 1 {
			t.Errorf("b version = %d, want 1 (the revision that wrote it)", vm.Version)
		}
	}
	check(s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	defer s.Close()
	check(s)
}

func TestFailedUpdateChangesNothing(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	putVM(t, s, "a")
	sub := s.Subscribe()
	defer sub.Close()
	boom := fmt.Errorf("boom")
	err := s.Update(func(tx *Tx) error {
		vm, _ := tx.VM("a")
		vm.Image = "changed"
		tx.PutVM(vm)
		tx.DeleteWorker("x")
		return boom
	})
	if err != boom {
		t.Fatalf("Update = %v, want boom", err)
	}
	if vm, _ := s.VM("a"); vm.Image != "img" {
		t.Errorf("image = %q after a failed update", vm.Image)
	}
	if changes, _ := sub.Drain(); len(changes) != 0 {
		t.Errorf("failed update published %d changes", len(changes))
	}
}

func TestTxGivesCopies(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	putVM(t, s, "a")
	_ = s.Update(func(tx *Tx) error {
		vm, _ := tx.VM("a")
		vm.Labels = v1.Labels{"mutated": "yes"}
		return nil // not put back
	})
	if vm, _ := s.VM("a"); vm.Labels != nil {
		t.Errorf("a copy from Tx.VM leaked into the store: %v", vm.Labels)
	}
}

// TestNoLostUpdates runs concurrent read-modify-writes of one VM; every
// increment must land.
func TestNoLostUpdates(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	putVM(t, s, "a")
	const writers, each = 8, 25
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() {
			for range each {
				err := s.Update(func(tx *Tx) error {
					vm, _ := tx.VM("a")
					vm.RestartCount++
					tx.PutVM(vm)
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if vm, _ := s.VM("a"); vm.RestartCount != writers*each {
		t.Errorf("restart_count = %d, want %d", vm.RestartCount, writers*each)
	}
}

func TestFeedOrderAndContent(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	sub := s.Subscribe()
	defer sub.Close()
	const n = 50
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { putVM(t, s, "vm"+strconv.Itoa(i)) })
	}
	wg.Wait()
	if err := s.Update(func(tx *Tx) error { tx.DeleteVM("vm0"); return nil }); err != nil {
		t.Fatal(err)
	}
	var got []Change
	deadline := time.After(10 * time.Second)
	for len(got) < n+1 {
		select {
		case <-sub.Ready():
			c, ok := sub.Drain()
			if !ok {
				t.Fatal("subscription closed")
			}
			got = append(got, c...)
		case <-deadline:
			t.Fatalf("got %d changes, want %d", len(got), n+1)
		}
	}
	for i := 1; i < len(got); i++ {
		if got[i].Rev <= got[i-1].Rev {
			t.Fatalf("change %d has revision %d after %d", i, got[i].Rev, got[i-1].Rev)
		}
	}
	last := got[len(got)-1]
	if last.Kind != KindVM || last.Name != "vm0" || last.VM != nil || last.OldVM == nil {
		t.Errorf("delete change = %+v", last)
	}
	if first := got[0]; first.OldVM != nil || first.VM == nil {
		t.Errorf("create change = %+v", first)
	}
}

func TestSubscriptionOverflow(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	sub := s.Subscribe()
	defer sub.Close()
	big := make([]Change, maxQueued)
	sub.push(big[:maxQueued-1])
	sub.push(big[:2])
	if _, ok := sub.Drain(); ok {
		t.Fatal("a subscriber past the queue bound must learn it overflowed")
	}
}

func TestEventsPaging(t *testing.T) {
	s := open(t, t.TempDir())
	defer s.Close()
	vm := putVM(t, s, "a")
	for batch := range 3 {
		var evs []v1.Event
		for i := range 4 {
			evs = append(evs, v1.Event{Kind: v1.EventKindLogLine, Timestamp: int64(batch), Payload: fmt.Sprintf("line %d", batch*4+i)})
		}
		if err := s.Update(func(tx *Tx) error { tx.AppendEvents(vm, evs); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	collect := func(q EventsQuery) []string {
		var out []string
		for {
			evs, next, err := s.Events(vm.UID, q)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range evs {
				out = append(out, e.Payload)
			}
			if len(evs) == 0 {
				if next != "" {
					t.Errorf("an empty page has cursor %q", next)
				}
				return out
			}
			q.Cursor = next
		}
	}
	tests := []struct {
		name  string
		q     EventsQuery
		first string
	}{
		{"asc unbounded", EventsQuery{}, "line 0"},
		{"asc by 5", EventsQuery{Limit: 5}, "line 0"},
		{"asc by 4", EventsQuery{Limit: 4}, "line 0"},
		{"desc by 5", EventsQuery{Limit: 5, Descending: true}, "line 11"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := collect(tt.q)
			if len(got) != 12 || got[0] != tt.first {
				t.Errorf("got %d events starting %q, want 12 starting %q", len(got), got[0], tt.first)
			}
		})
	}
	if _, _, err := s.Events(vm.UID, EventsQuery{Cursor: "!!!"}); err != ErrBadCursor {
		t.Errorf("bad cursor: err = %v", err)
	}
	if evs, _, _ := s.Events("other", EventsQuery{}); len(evs) != 0 {
		t.Errorf("another VM sees %d events", len(evs))
	}

	// Deleting the VM deletes its log.
	if err := s.Update(func(tx *Tx) error { tx.DeleteVM("a"); return nil }); err != nil {
		t.Fatal(err)
	}
	s.cleanup.Wait()
	if evs, _, _ := s.Events(vm.UID, EventsQuery{}); len(evs) != 0 {
		t.Errorf("deleted VM still has %d events", len(evs))
	}
}

// TestKillNine writes from a child process, SIGKILLs it while it writes,
// and checks that every write the child was told succeeded is there.
func TestKillNine(t *testing.T) {
	if dir := os.Getenv("STORE_CRASH_CHILD_DIR"); dir != "" {
		crashChild(dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillNine$")
	cmd.Env = append(os.Environ(), "STORE_CRASH_CHILD_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if name, ok := cutPrefix(sc.Text(), "acked "); ok {
			acked[name] = true
			if len(acked) == 200 {
				break
			}
		}
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	if len(acked) < 200 {
		t.Fatalf("child acknowledged only %d writes", len(acked))
	}
	s := open(t, dir)
	defer s.Close()
	for name := range acked {
		if _, ok := s.VM(name); !ok {
			t.Errorf("acknowledged VM %s is missing after kill -9", name)
		}
	}
}

func cutPrefix(s, p string) (string, bool) {
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):], true
	}
	return "", false
}

func crashChild(dir string) {
	s, err := Open(dir, Options{})
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				name := fmt.Sprintf("w%d-%d", w, i)
				vm := &v1.VM{Image: "img", Status: v1.VMStatusPending, UID: name, Meta: v1.Meta{Name: name}}
				if err := s.Update(func(tx *Tx) error { tx.PutVM(vm); return nil }); err != nil {
					os.Exit(1)
				}
				fmt.Println("acked", name)
			}
		})
	}
	wg.Wait()
}

func BenchmarkUpdateParallel(b *testing.B) {
	s := open(b, b.TempDir())
	defer s.Close()
	var n int64
	var mu sync.Mutex
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			mu.Lock()
			n++
			name := "vm" + strconv.FormatInt(n, 10)
			mu.Unlock()
			vm := &v1.VM{Image: "img", Status: v1.VMStatusPending, UID: name, Meta: v1.Meta{Name: name}}
			if err := s.Update(func(tx *Tx) error { tx.PutVM(vm); return nil }); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkOpen measures the restart path: loading 10,000 VMs and 1,000
// workers into memory.
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	s := open(b, dir)
	for batch := range 100 {
		err := s.Update(func(tx *Tx) error {
			for i := range 100 {
				name := fmt.Sprintf("vm-%d-%d", batch, i)
				tx.PutVM(&v1.VM{Image: "ghcr.io/cirruslabs/macos-sequoia-base:latest", Status: v1.VMStatusRunning, UID: name,
					Worker: fmt.Sprintf("worker-%d", i*10+batch%10), Resources: v1.Resources{v1.ResourceTartVMs: 1},
					StartupScript: &v1.VMScript{ScriptContent: "echo hello"}, Username: "admin", Password: "admin",
					Conditions: []v1.Condition{{Type: "scheduled", State: "true"}, {Type: "running", State: "true"}},
					Meta:       v1.Meta{Name: name, CreatedAt: time.Now()}})
			}
			for i := range 10 {
				name := fmt.Sprintf("worker-%d", batch*10+i)
				tx.PutWorker(&v1.Worker{Resources: v1.Resources{v1.ResourceTartVMs: 2}, Meta: v1.Meta{Name: name}})
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	s.Close()
	b.ResetTimer()
	for b.Loop() {
		s := open(b, dir)
		if s.CountVMs() != 10000 {
			b.Fatalf("loaded %d VMs", s.CountVMs())
		}
		s.Close()
	}
}
