package migstatus

import (
	"encoding/json"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/handoff-dev/handoff/api/v1alpha1"
)

// TestOneWriterPerField: every status field and every condition type has
// exactly one owner, so the controller and the agent never fight.
func TestOneWriterPerField(t *testing.T) {
	owners := []Owner{Controller, Agent}
	typ := reflect.TypeFor[v1alpha1.MigrationStatus]()
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		n := 0
		for _, o := range owners {
			if slices.Contains(o.Fields, name) || (name == "conditions" && len(o.Conditions) > 0) {
				n++
			}
		}
		if name == "conditions" {
			continue // owned per type, below
		}
		if n != 1 {
			t.Errorf("status field %q has %d owners, want 1", name, n)
		}
	}
	for _, c := range []string{v1alpha1.ConditionReady, v1alpha1.ConditionValidated, v1alpha1.ConditionScheduled,
		v1alpha1.ConditionTransferred, v1alpha1.ConditionSourceHandled} {
		n := 0
		for _, o := range owners {
			if slices.Contains(o.Conditions, c) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("condition %s has %d owners, want 1", c, n)
		}
	}
}

func TestOwned(t *testing.T) {
	now := metav1.NewTime(time.Unix(1700000000, 0))
	st := &v1alpha1.MigrationStatus{
		Phase: v1alpha1.PhaseCompleted, NodeName: "n1", StartTime: &now,
		Moved: &v1alpha1.Moved{Connections: 7}, Pause: &metav1.Duration{Duration: time.Millisecond},
		SourceContainerID: "containerd://a",
		Conditions: []metav1.Condition{
			{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Transferred", LastTransitionTime: now},
			{Type: v1alpha1.ConditionTransferred, Status: metav1.ConditionTrue, Reason: "Transferred", LastTransitionTime: now},
		},
	}
	ctl, err := Controller.Owned(st)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := Agent.Owned(st)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(ctl)
	for _, want := range []string{`"phase":"Completed"`, `"nodeName":"n1"`, `"type":"Ready"`, `"startTime"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("controller part %s lacks %s", b, want)
		}
	}
	for _, not := range []string{"moved", "pause", `"type":"Transferred"`, "sourceContainerID"} {
		if strings.Contains(string(b), not) {
			t.Errorf("controller part %s holds the agent's %s", b, not)
		}
	}
	b, _ = json.Marshal(agent)
	for _, want := range []string{`"moved":{"connections":7}`, `"pause":"1ms"`, `"type":"Transferred"`, `"sourceContainerID":"containerd://a"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("agent part %s lacks %s", b, want)
		}
	}
	for _, not := range []string{"phase", "nodeName", `"Ready"`} {
		if strings.Contains(string(b), not) {
			t.Errorf("agent part %s holds the controller's %s", b, not)
		}
	}
}
