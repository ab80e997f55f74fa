package agent

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/depot-images/depot/cache"
)

// metrics are the agent's counters. Their names and labels are an
// interface (dashboards and alerts use them): never rename one.
type metrics struct {
	blobs, bytes *prometheus.CounterVec
	runs         *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) metrics {
	m := metrics{
		blobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depot_cache_blobs_total", Help: "Blobs handled by the agent, by outcome (verified, corrupt, missing, repaired, pruned)."}, []string{"outcome"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depot_cache_bytes_total", Help: "Bytes handled by the agent, by outcome."}, []string{"outcome"}),
		runs:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "depot_cache_agent_runs_total", Help: "Agent task runs, by task and result."}, []string{"task", "result"}),
	}
	reg.MustRegister(m.blobs, m.bytes, m.runs)
	return m
}

// registerDelta counts the bytes the cache's transfers took from cached
// blobs (reused) and from sources (fetched), as the cache counts them
// (cache.TransferStats: every transfer of this process, the agent's
// repairs and refreshes).
func registerDelta(reg prometheus.Registerer, stats func() cache.TransferStats) {
	const name, help = "depot_cache_delta_bytes_total", "Bytes of cache transfers by kind: reused from cached blobs, fetched from the source, or received (what crossed the network for the fetched bytes: less when compressed)."
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: prometheus.Labels{"kind": "reused"}},
			func() float64 { return float64(stats().Reused) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: prometheus.Labels{"kind": "fetched"}},
			func() float64 { return float64(stats().Fetched) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: prometheus.Labels{"kind": "received"}},
			func() float64 { return float64(stats().Received) }))
}

// serveMetrics serves reg at /metrics on ln until stop is called; stop
// returns once the server has.
func serveMetrics(ln net.Listener, reg *prometheus.Registry) (stop func()) {
	srv := &http.Server{Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second, IdleTimeout: time.Minute}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
		<-served
	}
}
