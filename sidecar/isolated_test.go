package sidecar

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// fakeStarts records each start and runs `sleep` as the "CLI".
type fakeStarts struct {
	mu    sync.Mutex
	homes []string
	envs  [][]string
}

func (f *fakeStarts) start(_ context.Context, _ string, home string, env []string) (*Child, error) {
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &Child{Cmd: cmd, Addr: "127.0.0.1:1", Token: "t-" + filepath.Base(filepath.Dir(home)), done: make(chan struct{})}
	go func() { cmd.Wait(); close(c.done) }()
	f.mu.Lock()
	f.homes, f.envs = append(f.homes, home), append(f.envs, env)
	f.mu.Unlock()
	return c, nil
}

func newPool(t *testing.T, capacity int) (*UserPool, *fakeStarts) {
	f := &fakeStarts{}
	p := &UserPool{Command: "copilot", Root: t.TempDir(), Secrets: t.TempDir(), Cap: capacity, IdleAfter: 50 * time.Millisecond, Log: zap.NewNop(), start: f.start}
	t.Cleanup(func() {
		p.mu.Lock()
		for n := range p.users {
			p.stopLocked(n, "test over")
		}
		p.mu.Unlock()
	})
	return p, f
}

func TestUserPoolOneCLIPerUser(t *testing.T) {
	p, f := newPool(t, 5)
	os.WriteFile(filepath.Join(p.Secrets, "ann.env"), []byte("# ann's key\nCOPILOT_PROVIDER_KEY=sk-ann\n"), 0o600)
	a1, rel1, err := p.Acquire(t.Context(), "ann")
	if err != nil {
		t.Fatal(err)
	}
	a2, rel2, _ := p.Acquire(t.Context(), "ann")
	b, relB, _ := p.Acquire(t.Context(), "ben")
	if a1 != a2 || a1.Token == b.Token || len(f.homes) != 2 {
		t.Fatalf("ann %v/%v ben %v, %d starts", a1, a2, b, len(f.homes))
	}
	info, err := os.Stat(filepath.Join(p.Root, "ann", "home"))
	if err != nil || info.Mode().Perm() != 0o700 {
		t.Fatalf("ann's home: %v %v", info, err)
	}
	if strings.Join(f.envs[0], ",") != "COPILOT_PROVIDER_KEY=sk-ann" && strings.Join(f.envs[1], ",") != "COPILOT_PROVIDER_KEY=sk-ann" {
		t.Fatalf("ann's secret not given: %v", f.envs)
	}
	rel1()
	rel2()
	relB()
	rel1() // twice is harmless
	for _, bad := range []string{"../etc", ".hidden", "a/b", ""} {
		if _, _, err := p.Acquire(t.Context(), bad); err == nil {
			t.Errorf("user %q accepted as a directory name", bad)
		}
	}
}

func TestUserPoolReapsAndRestarts(t *testing.T) {
	p, f := newPool(t, 5)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go p.Run(ctx)
	_, rel, _ := p.Acquire(t.Context(), "ann")
	pid := p.Running()["ann"]
	rel()
	deadline := time.Now().Add(5 * time.Second)
	for p.Running()["ann"] != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle CLI not reaped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Back on the next connection, in the same home.
	_, rel, _ = p.Acquire(t.Context(), "ann")
	defer rel()
	if p.Running()["ann"] == pid || len(f.homes) != 2 || f.homes[0] != f.homes[1] {
		t.Fatalf("restart: pid %d -> %d, homes %v", pid, p.Running()["ann"], f.homes)
	}
	// A CLI that died is started again.
	syscall.Kill(p.Running()["ann"], syscall.SIGKILL)
	time.Sleep(100 * time.Millisecond)
	if _, rel2, err := p.Acquire(t.Context(), "ann"); err != nil || len(f.homes) != 3 {
		t.Fatalf("dead CLI not restarted: %v, %d starts", err, len(f.homes))
	} else {
		rel2()
	}
}

func TestUserPoolCap(t *testing.T) {
	p, _ := newPool(t, 2)
	_, relA, _ := p.Acquire(t.Context(), "ann")
	_, relB, _ := p.Acquire(t.Context(), "ben")
	// Both busy: refused with a clear error.
	if _, _, err := p.Acquire(t.Context(), "cat"); !errors.Is(err, ErrPoolFull) {
		t.Fatalf("third user while both busy: %v", err)
	}
	// ann goes idle: she is evicted for cat.
	relA()
	if _, relC, err := p.Acquire(t.Context(), "cat"); err != nil {
		t.Fatal(err)
	} else {
		defer relC()
	}
	if _, ok := p.Running()["ann"]; ok {
		t.Fatal("the idle user was not evicted")
	}
	relB()
}
