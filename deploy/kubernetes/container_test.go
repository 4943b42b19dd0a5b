package kubernetes_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// A container is a process in a mount namespace of its own, entered by this test
// binary re-executed with containerEnv set: it bind-mounts each volume at its
// mountPath (read-only where the manifest says so), the image's files at their
// paths and the pod's /etc/hosts, gives the container a private /dev/shm,
// makes the root file system read-only if the securityContext says so, takes
// on the container's user and groups, and then execs the container's command. Nothing it mounts is seen outside: the
// namespace's mounts are private and end with the process.
const containerEnv = "CLIMESH_TEST_CONTAINER"

// containerSpec is what the re-executed binary needs to set a container up.
type containerSpec struct {
	Scratch string  // an empty directory; a tmpfs there holds the overlays' upper layers
	Mounts  []mount // in order
	Argv    []string
	Env     []string
	Dir     string
	// The securityContext: the process's user, group and supplementary groups,
	// and a root file system that is read-only but for the mounts.
	UID, GID     int
	Groups       []int
	ReadOnlyRoot bool
}

// mount is one bind mount into the container, or (Source "") a tmpfs owned by
// the container's user: the writable layer's parts that a container writes
// (its home, /tmp) when its root file system is not read-only.
type mount struct {
	Source, Target string
	ReadOnly       bool
}

// containerCommand is the command that starts spec: this test binary, in a new
// mount namespace, told to become the container.
func containerCommand(spec containerSpec) (*exec.Cmd, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self)
	cmd.Env = []string{containerEnv + "=" + string(b)}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	return cmd, nil
}

// becomeContainer runs in the re-executed binary (from TestMain): it returns
// only on error.
func becomeContainer(raw string) error {
	var spec containerSpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		return fmt.Errorf("container spec: %w", err)
	}
	// Nothing below may propagate to the host's mounts.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	if err := syscall.Mount("tmpfs", spec.Scratch, "tmpfs", 0, "mode=0700"); err != nil {
		return fmt.Errorf("scratch tmpfs: %w", err)
	}
	// A mountPath the host lacks (/etc/climesh/policy, /var/lib/copilot) is made
	// on an overlay of its nearest existing ancestor, whose upper layer is the
	// scratch tmpfs: the host's directories stay as they are.
	var overlays []string
	for _, m := range spec.Mounts {
		if _, err := os.Lstat(m.Target); err == nil {
			continue
		}
		dir := filepath.Dir(m.Target)
		for {
			if _, err := os.Stat(dir); err == nil {
				break
			}
			dir = filepath.Dir(dir)
		}
		if !slices.Contains(overlays, dir) {
			overlays = append(overlays, dir)
		}
	}
	slices.Sort(overlays) // parents before children
	for i, dir := range overlays {
		upper, work := filepath.Join(spec.Scratch, fmt.Sprint(i), "upper"), filepath.Join(spec.Scratch, fmt.Sprint(i), "work")
		if err := errors.Join(os.MkdirAll(upper, 0o755), os.MkdirAll(work, 0o755)); err != nil {
			return err
		}
		if err := syscall.Mount("overlay", dir, "overlay", 0, fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", dir, upper, work)); err != nil {
			return fmt.Errorf("overlay on %s: %w", dir, err)
		}
	}
	for _, m := range spec.Mounts {
		if m.Source == "" {
			if err := mountPoint(m.Target, true); err != nil {
				return err
			}
			if err := syscall.Mount("tmpfs", m.Target, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, fmt.Sprintf("mode=1777,uid=%d,gid=%d", spec.UID, spec.GID)); err != nil {
				return fmt.Errorf("tmpfs at %s: %w", m.Target, err)
			}
			continue
		}
		info, err := os.Stat(m.Source)
		if err != nil {
			return err
		}
		if err := mountPoint(m.Target, info.IsDir()); err != nil {
			return err
		}
		if err := syscall.Mount(m.Source, m.Target, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s at %s: %w", m.Source, m.Target, err)
		}
		if m.ReadOnly {
			if err := syscall.Mount("", m.Target, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				return fmt.Errorf("read-only %s: %w", m.Target, err)
			}
		}
	}
	// Envoy keeps its hot-restart state in /dev/shm; a pod has its own.
	if err := syscall.Mount("shm", "/dev/shm", "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=1777"); err != nil {
		return fmt.Errorf("/dev/shm: %w", err)
	}
	if spec.ReadOnlyRoot { // the mounts above keep their own flags
		for _, dir := range append([]string{"/"}, overlays...) {
			if err := syscall.Mount("", dir, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				return fmt.Errorf("read-only %s: %w", dir, err)
			}
		}
	}
	if err := os.Chdir(spec.Dir); err != nil {
		return err
	}
	// The command is looked up on the container's PATH, as the runtime does.
	for _, e := range spec.Env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			os.Setenv("PATH", v)
		}
	}
	path, err := exec.LookPath(spec.Argv[0])
	if err != nil {
		return err
	}
	if err := syscall.Setgroups(spec.Groups); err != nil {
		return fmt.Errorf("setgroups %v: %w", spec.Groups, err)
	}
	if err := syscall.Setgid(spec.GID); err != nil {
		return fmt.Errorf("setgid %d: %w", spec.GID, err)
	}
	if err := syscall.Setuid(spec.UID); err != nil {
		return fmt.Errorf("setuid %d: %w", spec.UID, err)
	}
	return syscall.Exec(path, spec.Argv, spec.Env)
}

// mountPoint makes sure target exists as a directory or a file.
func mountPoint(target string, dir bool) error {
	if dir {
		return os.MkdirAll(target, 0o755)
	}
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return f.Close()
}
