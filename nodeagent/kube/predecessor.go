package kube

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/handoff-dev/handoff/api/v1alpha1"
	"github.com/handoff-dev/handoff/internal/workload"
	"github.com/handoff-dev/handoff/nodeagent/podid"
)

// AskTimeout bounds how long the agent looks a joining process's pod up
// before it answers (the SDK waits 10 s for its Welcome).
const AskTimeout = 5 * time.Second

// Predecessors answers a joining process that asks whether a predecessor
// will hand over to it (nodeagent.Config.Predecessor), from the Pods and
// Migrations of this node: it waits when an unfinished Migration names its
// pod as the target, or when its pod waits for the Migrated gate and an
// older pod of the same workload serves on this node.
type Predecessors struct {
	// Client reads this node's Pods and Migrations (the agent's cache).
	// Until it is set every process is told to start fresh.
	Client client.Client
}

// Wait is the nodeagent.Config.Predecessor function.
func (p *Predecessors) Wait(id podid.Identity) (bool, string) {
	if id.PodUID == "" {
		return false, "the process is not in a pod"
	}
	if p.Client == nil {
		return false, "the agent has no Kubernetes client yet"
	}
	ctx, cancel := context.WithTimeout(context.Background(), AskTimeout)
	defer cancel()
	wait, why, err := p.decide(ctx, id.PodUID)
	if err != nil {
		return false, fmt.Sprintf("%v; starting fresh", err)
	}
	return wait, why
}

func (p *Predecessors) decide(ctx context.Context, uid string) (bool, string, error) {
	var pods corev1.PodList
	if err := p.Client.List(ctx, &pods); err != nil {
		return false, "", fmt.Errorf("list the pods of this node: %w", err)
	}
	var pod *corev1.Pod
	for i := range pods.Items {
		if string(pods.Items[i].UID) == uid {
			pod = &pods.Items[i]
		}
	}
	if pod == nil {
		return false, "", fmt.Errorf("no pod with uid %s on this node", uid)
	}
	var migs v1alpha1.MigrationList
	if err := p.Client.List(ctx, &migs, client.InNamespace(pod.Namespace)); err != nil {
		return false, "", fmt.Errorf("list the migrations of this node: %w", err)
	}
	for _, m := range migs.Items {
		if m.Spec.Target.Pod == pod.Name && !m.Spec.SamePod() && !m.Status.Phase.Final() {
			return true, fmt.Sprintf("migration %s/%s moves pod %s's sockets to it", m.Namespace, m.Name, m.Spec.Source.Pod), nil
		}
	}
	key := pod.Namespace + "/" + pod.Name
	if !workload.Waiting(pod) {
		return false, fmt.Sprintf("pod %s does not wait for the %s gate", key, v1alpha1.ConditionMigrated), nil
	}
	if prev := workload.Predecessor(pod, pods.Items); prev != nil {
		return true, fmt.Sprintf("pod %s/%s of the same workload serves on this node and will hand over to pod %s", prev.Namespace, prev.Name, key), nil
	}
	return false, fmt.Sprintf("no older pod of pod %s's workload serves on this node", key), nil
}
