package podid

import (
	"errors"
	"strings"
	"testing"
)

// Real-looking identities: a UUID pod UID (and the systemd driver's
// underscored spelling of it), a static pod's md5 UID, 64-hex container ids.
const (
	uid     = "4f1c7b3e-9a2d-4e8b-b6c5-1d0e2f3a4b5c"
	uidU    = "4f1c7b3e_9a2d_4e8b_b6c5_1d0e2f3a4b5c"
	uid2    = "0b6e2d94-53a1-47c2-9f08-6c2d1e7a8b90"
	uid2U   = "0b6e2d94_53a1_47c2_9f08_6c2d1e7a8b90"
	static  = "6a2b9e0c1d7f43e8a5b4c3d2e1f0a9b8"
	cid     = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	cid2    = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
	sdQoS   = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice"
	sdBestE = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice"
)

func TestParseCgroupPath(t *testing.T) {
	for _, tc := range []struct {
		name, path  string
		uid, cid    string
		runtime     string
		wantErr     error
		errContains string
	}{
		// cgroupfs driver.
		{name: "cgroupfs burstable", path: "/kubepods/burstable/pod" + uid + "/" + cid, uid: uid, cid: cid},
		{name: "cgroupfs guaranteed", path: "/kubepods/pod" + uid + "/" + cid, uid: uid, cid: cid},
		{name: "cgroupfs besteffort", path: "/kubepods/besteffort/pod" + uid + "/" + cid, uid: uid, cid: cid},
		{name: "cgroupfs cri-o", path: "/kubepods/besteffort/pod" + uid + "/crio-" + cid, uid: uid, cid: cid, runtime: RuntimeCRIO},
		{name: "cgroupfs static pod", path: "/kubepods/burstable/pod" + static + "/" + cid, uid: static, cid: cid},
		{name: "cgroupfs under a custom cgroup root", path: "/kubelet/kubepods/burstable/pod" + uid + "/" + cid, uid: uid, cid: cid},
		{name: "cgroupfs in a docker-in-docker node", path: "/docker/" + cid2 + "/kubepods/burstable/pod" + uid + "/" + cid, uid: uid, cid: cid},

		// systemd driver.
		{name: "systemd containerd burstable", path: sdQoS + "/cri-containerd-" + cid + ".scope", uid: uid, cid: cid, runtime: RuntimeContainerd},
		{name: "systemd containerd guaranteed", path: "/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope", uid: uid, cid: cid, runtime: RuntimeContainerd},
		{name: "systemd cri-o besteffort", path: sdBestE + "/crio-" + cid + ".scope", uid: uid, cid: cid, runtime: RuntimeCRIO},
		{name: "systemd cri-o with crun's container sub-cgroup", path: sdBestE + "/crio-" + cid + ".scope/container", uid: uid, cid: cid, runtime: RuntimeCRIO},
		{name: "systemd docker", path: sdQoS + "/docker-" + cid + ".scope", uid: uid, cid: cid, runtime: RuntimeDocker},
		{name: "systemd static pod", path: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + static + ".slice/cri-containerd-" + cid + ".scope", uid: static, cid: cid, runtime: RuntimeContainerd},
		{name: "kind", path: "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope", uid: uid, cid: cid, runtime: RuntimeContainerd},
		{name: "kind guaranteed", path: "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope", uid: uid, cid: cid, runtime: RuntimeContainerd},
		{name: "containerd systemd notation in its service", path: "/system.slice/containerd.service/kubepods-burstable-pod" + uidU + ".slice:cri-containerd:" + cid, uid: uid, cid: cid, runtime: RuntimeContainerd},
		{name: "containerd systemd notation in kind", path: "/system.slice/containerd.service/kubelet-kubepods-besteffort-pod" + uidU + ".slice:cri-containerd:" + cid, uid: uid, cid: cid, runtime: RuntimeContainerd},
		{name: "cri-o systemd notation", path: "/system.slice/crio.service/kubepods-pod" + uidU + ".slice:crio:" + cid, uid: uid, cid: cid, runtime: RuntimeCRIO},

		// Reader in its own cgroup namespace: the kernel writes "..".
		{name: "cgroupns systemd", path: "/../../../kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + cid + ".scope", uid: uid, cid: cid, runtime: RuntimeContainerd},
		{name: "cgroupns cgroupfs same qos", path: "/../../pod" + uid + "/" + cid, uid: uid, cid: cid},
		{name: "cgroupns cgroupfs other qos", path: "/../../../besteffort/pod" + uid + "/" + cid, uid: uid, cid: cid},
		{name: "cgroupns cgroupfs kubepods visible", path: "/../kubepods/burstable/pod" + uid + "/" + cid, uid: uid, cid: cid},

		// A container that can make cgroups below its own only adds
		// segments after the true ones: the outermost pod wins.
		{name: "forged cgroupfs pod below a container", path: "/kubepods/burstable/pod" + uid + "/" + cid + "/kubepods/besteffort/pod" + uid2 + "/" + cid2, uid: uid, cid: cid},
		{name: "forged systemd pod below a container", path: sdQoS + "/cri-containerd-" + cid + ".scope/kubepods-pod" + uid2U + ".slice/cri-containerd-" + cid2 + ".scope", uid: uid, cid: cid, runtime: RuntimeContainerd},

		// Not in a pod.
		{name: "root", path: "/", wantErr: ErrNotInPod},
		{name: "login session", path: "/user.slice/user-0.slice/session-1.scope", wantErr: ErrNotInPod, errContains: "session-1.scope"},
		{name: "containerd itself", path: "/system.slice/containerd.service", wantErr: ErrNotInPod},
		{name: "plain docker container", path: "/system.slice/docker-" + cid + ".scope", wantErr: ErrNotInPod},
		{name: "plain docker cgroupfs", path: "/docker/" + cid, wantErr: ErrNotInPod},
		{name: "qos slice only", path: "/kubepods.slice/kubepods-burstable.slice", wantErr: ErrNotInPod},
		{name: "pod segment outside kubepods", path: "/machine.slice/pod" + uid + "/" + cid, wantErr: ErrNotInPod},
		{name: "cgroupfs pod segment under a qos name outside kubepods", path: "/besteffort/pod" + uid + "/" + cid, wantErr: ErrNotInPod},
		{name: "podman pod", path: "/machine.slice/machine-libpod_pod_" + cid2 + ".slice/libpod-" + cid + ".scope", wantErr: ErrNotInPod},
		{name: "not a uid", path: "/kubepods/burstable/podnotauid/" + cid, wantErr: ErrNotInPod},
		{name: "underscored uid under cgroupfs", path: "/kubepods/burstable/pod" + uidU + "/" + cid, wantErr: ErrNotInPod},
		{name: "dashed uid under systemd", path: "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uid + ".slice/cri-containerd-" + cid + ".scope", wantErr: ErrNotInPod},
		{name: "relative path", path: "kubepods/burstable/pod" + uid + "/" + cid, wantErr: ErrNotInPod},
		{name: "colon segment with two parts", path: "/system.slice/containerd.service/kubepods-burstable-pod" + uidU + ".slice:" + cid, wantErr: ErrNotInPod},

		// In a pod, in none of its containers.
		{name: "cgroupfs pod level", path: "/kubepods/burstable/pod" + uid, wantErr: ErrNotInContainer},
		{name: "systemd pod level", path: sdQoS, wantErr: ErrNotInContainer},
		{name: "crio conmon", path: sdQoS + "/crio-conmon-" + cid + ".scope", wantErr: ErrNotInContainer, errContains: "conmon"},
		{name: "short container id", path: "/kubepods/burstable/pod" + uid + "/" + cid[:12], wantErr: ErrNotInContainer},
		{name: "upper-case container id", path: "/kubepods/burstable/pod" + uid + "/" + strings.ToUpper(cid), wantErr: ErrNotInContainer},
		{name: "unknown runtime prefix", path: sdQoS + "/runc-" + cid + ".scope", wantErr: ErrNotInContainer},
		{name: "systemd notation unknown runtime", path: "/system.slice/containerd.service/kubepods-burstable-pod" + uidU + ".slice:runc:" + cid, wantErr: ErrNotInContainer},

		// Exiting process whose cgroup is gone.
		{name: "deleted", path: sdQoS + "/cri-containerd-" + cid + ".scope (deleted)", wantErr: ErrProcessExited},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := ParseCgroupPath(tc.path)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ParseCgroupPath(%q) = %+v, %v; want error %v", tc.path, id, err, tc.wantErr)
				}
				if id != (Identity{}) {
					t.Errorf("identity %+v returned with error", id)
				}
				if !strings.Contains(err.Error(), tc.path) {
					t.Errorf("error %q does not name the path %q", err, tc.path)
				}
				if tc.errContains != "" && !strings.Contains(err.Error(), tc.errContains) {
					t.Errorf("error %q does not say %q", err, tc.errContains)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseCgroupPath(%q): %v", tc.path, err)
			}
			want := Identity{PodUID: tc.uid, ContainerID: tc.cid, Runtime: tc.runtime, CgroupPath: tc.path}
			if id != want {
				t.Fatalf("ParseCgroupPath(%q)\n got %+v\nwant %+v", tc.path, id, want)
			}
		})
	}
}

