package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/handoff-dev/handoff/nodeagent/podid"
)

// Successors tells the agent whether a process in another pod that asks
// to administer it is its successor (nodeagent.Config.Successor): the
// same container of another pod of the agent's own DaemonSet. A rolling
// update with maxSurge runs both pods on the node, and the new one asks
// the old one to hand over.
type Successors struct {
	// Client reads this node's Pods (the agent's cache); Reader reads
	// past it when a pod is too new for the cache. Until Client is set,
	// no other pod is a successor.
	Client client.Client
	Reader client.Reader
	// Node is this node's name, for the read past the cache.
	Node string
}

// Is is the nodeagent.Config.Successor function: self is the agent's own
// container, peer the asking process's.
func (s *Successors) Is(self, peer podid.Identity) (bool, string) {
	if s.Client == nil {
		return false, "the agent has no Kubernetes client yet"
	}
	ctx, cancel := context.WithTimeout(context.Background(), AskTimeout)
	defer cancel()
	ok, why, err := s.decide(ctx, self, peer)
	if err != nil {
		return false, err.Error()
	}
	return ok, why
}

func (s *Successors) decide(ctx context.Context, self, peer podid.Identity) (bool, string, error) {
	mine, theirs, err := s.pods(ctx, self.PodUID, peer.PodUID)
	if err != nil {
		return false, "", err
	}
	own, other := metav1.GetControllerOf(mine), metav1.GetControllerOf(theirs)
	if own == nil || own.Kind != "DaemonSet" {
		return false, fmt.Sprintf("the agent's pod %s/%s is not a DaemonSet's", mine.Namespace, mine.Name), nil
	}
	if other == nil || other.UID != own.UID {
		return false, fmt.Sprintf("pod %s/%s is not of the agent's DaemonSet %s", theirs.Namespace, theirs.Name, own.Name), nil
	}
	if c, pc := containerOf(mine, self), containerOf(theirs, peer); c == "" || c != pc {
		return false, fmt.Sprintf("the process runs in container %q of pod %s/%s, not in the agent's container %q", pc, theirs.Namespace, theirs.Name, c), nil
	}
	return true, fmt.Sprintf("pod %s/%s of the agent's DaemonSet %s", theirs.Namespace, theirs.Name, own.Name), nil
}

// pods finds the two pods by uid among this node's, in the cache first.
func (s *Successors) pods(ctx context.Context, selfUID, peerUID string) (mine, theirs *corev1.Pod, err error) {
	find := func(r client.Reader, opts ...client.ListOption) error {
		var pods corev1.PodList
		if err := r.List(ctx, &pods, opts...); err != nil {
			return fmt.Errorf("list the pods of this node: %w", err)
		}
		for i := range pods.Items {
			switch string(pods.Items[i].UID) {
			case selfUID:
				mine = &pods.Items[i]
			case peerUID:
				theirs = &pods.Items[i]
			}
		}
		return nil
	}
	if err := find(s.Client); err != nil {
		return nil, nil, err
	}
	if (mine == nil || theirs == nil) && s.Reader != nil {
		if err := find(s.Reader, client.MatchingFields{"spec.nodeName": s.Node}); err != nil {
			return nil, nil, err
		}
	}
	switch {
	case mine == nil:
		return nil, nil, fmt.Errorf("the agent's own pod (uid %s) is not among this node's pods", selfUID)
	case theirs == nil:
		return nil, nil, fmt.Errorf("no pod with uid %s on this node", peerUID)
	}
	return mine, theirs, nil
}

// containerOf names the container of pod that id runs in, or "".
func containerOf(pod *corev1.Pod, id podid.Identity) string {
	for _, cs := range pod.Status.ContainerStatuses {
		if id.MatchesStatus(cs.ContainerID) {
			return cs.Name
		}
	}
	return ""
}
