package nodeagent_test

import (
	"testing"
	"time"

	"github.com/handoff-dev/handoff/nodeagent"
	"github.com/handoff-dev/handoff/nodeagent/admin"
	"github.com/handoff-dev/handoff/nodeagent/podid"
	"github.com/handoff-dev/handoff/wire"
)

// TestAskVersions checks the answer to HelloAsk: with version 2 agreed the
// agent says WelcomeStandby when Predecessor says wait and lists the
// session in standby; a peer that speaks only version 1 never gets the
// flag, nor does one that did not ask, nor one that is in standby anyway.
func TestAskVersions(t *testing.T) {
	at := startAgentT(t, nodeagent.Config{Predecessor: func(podid.Identity) (bool, string) { return true, "test" }})
	for _, tc := range []struct {
		name        string
		max         uint16
		flags       uint8
		told, stand bool
	}{
		{"ask, version 2", 2, wire.HelloAsk, true, true},
		{"ask, version 1 only", 1, wire.HelloAsk, false, false},
		{"no ask", 2, 0, false, false},
		{"standby and ask", 2, wire.HelloStandby | wire.HelloAsk, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, at)
			send(t, c, wire.TypeHello, 0, wire.Hello{MinVersion: 1, MaxVersion: tc.max, Role: wire.RoleApp, Flags: tc.flags, Name: "asker"}.Marshal())
			m := recvType(t, c, wire.TypeWelcome)
			var w wire.Welcome
			if err := w.Unmarshal(m.Body); err != nil {
				t.Fatal(err)
			}
			if int(w.Version) != int(tc.max) {
				t.Fatalf("welcome version %d, want %d", w.Version, tc.max)
			}
			if told := w.Flags&wire.WelcomeStandby != 0; told != tc.told {
				t.Fatalf("welcome flags %#x: WelcomeStandby %v, want %v", w.Flags, told, tc.told)
			}
			var s admin.Session
			select {
			case s = <-at.joins:
			case <-time.After(bound):
				t.Fatal("the session was not listed")
			}
			if s.ID != w.SessionID || s.Standby != tc.stand {
				t.Fatalf("session %+v listed; want id %d with standby %v", s, w.SessionID, tc.stand)
			}
			c.Close()
		})
	}
}