// v1Lines is a /proc/<pid>/cgroup of a v1 host with every hierarchy the
// kubelet and runc manage at path, the memory one elsewhere when
// memoryPath is set, and a unified line.
func v1Lines(path, memoryPath, unified string) string {
	if memoryPath == "" {
		memoryPath = path
	}
	return "12:hugetlb:" + path + "\n" +
		"11:perf_event:" + path + "\n" +
		"10:net_cls,net_prio:" + path + "\n" +
		"9:devices:" + path + "\n" +
		"8:pids:" + path + "\n" +
		"7:blkio:" + path + "\n" +
		"6:cpuset:" + path + "\n" +
		"5:freezer:" + path + "\n" +
		"4:memory:" + memoryPath + "\n" +
		"3:cpu,cpuacct:" + path + "\n" +
		"2:rdma:/\n" +
		"1:name=systemd:" + path + "\n" +
		"0::" + unified + "\n"
}

func TestParseProcCgroup(t *testing.T) {
	fs := "/kubepods/burstable/pod" + uid + "/" + cid
	fs2 := "/kubepods/besteffort/pod" + uid2 + "/" + cid2
	fsOtherContainer := "/kubepods/burstable/pod" + uid + "/" + cid2
	sd := sdQoS + "/cri-containerd-" + cid + ".scope"
	colon := "/system.slice/containerd.service/kubepods-burstable-pod" + uidU + ".slice:cri-containerd:" + cid
	for _, tc := range []struct {
		name, data string
		want       Identity
		wantErr    error
		errHas     []string
	}{
		{name: "v2", data: "0::" + sd + "\n", want: Identity{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, CgroupPath: sd}},
		{name: "v2 without trailing newline", data: "0::" + sd, want: Identity{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, CgroupPath: sd}},
		{name: "v2 colon notation", data: "0::" + colon + "\n", want: Identity{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, CgroupPath: colon}},
		{name: "v1 cgroupfs", data: v1Lines(fs, "", "/"), want: Identity{PodUID: uid, ContainerID: cid, CgroupPath: fs}},
		{name: "v1 systemd, hybrid unified in the pod too", data: v1Lines(sd, "", sd), want: Identity{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd, CgroupPath: sd}},
		{name: "v1 memory elsewhere, not a pod", data: v1Lines(fs, "/process_api/x", "/"), want: Identity{PodUID: uid, ContainerID: cid, CgroupPath: fs}},
		{name: "v1 only pids carries the pod", data: "8:pids:" + fs + "\n4:memory:/\n1:name=systemd:/\n0::/\n", want: Identity{PodUID: uid, ContainerID: cid, CgroupPath: fs}},
		{name: "v1 one hierarchy at pod level only", data: "8:pids:/kubepods/burstable/pod" + uid + "\n3:cpu,cpuacct:" + fs + "\n", want: Identity{PodUID: uid, ContainerID: cid, CgroupPath: fs}},
		{name: "v1 path reported from the preferred hierarchy", data: "8:pids:" + fs + "/sub\n3:cpu,cpuacct:" + fs + "\n", want: Identity{PodUID: uid, ContainerID: cid, CgroupPath: fs}},

		{name: "v2 not in pod", data: "0::/user.slice/user-0.slice/session-3.scope\n", wantErr: ErrNotInPod, errHas: []string{"session-3.scope"}},
		{name: "v1 not in pod names the preferred path", data: "4:memory:/process_api/x\n1:name=systemd:/system.slice/sshd.service\n0::/\n", wantErr: ErrNotInPod, errHas: []string{"/system.slice/sshd.service"}},
		{name: "empty", data: "", wantErr: ErrNotInPod},
		{name: "conmon everywhere", data: v1Lines(sdQoS+"/crio-conmon-"+cid+".scope", "", "/"), wantErr: ErrNotInContainer, errHas: []string{"conmon"}},
		{name: "hierarchies name different pods", data: v1Lines(fs, fs2, "/"), wantErr: ErrAmbiguous, errHas: []string{fs, fs2, "memory"}},
		{name: "unified and v1 name different pods", data: "1:name=systemd:" + fs + "\n0::" + fs2 + "\n", wantErr: ErrAmbiguous, errHas: []string{"cgroup2", "name=systemd"}},
		{name: "pod level disagrees with container", data: "8:pids:/kubepods/besteffort/pod" + uid2 + "\n3:cpu,cpuacct:" + fs + "\n", wantErr: ErrAmbiguous},
		{name: "hierarchies name different containers of one pod", data: v1Lines(fs, fsOtherContainer, "/"), wantErr: ErrAmbiguous},
		{name: "deleted", data: "0::" + sd + " (deleted)\n", wantErr: ErrProcessExited},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := ParseProcCgroup([]byte(tc.data))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %+v, %v; want error %v", id, err, tc.wantErr)
				}
				for _, s := range tc.errHas {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not mention %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id != tc.want {
				t.Fatalf("\n got %+v\nwant %+v", id, tc.want)
			}
		})
	}
}

