// Command nodeagent is the handoff node agent. In standalone mode (the
// only mode so far) it serves the agent socket on a plain host, with
// handoffctl as the operator's tool.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/go-logr/logr/funcr"

	"github.com/handoff-dev/handoff/internal/fdlimit"
	"github.com/handoff-dev/handoff/nodeagent"
)

func main() {
	var (
		socket      = flag.String("socket", envOr("HANDOFF_SOCKET", nodeagent.DefaultSocket), "path of the agent's unix socket")
		socketMode  = flag.Uint("socket-mode", nodeagent.DefaultSocketMode, "permissions of the socket file")
		dirMode     = flag.Uint("dir-mode", nodeagent.DefaultDirMode, "permissions of the socket's directory when created")
		metricsAddr = flag.String("metrics-bind-address", "127.0.0.1:9750", "address of /metrics and /healthz; \"0\" disables")
		timeout     = flag.Duration("migrate-timeout", nodeagent.DefaultMigrateTimeout, "default deadline of a migration")
		hold        = flag.Duration("store-hold", nodeagent.DefaultStoreHold, "how long stored descriptors wait for a claimant")
		verbosity   = flag.Int("v", 0, "log verbosity")
	)
	flag.Parse()
	log := funcr.New(func(prefix, args string) {
		fmt.Fprintf(os.Stderr, "%s %s %s\n", time.Now().Format("15:04:05.000"), prefix, args)
	}, funcr.Options{Verbosity: *verbosity}).WithName("nodeagent")

	if soft, hard, err := fdlimit.Raise(); err != nil {
		log.Error(err, "could not raise the open-file limit")
	} else {
		log.V(1).Info("open-file limit", "soft", soft, "hard", hard)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()

	a := nodeagent.New(nodeagent.Config{
		Socket: *socket, SocketMode: os.FileMode(*socketMode), DirMode: os.FileMode(*dirMode),
		MigrateTimeout: *timeout, StoreHold: *hold, Log: log,
	})
	if err := a.Listen(); err != nil {
		log.Error(err, "cannot serve the agent socket")
		os.Exit(1)
	}
	// Scripts wait for this line instead of polling for the socket.
	fmt.Printf("nodeagent: ready socket=%s\n", *socket)
	if *metricsAddr != "0" && *metricsAddr != "" {
		go func() {
			err := a.ServeHTTP(ctx, *metricsAddr, func(addr net.Addr) {
				log.Info("serving metrics and health", "address", addr.String())
				fmt.Printf("nodeagent: metrics address=%s\n", addr)
			})
			if err != nil {
				log.Error(err, "metrics server stopped")
			}
		}()
	}
	if err := a.Serve(ctx); err != nil {
		log.Error(err, "agent stopped")
		os.Exit(1)
	}
	log.Info("agent stopped")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
