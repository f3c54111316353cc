package worker_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/orchardci/orchard/fleet/client"
	v1 "github.com/orchardci/orchard/fleet/v1"
	"github.com/orchardci/orchard/worker/local"
)

// apiClient is an admin client of the cluster, as the CLI would make.
func (cl *cluster) apiClient() *client.Client {
	cl.t.Helper()
	c, err := client.New(client.Config{URL: cl.url, ServiceAccountName: cl.token.ServiceAccountName,
		ServiceAccountToken: cl.token.ServiceAccountToken, CertificatePEM: cl.token.CertificatePEM})
	if err != nil {
		cl.t.Fatal(err)
	}
	return c
}

// sink is a TCP service: per connection, after a first byte 'U' it reads
// size bytes and answers "ok" (upload); after 'D' it sends size bytes
// (download). Sizes are fixed so that no direction needs a half-close,
// which a WebSocket does not have.
func sink(b testing.TB, addr string, size int64) net.Listener {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				first := make([]byte, 1)
				if _, err := io.ReadFull(c, first); err != nil {
					return
				}
				if first[0] == 'D' {
					_, _ = io.CopyN(c, zeros{}, size)
					return
				}
				if n, _ := io.CopyN(io.Discard, c, size); n == size {
					_, _ = c.Write([]byte("ok"))
				}
			}()
		}
	}()
	return ln
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// transfer moves size bytes up and then down over conns made by dial,
// and returns the throughput of each direction in MB/s.
func transfer(b testing.TB, dial func() (net.Conn, error), size int64) (up, down float64) {
	b.Helper()
	conn, err := dial()
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	if _, err := conn.Write([]byte{'U'}); err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(conn, zeros{}, size); err != nil {
		b.Fatal(err)
	}
	reply := make([]byte, 2)
	if _, err := io.ReadFull(conn, reply); err != nil || string(reply) != "ok" {
		b.Fatalf("upload: the service answered %q, %v", reply, err)
	}
	up = float64(size) / time.Since(start).Seconds() / 1e6
	conn.Close()

	conn, err = dial()
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	start = time.Now()
	if _, err := conn.Write([]byte{'D'}); err != nil {
		b.Fatal(err)
	}
	got, err := io.CopyN(io.Discard, conn, size)
	if err != nil || got != size {
		b.Fatalf("downloaded %d of %d bytes: %v", got, size, err)
	}
	down = float64(size) / time.Since(start).Seconds() / 1e6
	return up, down
}

// relay forwards every connection on a loopback listener to target with
// plain io.Copy, which Linux turns into splice(2): the cheapest possible
// hop.
func relay(b testing.TB, target string) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				t, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer t.Close()
				go func() { _, _ = io.Copy(t, c) }()
				_, _ = io.Copy(c, t)
			}()
		}
	}()
	return ln
}