func TestParseProcCgroupMalformed(t *testing.T) {
	_, err := ParseProcCgroup([]byte("0::/\nnot a cgroup line\n"))
	if err == nil {
		t.Fatal("malformed line accepted")
	}
	if errors.Is(err, ErrNotInPod) || !strings.Contains(err.Error(), "not a cgroup line") {
		t.Fatalf("error %q should name the malformed line and not claim ErrNotInPod", err)
	}
}

func TestMatchesStatus(t *testing.T) {
	cd := Identity{PodUID: uid, ContainerID: cid, Runtime: RuntimeContainerd}
	crio := Identity{PodUID: uid, ContainerID: cid, Runtime: RuntimeCRIO}
	bare := Identity{PodUID: uid, ContainerID: cid}
	for _, tc := range []struct {
		name   string
		id     Identity
		status string
		want   bool
	}{
		{"containerd", cd, "containerd://" + cid, true},
		{"cri-o", crio, "cri-o://" + cid, true},
		{"docker", Identity{ContainerID: cid, Runtime: RuntimeDocker}, "docker://" + cid, true},
		{"runtime unknown from the path", bare, "containerd://" + cid, true},
		{"runtime unknown, cri-o status", bare, "cri-o://" + cid, true},
		{"other container", cd, "containerd://" + cid2, false},
		{"id prefix only", cd, "containerd://" + cid[:12], false},
		{"other runtime", cd, "cri-o://" + cid, false},
		{"no scheme", cd, cid, false},
		{"empty scheme", bare, "://" + cid, false},
		{"container not started", cd, "", false},
		{"scheme without id", cd, "containerd://", false},
		{"empty identity", Identity{}, "containerd://", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.id.MatchesStatus(tc.status); got != tc.want {
				t.Fatalf("%+v.MatchesStatus(%q) = %v, want %v", tc.id, tc.status, got, tc.want)
			}
		})
	}
}

func BenchmarkParseProcCgroup(b *testing.B) {
	data := []byte(v1Lines(sdQoS+"/cri-containerd-"+cid+".scope", "", "/"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseProcCgroup(data); err != nil {
			b.Fatal(err)
		}
	}
}
