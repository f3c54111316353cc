package fleet_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchardci/orchard/fleet"
	v1 "github.com/orchardci/orchard/fleet/v1"
)

// BenchmarkCreateVMs creates 1,000 VMs through the API, 32 clients at a
// time, and reports requests per second. Every create is fsynced.
func BenchmarkCreateVMs(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		e := newEnv(b, envOptions{noTLS: true})
		b.StartTimer()
		start := time.Now()
		createVMs(b, e, 1000, 32)
		b.ReportMetric(1000/time.Since(start).Seconds(), "creates/s")
		b.StopTimer()
		e.stop()
		b.StartTimer()
	}
}

func createVMs(b testing.TB, e *env, n, clients int) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				vm := &v1.VM{Image: "ghcr.io/cirruslabs/macos-sequoia-base:latest", StartupScript: &v1.VMScript{ScriptContent: "echo hello"},
					Meta: v1.Meta{Name: fmt.Sprintf("vm-%05d", i)}}
				if _, err := e.admin.CreateVM(context.Background(), vm); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// BenchmarkListVMs lists 1,000 and 10,000 VMs through the API and reports
// latency and response size.
func BenchmarkListVMs(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			e := newEnv(b, envOptions{noTLS: true})
			seed(b, e.c, n, 0)
			req, _ := http.NewRequest("GET", e.url+"/v1/vms", nil)
			req.Header = e.admin.AuthHeader()
			var size int64
			for b.Loop() {
				resp, err := e.admin.StreamHTTPClient().Do(req)
				if err != nil || resp.StatusCode != 200 {
					b.Fatal(err, resp)
				}
				size, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			b.ReportMetric(float64(size)/1e6, "MB/response")
		})
	}
}

// seed stores n VMs and w workers in one go, as a long-running fleet
// would have them.
func seed(b testing.TB, c *fleet.Controller, vms, workers int) {
	b.Helper()
	_, err := c.CreateVM(context.Background(), &v1.VM{Image: "probe", Meta: v1.Meta{Name: "probe"}})
	if err != nil {
		b.Fatal(err)
	}
	template, _ := c.VM("probe")
	if err := c.DeleteVM(context.Background(), "probe"); err != nil {
		b.Fatal(err)
	}
	if err := fleet.SeedForBenchmark(c, template, vms, workers); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkScheduleBurst connects 1,000 simulated workers over real
// tunnels, creates 1,000 VMs in a burst, and reports how long until every
// one is placed and running (the simulated workers report running at
// once), the controller's memory per connected worker, and how long one
// desired-set change takes to reach every worker.
func BenchmarkScheduleBurst(b *testing.B) {
	for b.Loop() {
		e := newEnv(b, envOptions{noTLS: true})
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		workers := make([]*fakeWorker, 1000)
		var wg sync.WaitGroup
		sem := make(chan struct{}, 32)
		for i := range workers {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				w, err := e.connectWorker(fmt.Sprintf("w%04d", i), workerOptions{resources: v1.Resources{v1.ResourceTartVMs: 2}})
				if err != nil {
					b.Error(err)
					return
				}
				workers[i] = w
			})
		}
		wg.Wait()
		if b.Failed() {
			return
		}
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		// Both ends live in this process; half the growth is a fair
		// upper bound for the controller's side.
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/2/1000/1024, "KiB/worker")

		start := time.Now()
		createVMs(b, e, 1000, 32)
		created := time.Since(start)
		waitFor(b, "1,000 VMs running", func() bool {
			return len(e.c.VMs(func(vm *v1.VM) bool { return vm.Status == v1.VMStatusRunning })) == 1000
		})
		b.ReportMetric(created.Seconds()*1000, "ms-to-create-1000")
		b.ReportMetric(time.Since(start).Seconds()*1000, "ms-to-run-1000")

		// One change per worker at once: delete every VM, then time until
		// every worker's desired set is empty.
		sets := make([]int, len(workers))
		for i, w := range workers {
			w.mu.Lock()
			sets[i] = w.sets
			w.mu.Unlock()
		}
		start = time.Now()
		if err := fleet.DeleteAllForBenchmark(e.c); err != nil {
			b.Fatal(err)
		}
		waitFor(b, "every worker to learn", func() bool {
			for _, w := range workers {
				w.mu.Lock()
				n := len(w.vms)
				w.mu.Unlock()
				if n != 0 {
					return false
				}
			}
			return true
		})
		b.ReportMetric(time.Since(start).Seconds()*1000, "ms-push-to-1000")

		// The scheduler alone: 1,000 pending VMs appear in one commit.
		start = time.Now()
		seed(b, e.c, 1000, 0)
		waitFor(b, "1,000 seeded VMs placed", func() bool {
			return len(e.c.VMs(func(vm *v1.VM) bool { return vm.Worker != "" })) == 1000
		})
		b.ReportMetric(time.Since(start).Seconds()*1000, "ms-place-1000-pending")
		waitFor(b, "1,000 seeded VMs running", func() bool {
			return len(e.c.VMs(func(vm *v1.VM) bool { return vm.Status == v1.VMStatusRunning })) == 1000
		})
		b.ReportMetric(time.Since(start).Seconds()*1000, "ms-run-1000-pending")
		for _, w := range workers {
			w.close()
		}
		e.stop()
	}
}

// BenchmarkRestart stores 10,000 VMs and 1,000 workers, then measures a
// controller start, from opening the store to the first 200 on GET
// /v1/vms.
func BenchmarkRestart(b *testing.B) {
	dir := b.TempDir()
	e := newEnv(b, envOptions{dir: dir, noTLS: true})
	seed(b, e.c, 10000, 1000)
	e.stop()
	for b.Loop() {
		start := time.Now()
		c, err := fleet.Open(fleet.Config{DataDir: dir})
		if err != nil {
			b.Fatal(err)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = c.Serve(ctx, ln, nil); close(done) }()
		req, _ := http.NewRequest("GET", "http://"+ln.Addr().String()+"/v1/vms", nil)
		req.SetBasicAuth(fleet.BootstrapAdmin, "admin-token-for-tests")
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != 200 {
			b.Fatal(err, resp)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		b.ReportMetric(time.Since(start).Seconds()*1000, "ms-to-first-200")
		cancel()
		<-done
		c.Close()
	}
}
