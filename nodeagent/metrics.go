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

// ServeHTTP serves /metrics, /healthz (Healthy) and /readyz (Ready) on addr until ctx ends. ready is
// called with the bound address once listening.
func (a *Agent) ServeHTTP(ctx context.Context, addr string, ready func(net.Addr)) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.m.reg, promhttp.HandlerOpts{}))
	probe := func(check func() error) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			if err := check(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		}
	}
	mux.HandleFunc("/healthz", probe(a.Healthy))
	mux.HandleFunc("/readyz", probe(a.Ready))
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

// Healthy reports whether the agent's socket answers, for a liveness
// probe. While the agent waits for the agent serving the socket to hand
// over (Listen, which waits for that agent's transactions to end), and
// after it handed over to a successor, the other agent answers: this one
// is healthy while it does. An agent that handed over waits, under
// Kubernetes, to be stopped; a restart of it would take everything back.
func (a *Agent) Healthy() error {
	a.mu.Lock()
	listening, closed, other := a.listening, a.closed, a.handedOver || a.takingOver
	a.mu.Unlock()
	if !other && (!listening || closed) {
		return errors.New("agent socket is not being served")
	}
	if err := a.socketAnswers(); err != nil {
		if other {
			return fmt.Errorf("waiting for another agent that serves the socket: %w", err)
		}
		return err
	}
	return nil
}

// Ready reports whether this agent serves its socket, for a readiness
// probe: not while it waits for a handover, nor after it handed over.
func (a *Agent) Ready() error {
	a.mu.Lock()
	listening, closed, takingOver, handedOver := a.listening, a.closed, a.takingOver, a.handedOver
	a.mu.Unlock()
	switch {
	case takingOver:
		return errors.New("waiting for the agent serving the socket to hand over")
	case handedOver:
		return errors.New("handed over to a successor")
	case !listening || closed:
		return errors.New("agent socket is not being served")
	}
	return a.socketAnswers()
}

func (a *Agent) socketAnswers() error {
	c, err := net.DialTimeout("unixpacket", a.cfg.Socket, time.Second)
	if err != nil {
		return fmt.Errorf("agent socket %s does not answer: %w", a.cfg.Socket, err)
	}
	c.Close()
	return nil
}
