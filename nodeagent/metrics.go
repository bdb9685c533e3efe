package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the agent's Prometheus collectors.
type Metrics struct {
	reg        *prometheus.Registry
	migrations *prometheus.CounterVec
	fdsMoved   prometheus.Counter
	pause      prometheus.Histogram
	sessions   prometheus.Gauge
	storedFDs  prometheus.Gauge
	badPeers   prometheus.Counter
}

// NewMetrics registers the agent's collectors on reg (a new registry if
// nil).
func NewMetrics(reg *prometheus.Registry) *Metrics {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	m := &Metrics{
		reg: reg,
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "handoff_migrations_total", Help: "Migrations by phase (Completed, Failed) and failure reason.",
		}, []string{"result", "reason"}),
		fdsMoved: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "handoff_fds_moved_total", Help: "Descriptors relayed or stored by the agent.",
		}),
		pause: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "handoff_pause_seconds", Help: "Time from the source stopping to the target serving.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
		sessions:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "handoff_sessions", Help: "Application sessions joined."}),
		storedFDs: prometheus.NewGauge(prometheus.GaugeOpts{Name: "handoff_stored_fds", Help: "Descriptors held in the fd store."}),
		badPeers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "handoff_bad_peer_messages_total", Help: "Peers refused or closed for bad or unexpected messages.",
		}),
	}
	reg.MustRegister(m.migrations, m.fdsMoved, m.pause, m.sessions, m.storedFDs, m.badPeers)
	return m
}

// Registry is where the collectors are registered.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ServeHTTP serves /metrics and /healthz on addr until ctx ends. ready is
// called with the bound address once listening.
func (a *Agent) ServeHTTP(ctx context.Context, addr string, ready func(net.Addr)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := a.Healthy(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if ready != nil {
		ready(ln.Addr())
	}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Healthy reports whether the agent's socket still answers. After a
// handover it answers for the successor: an agent that handed over stays
// healthy while its successor serves (under Kubernetes it waits to be
// stopped, and a restart of it would take everything back), and becomes
// unhealthy when nobody serves the socket any more.
func (a *Agent) Healthy() error {
	a.mu.Lock()
	closed, handedOver := a.closed, a.handedOver
	a.mu.Unlock()
	if !handedOver && (closed || a.ln == nil) {
		return errors.New("agent socket is not being served")
	}
	c, err := net.DialTimeout("unixpacket", a.cfg.Socket, time.Second)
	if err != nil {
		if handedOver {
			return fmt.Errorf("handed over to a successor, and agent socket %s does not answer: %w", a.cfg.Socket, err)
		}
		return fmt.Errorf("agent socket %s does not answer: %w", a.cfg.Socket, err)
	}
	c.Close()
	return nil
}
