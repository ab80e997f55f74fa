package server

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

type metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	bytesSent     prometheus.Counter
	bytesReceived prometheus.Counter
	gcBlobs       prometheus.Counter
	gcBytes       prometheus.Counter
	redirects     prometheus.Counter
	deltaSaved    prometheus.Counter
	rangeBytes    prometheus.Counter
	indexBuilds   prometheus.Counter
	zstdBytes     prometheus.Counter
	zstdSaved     prometheus.Counter
}

func newMetrics(reg *prometheus.Registry) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "depot_http_requests_total", Help: "HTTP requests by route and status.",
		}, []string{"route", "status"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "depot_http_request_duration_seconds", Help: "HTTP request latency by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10),
		}, []string{"route"}),
		bytesSent:     prometheus.NewCounter(prometheus.CounterOpts{Name: "depot_content_sent_bytes_total", Help: "Content and blob bytes sent."}),
		bytesReceived: prometheus.NewCounter(prometheus.CounterOpts{Name: "depot_content_received_bytes_total", Help: "Content bytes received by uploads."}),
		gcBlobs:       prometheus.NewCounter(prometheus.CounterOpts{Name: "depot_gc_deleted_blobs_total", Help: "Blobs deleted by garbage collection."}),
		gcBytes:       prometheus.NewCounter(prometheus.CounterOpts{Name: "depot_gc_deleted_bytes_total", Help: "Bytes deleted by garbage collection."}),
		redirects:     prometheus.NewCounter(prometheus.CounterOpts{Name: "depot_content_redirects_total", Help: "Downloads answered with a presigned object-store URL (--redirect-content)."}),
		deltaSaved:    prometheus.NewCounter(prometheus.CounterOpts{Name: "depot_delta_bytes_saved_total", Help: "Bytes of committed delta pushes taken from their base instead of the body."}),
		rangeBytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "depot_content_range_bytes_total", Help: "Content and blob bytes sent in answer to Range requests (206); ranges of redirected downloads are not counted."}),
		indexBuilds:   prometheus.NewCounter(prometheus.CounterOpts{Name: "depot_chunk_indexes_computed_total", Help: "Chunk indexes computed on request, for blobs stored without one (or with a damaged one)."}),
		zstdBytes:     prometheus.NewCounter(prometheus.CounterOpts{Name: "depot_content_zstd_bytes_total", Help: "Bytes sent as compressed ranges (GET …/blob/<digest>/zstd), as sent."}),
		zstdSaved:     prometheus.NewCounter(prometheus.CounterOpts{Name: "depot_content_zstd_saved_bytes_total", Help: "Bytes compression saved on compressed ranges: the range lengths less what was sent."}),
	}
	reg.MustRegister(m.requests, m.duration, m.bytesSent, m.bytesReceived, m.gcBlobs, m.gcBytes, m.redirects, m.deltaSaved, m.rangeBytes, m.indexBuilds, m.zstdBytes, m.zstdSaved,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
