package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestMain runs main itself when the test binary is started by runMain.
func TestMain(m *testing.M) {
	if os.Getenv("CLIMESH_CONNECT_TEST_MAIN") == "1" {
		os.Args = append([]string{"climesh-connect"}, os.Args[1:]...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runMain runs main with args and only env as its CLIMESH_ variables, and returns
// its exit code and standard error.
func runMain(t *testing.T, args []string, env ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CLIMESH_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, append(env, "CLIMESH_CONNECT_TEST_MAIN=1")...)
	cmd.Stdin = strings.NewReader("")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

// TestBadInputExits2: what does not parse or validate exits 2 with the reason,
// before anything is dialled; never a panic.
func TestBadInputExits2(t *testing.T) {
	cases := map[string]struct {
		args []string
		env  []string
		want string // on stderr
	}{
		"no edge":           {want: "--edge/CLIMESH_EDGE: required"},
		"http edge":         {args: []string{"--edge", "http://edge/v1/rpc"}, want: `--edge/CLIMESH_EDGE="http://edge/v1/rpc"`},
		"bad reconnect":     {env: []string{"CLIMESH_RECONNECT=5 minutes"}, want: `CLIMESH_RECONNECT="5 minutes": not a duration`},
		"bad token-as-user": {env: []string{"CLIMESH_EDGE=ws://e/v1/rpc", "CLIMESH_TOKEN_AS_USER=yes"}, want: `CLIMESH_TOKEN_AS_USER="yes": not a boolean`},
		"unknown flag":      {args: []string{"--edg", "ws://e/v1/rpc"}, want: "flag provided but not defined: -edg"},
		"two errors": {args: []string{"--edge", "ws://e/v1/rpc", "--reconnect", "-1s", "--listen", "nowhere"},
			want: "climesh-connect: --reconnect/CLIMESH_RECONNECT=\"-1s\": negative (want 0 to give up at once, or more)\nclimesh-connect: --listen=\"nowhere\""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			code, stderr := runMain(t, tc.args, tc.env...)
			if code != 2 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "panic") {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 2 and %q", code, stderr, tc.want)
			}
		})
	}
}

func TestHelpExits0(t *testing.T) {
	code, stderr := runMain(t, []string{"-h"})
	if code != 0 || !strings.Contains(stderr, "-reconnect duration") || !strings.Contains(stderr, "Flags override environment variables") {
		t.Errorf("exit %d, stderr:\n%s", code, stderr)
	}
}