// BenchmarkPortForward compares the throughput of a port-forward (client
// -> controller -> tunnel -> worker -> VM port) with, in the same run, a
// direct loopback TCP connection to the same kind of service, and with
// the same three TCP legs joined by two splice(2) relays: the ceiling for
// any design that passes through a controller and a worker.
func BenchmarkPortForward(b *testing.B) {
	for _, withTLS := range []bool{false, true} {
		name := "http"
		if withTLS {
			name = "tls"
		}
		b.Run(name, func(b *testing.B) {
			const size = 256 << 20
			cl := newClusterTLS(b, b.TempDir(), time.Minute, withTLS)
			cl.runWorker("w1", localDriver(b, b.TempDir()))
			cl.create(&v1.VM{Meta: v1.Meta{Name: "vm"}})
			cl.wait("vm", running)
			ip, err := cl.c.VMIP(context.Background(), "vm", 10*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			// The service "inside the VM" listens on the VM's address; the
			// baseline service on another loopback address.
			inVM := sink(b, net.JoinHostPort(ip, "7000"), size)
			defer inVM.Close()
			direct := sink(b, "127.0.0.1:0", size)
			defer direct.Close()
			hop2 := relay(b, direct.Addr().String())
			defer hop2.Close()
			hop1 := relay(b, hop2.Addr().String())
			defer hop1.Close()
			api := cl.apiClient()
			var dUp, dDown, rUp, rDown, fUp, fDown float64
			for b.Loop() {
				u, d := transfer(b, func() (net.Conn, error) { return net.Dial("tcp", direct.Addr().String()) }, size)
				dUp, dDown = dUp+u, dDown+d
				u, d = transfer(b, func() (net.Conn, error) { return net.Dial("tcp", hop1.Addr().String()) }, size)
				rUp, rDown = rUp+u, rDown+d
				u, d = transfer(b, func() (net.Conn, error) { return api.PortForward(context.Background(), "vm", 7000, 10*time.Second) }, size)
				fUp, fDown = fUp+u, fDown+d
			}
			n := float64(b.N)
			b.ReportMetric(dUp/n, "MB/s-direct-up")
			b.ReportMetric(dDown/n, "MB/s-direct-down")
			b.ReportMetric(rUp/n, "MB/s-3legs-up")
			b.ReportMetric(rDown/n, "MB/s-3legs-down")
			b.ReportMetric(fUp/n, "MB/s-forward-up")
			b.ReportMetric(fDown/n, "MB/s-forward-down")
			b.ReportMetric((fUp/dUp+fDown/dDown)/2, "ratio-to-direct")
			b.ReportMetric((fUp/rUp+fDown/rDown)/2, "ratio-to-3legs")
			b.ReportMetric((rUp/dUp+rDown/dDown)/2, "ratio-3legs-to-direct")
		})
	}
}

// BenchmarkCreateToRunning measures create -> running for local-driver
// VMs through the Go API, beside the local driver's own create+start in
// the same run, and reports what the controller and the worker add.
func BenchmarkCreateToRunning(b *testing.B) {
	cl := newCluster(b, b.TempDir(), time.Minute)
	cl.runWorker("w1", localDriver(b, b.TempDir()))
	bare := localDriver(b, b.TempDir())
	var total, driver []time.Duration
	i := 0
	for b.Loop() {
		// 100 samples per iteration, so percentiles mean something at
		// -benchtime 1x.
		for range 100 {
			i++
			createOnce(b, cl, bare, fmt.Sprintf("vm%d", i), &total, &driver)
		}
	}
	p50, p99 := percentile(total, 0.5), percentile(total, 0.99)
	b.ReportMetric(ms(p50), "ms-p50")
	b.ReportMetric(ms(p99), "ms-p99")
	b.ReportMetric(ms(percentile(driver, 0.5)), "ms-p50-driver-alone")
	b.ReportMetric(ms(p50-percentile(driver, 0.5)), "ms-p50-added")
}

// createOnce times one VM from create to running through the controller,
// and the same VM's create and start on the bare driver.
func createOnce(b *testing.B, cl *cluster, bare *local.Driver, name string, total, driver *[]time.Duration) {
	start := time.Now()
	cl.create(&v1.VM{Meta: v1.Meta{Name: name}})
	cl.wait(name, running)
	*total = append(*total, time.Since(start))
	if err := cl.c.DeleteVM(context.Background(), name); err != nil {
		b.Fatal(err)
	}

	vm := &v1.VM{Username: "admin", Password: "admin", Meta: v1.Meta{Name: name}}
	start = time.Now()
	if _, err := bare.Create(context.Background(), "bare-"+name, vm, nil); err != nil {
		b.Fatal(err)
	}
	if _, err := bare.Start(context.Background(), "bare-"+name, vm); err != nil {
		b.Fatal(err)
	}
	*driver = append(*driver, time.Since(start))
	_ = bare.Delete(context.Background(), "bare-"+name)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[int(float64(len(s)-1)*p+0.5)]
}

// BenchmarkLoad is the load the project is judged under, on this
// machine: a controller with 10 local-driver workers offering 200 macOS
// slots each; a burst of 1,000 creates, timed until all run; then 200
// users, each looping create -> port-forward to a service in the VM -> 4
// KiB each way -> delete.
func BenchmarkLoad(b *testing.B) {
	for b.Loop() {
		cl := newCluster(b, b.TempDir(), time.Minute)
		for n := range 10 {
			cl.runWorkerWith(fmt.Sprintf("w%d", n), localDriver(b, b.TempDir()), v1.Resources{v1.ResourceTartVMs: 200})
		}
		api := cl.apiClient()
		ctx := context.Background()

		// Phase 1: a burst of 1,000 creates.
		start := time.Now()
		parallel(b, 64, 1000, func(i int) error {
			_, err := api.CreateVM(ctx, &v1.VM{Image: "ghcr.io/cirruslabs/macos-sequoia-base:latest", Meta: v1.Meta{Name: fmt.Sprintf("burst-%04d", i)}})
			return err
		})
		created := time.Since(start)
		waitUntil(b, "1,000 VMs running", func() bool {
			return len(cl.c.VMs(func(vm *v1.VM) bool { return vm.Status == v1.VMStatusRunning })) == 1000
		})
		b.ReportMetric(ms(created), "ms-burst-created")
		b.ReportMetric(ms(time.Since(start)), "ms-burst-all-running")
		parallel(b, 64, 1000, func(i int) error { return api.DeleteVM(ctx, fmt.Sprintf("burst-%04d", i)) })
		waitUntil(b, "the burst to be deleted", func() bool { return len(cl.c.VMs(nil)) == 0 })

		// Phase 2: 200 users, 5 iterations each.
		const users, rounds = 200, 5
		var mu sync.Mutex
		var latencies []time.Duration
		var failures atomic.Int64
		start = time.Now()
		parallel(b, users, users*rounds, func(i int) error {
			t0 := time.Now()
			if err := userIteration(ctx, cl, api, fmt.Sprintf("user-%04d", i)); err != nil {
				failures.Add(1)
				return err
			}
			mu.Lock()
			latencies = append(latencies, time.Since(t0))
			mu.Unlock()
			return nil
		})
		elapsed := time.Since(start)
		b.ReportMetric(float64(len(latencies))/elapsed.Seconds(), "iterations/s")
		b.ReportMetric(ms(percentile(latencies, 0.5)), "ms-iteration-p50")
		b.ReportMetric(ms(percentile(latencies, 0.99)), "ms-iteration-p99")
		b.ReportMetric(float64(failures.Load()), "failures")
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		b.ReportMetric(float64(m.HeapInuse)/(1<<20), "MiB-heap-after")
	}
}

// userIteration is one user's round: create a VM, start a service in it
// (here: a listener on the VM's address, as a process in the VM would),
// port-forward to it, move 4 KiB each way, delete the VM.
func userIteration(ctx context.Context, cl *cluster, api *client.Client, name string) error {
	if _, err := api.CreateVM(ctx, &v1.VM{Image: "ghcr.io/cirruslabs/macos-sequoia-base:latest", Meta: v1.Meta{Name: name}}); err != nil {
		return err
	}
	defer api.DeleteVM(ctx, name)
	ip, err := api.VMIP(ctx, name, 60*time.Second)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "7000"))
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	conn, err := api.PortForward(ctx, name, 7000, 60*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	payload := make([]byte, 4<<10)
	go func() { _, _ = conn.Write(payload) }()
	if _, err := io.ReadFull(conn, make([]byte, len(payload))); err != nil {
		return fmt.Errorf("echo through %s: %w", name, err)
	}
	return nil
}

// parallel runs n jobs on workers goroutines; failures fail the benchmark.
func parallel(b testing.TB, workers, n int, job func(i int) error) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var errs atomic.Int64
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := job(i); err != nil && errs.Add(1) <= 5 {
					b.Errorf("job %d: %v", i, err)
				}
			}
		})
	}
	wg.Wait()
}
