package fleet

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// metrics are the controller's Prometheus metrics, all prefixed orchard_.
// Gauges of state (VMs by status, workers by state) are computed at scrape
// time from the store, so they can never drift from it.
type metrics struct {
	registry          *prometheus.Registry
	requests          *prometheus.CounterVec
	requestDuration   *prometheus.HistogramVec
	vmsCreated        prometheus.Counter
	placements        prometheus.Counter
	restarts          prometheus.Counter
	schedulingLatency prometheus.Histogram
	schedulerPass     prometheus.Histogram
	sessions          prometheus.Gauge
	streams           *prometheus.CounterVec
}

func newMetrics(c *Controller) *metrics {
	m := &metrics{
		registry: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchard_http_requests_total", Help: "API requests by route and status code.",
		}, []string{"route", "code"}),
		requestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "orchard_http_request_duration_seconds", Help: "API request latency by route (WebSocket routes excluded).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 9),
		}, []string{"route"}),
		vmsCreated: prometheus.NewCounter(prometheus.CounterOpts{Name: "orchard_vms_created_total", Help: "VMs created."}),
		placements: prometheus.NewCounter(prometheus.CounterOpts{Name: "orchard_scheduler_placements_total", Help: "VMs placed on workers."}),
		restarts:   prometheus.NewCounter(prometheus.CounterOpts{Name: "orchard_vm_restarts_total", Help: "Failed OnFailure VMs put back to pending."}),
		schedulingLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "orchard_scheduling_latency_seconds", Help: "Time from a VM becoming pending to its placement.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}),
		schedulerPass: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "orchard_scheduler_pass_duration_seconds", Help: "Duration of one scheduling pass.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}),
		sessions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "orchard_worker_sessions", Help: "Workers connected through a tunnel."}),
		streams: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orchard_tunnel_streams_total", Help: "Streams opened through worker tunnels, by purpose.",
		}, []string{"purpose"}),
	}
	m.registry.MustRegister(m.requests, m.requestDuration, m.vmsCreated, m.placements, m.restarts,
		m.schedulingLatency, m.schedulerPass, m.sessions, m.streams, stateCollector{c},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// stateCollector reports the fleet's state at scrape time.
type stateCollector struct{ c *Controller }

var (
	vmsDesc     = prometheus.NewDesc("orchard_vms", "VMs by status.", []string{"status"}, nil)
	workersDesc = prometheus.NewDesc("orchard_workers", "Workers by state: online (connected), offline, paused.", []string{"state"}, nil)
	pendingDesc = prometheus.NewDesc("orchard_vms_unscheduled", "Pending VMs that no worker has taken yet.", nil, nil)
)

func (s stateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- vmsDesc
	ch <- workersDesc
	ch <- pendingDesc
}

func (s stateCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[v1.VMStatus]int{v1.VMStatusPending: 0, v1.VMStatusRunning: 0, v1.VMStatusFailed: 0}
	unscheduled := 0
	for _, vm := range s.c.store.VMs(nil) {
		counts[vm.Status]++
		if unplaced(vm) {
			unscheduled++
		}
	}
	for status, n := range counts {
		ch <- prometheus.MustNewConstMetric(vmsDesc, prometheus.GaugeValue, float64(n), string(status))
	}
	ch <- prometheus.MustNewConstMetric(pendingDesc, prometheus.GaugeValue, float64(unscheduled))
	states := map[string]int{"online": 0, "offline": 0, "paused": 0}
	now := time.Now()
	for _, w := range s.c.store.Workers() {
		switch {
		case w.SchedulingPaused:
			states["paused"]++
		case s.c.connected(w.Name) || now.Sub(s.c.seen(w, now)) < s.c.cfg.WorkerOfflineTimeout:
			states["online"]++
		default:
			states["offline"]++
		}
	}
	for state, n := range states {
		ch <- prometheus.MustNewConstMetric(workersDesc, prometheus.GaugeValue, float64(n), state)
	}
}
