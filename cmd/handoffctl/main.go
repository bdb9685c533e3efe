// Command handoffctl is the operator's tool for a standalone handoff agent:
// it lists sessions and moves one process's sockets to another.
//
//	handoffctl sessions
//	handoffctl migrate --from 3 --to 4 [--timeout 30s] [--what listeners,connections]
//	handoffctl store --from 3 [--hold 60s]
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
)

const usage = `handoffctl talks to the handoff agent.

Usage:
  handoffctl [--socket PATH] sessions [--json]
  handoffctl [--socket PATH] migrate --from ID --to ID [--timeout D] [--what KINDS] [--json]
  handoffctl [--socket PATH] store --from ID [--hold D] [--timeout D] [--json]
  handoffctl [--socket PATH] wait --pid PID [--timeout D] [--json]

migrate moves every listener, connection and packet socket of session
--from to session --to, which must have joined in standby. store moves them
into the agent, where the next process with the same name and uid claims
them (restart in place). Exit status: 0 on success, 1 if the migration
failed, 2 on usage or connection errors.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	top := flag.NewFlagSet("handoffctl", flag.ContinueOnError)
	top.SetOutput(stderr)
	socket := top.String("socket", envOr("HANDOFF_SOCKET", nodeagent.DefaultSocket), "agent socket")
	top.Usage = func() { fmt.Fprint(stderr, usage) }
	if err := top.Parse(args); errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage) // asked for: not an error
		return 0
	} else if err != nil {
		return 2
	}
	if top.NArg() == 0 {
		top.Usage()
		return 2
	}
	cmd, rest := top.Arg(0), top.Args()[1:]
	switch cmd {
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "sessions", "wait", "migrate", "store":
	default:
		fmt.Fprintf(stderr, "handoffctl: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	from := fs.Uint64("from", 0, "source session ID")
	to := fs.Uint64("to", 0, "target session ID")
	timeout := fs.Duration("timeout", 0, "deadline (default: the agent's)")
	hold := fs.Duration("hold", 0, "how long the agent keeps stored sockets (default: the agent's)")
	pid := fs.Int("pid", 0, "process to wait for")
	what := fs.String("what", "", "comma-separated kinds to move: listeners,connections,packets (default all)")
	if err := fs.Parse(rest); err != nil {
		return 2
	}
	c, err := admin.Dial(*socket)
	if err != nil {
		fmt.Fprintf(stderr, "handoffctl: %v\n", err)
		return 2
	}
	defer c.Close()
	switch cmd {
	case "sessions":
		r, err := c.Sessions()
		if err != nil {
			fmt.Fprintf(stderr, "handoffctl: list sessions: %v\n", err)
			return 2
		}
		if *asJSON {
			return printJSON(stdout, r)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		// Under Kubernetes the agent knows each process's pod and
		// container from the kernel: show them then, and only then.
		pods := false
		for _, s := range r.Sessions {
			pods = pods || s.PodUID != ""
		}
		if pods {
			fmt.Fprintln(tw, "ID\tNAME\tPID\tUID\tSTATE\tAGE\tPOD UID\tCONTAINER")
		} else {
			fmt.Fprintln(tw, "ID\tNAME\tPID\tUID\tSTATE\tAGE")
		}
		for _, s := range r.Sessions {
			fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%s", s.ID, s.Name, s.PID, s.UID, s.State, time.Since(s.Since).Round(time.Second))
			if pods {
				fmt.Fprintf(tw, "\t%s\t%.12s", orDash(s.PodUID), orDash(s.ContainerID))
			}
			fmt.Fprintln(tw)
		}
		tw.Flush()
		for _, s := range r.Stored {
			fmt.Fprintf(stdout, "stored for %q (uid %d): %d listeners, %d connections, %d packet sockets, until %s\n",
				s.Name, s.UID, s.Listeners, s.Connections, s.Packets, s.Expires.Format(time.RFC3339))
		}
		return 0
	case "wait":
		if *pid <= 0 {
			fmt.Fprintln(stderr, "handoffctl wait: --pid is required")
			return 2
		}
		d := *timeout
		if d <= 0 {
			d = 30 * time.Second
		}
		s, err := c.WaitSession(int32(*pid), d)
		if err != nil {
			fmt.Fprintf(stderr, "handoffctl wait: %v\n", err)
			return 1
		}
		if *asJSON {
			return printJSON(stdout, s)
		}
		fmt.Fprintf(stdout, "%d\n", s.ID)
		return 0
	case "migrate", "store":
		if *from == 0 || (cmd == "migrate" && *to == 0) {
			fmt.Fprintf(stderr, "handoffctl %s: --from is required%s\n", cmd, map[bool]string{true: " and so is --to", false: ""}[cmd == "migrate"])
			return 2
		}
		req := admin.Request{Op: admin.OpMigrate, From: *from, To: *to, TimeoutMS: uint32(*timeout / time.Millisecond), HoldMS: uint32(*hold / time.Millisecond)}
		if cmd == "store" {
			req.Op = admin.OpStore
		}
		if *what != "" {
			req.What = strings.Split(*what, ",")
		}
		progress := func(p admin.Progress) {
			if !*asJSON {
				fmt.Fprintf(stderr, "%-12s %s\n", p.Phase, p.Message)
			}
		}
		r, err := c.Do(req, progress)
		if err != nil {
			fmt.Fprintf(stderr, "handoffctl %s: %v\n", cmd, err)
			return 2
		}
		res := r.Result
		if *asJSON {
			printJSON(stdout, res)
		} else {
			fmt.Fprintf(stdout, "%s: %d listeners, %d connections, %d packet sockets, %d state bytes in %d batches; pause %v, total %v\n",
				res.Phase, res.Listeners, res.Connections, res.Packets, res.StateBytes, res.Batches, res.Pause().Round(time.Microsecond), res.Duration().Round(time.Microsecond))
			if res.Phase != nodeagent.PhaseCompleted {
				fmt.Fprintf(stdout, "reason: %s: %s\n", res.Reason, res.Message)
			}
		}
		if res.Phase != nodeagent.PhaseCompleted {
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "handoffctl: unknown command %q\n\n%s", cmd, usage)
	return 2
}

func printJSON(w io.Writer, v any) int {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	if err := e.Encode(v); err != nil {
		return 2
	}
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
