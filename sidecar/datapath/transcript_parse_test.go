package datapath

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/climesh/climesh/identity"
	"github.com/climesh/climesh/session/registry"
)

// A transcript is one script: the relay's options and its steps.
type transcript struct {
	name, title string
	policy      bool // the shipped Rego, a registry.Memory and the guard; false: no engine
	caller      identity.Claims
	capacity    int
	pool, mode  string
	records     []*registry.Record
	steps       []*transcriptStep
}

type stepKind int

type transcriptStep struct {
	line        int
	text        string // as written, echoed in the golden
	kind        stepKind
	frame       string
	awaitText   string // "await cli=N client=M": the step's goroutine-written frames
	awaitCLI    int
	awaitClient int
}

func parseTranscript(path string) (*transcript, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	tr := &transcript{
		name: strings.TrimSuffix(filepath.Base(path), ".transcript"), policy: true,
		caller: identity.Claims{User: "alice", Tenant: "acme"}, pool: "copilot", mode: "shared",
	}
	fail := func(n int, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s", path, n, fmt.Sprintf(format, args...))
	}
	for i, line := range strings.Split(string(raw), "\n") {
		n := i + 1
		line = strings.TrimRight(line, " \t\r")
		switch {
		case line == "":
		case strings.HasPrefix(line, "# options:"):
			err := setEach(strings.TrimPrefix(line, "# options:"), map[string]func(string) error{
				"policy": func(v string) error {
					if v != "shipped" && v != "none" {
						return fmt.Errorf("policy=%q: want shipped or none", v)
					}
					tr.policy = v == "shipped"
					return nil
				},
				"user":   setString(&tr.caller.User),
				"tenant": setString(&tr.caller.Tenant),
				"roles":  func(v string) error { tr.caller.Roles = strings.Split(v, ","); return nil },
				"capacity": func(v string) (err error) {
					if tr.capacity, err = strconv.Atoi(v); err != nil || tr.capacity < 0 {
						return fmt.Errorf("capacity=%q: want a count", v)
					}
					return nil
				},
				"pool": setString(&tr.pool),
				"mode": setString(&tr.mode),
			})
			if err != nil {
				return nil, fail(n, "options: %v", err)
			}
		case strings.HasPrefix(line, "# record:"):
			fields := strings.Fields(strings.TrimPrefix(line, "# record:"))
			if len(fields) == 0 {
				return nil, fail(n, "record: want an id")
			}
			rec := &registry.Record{ID: fields[0], Mode: "shared", Members: []string{}, Pool: tr.pool}
			err := setEach(strings.Join(fields[1:], " "), map[string]func(string) error{
				"owner":   setString(&rec.Owner),
				"tenant":  setString(&rec.Tenant),
				"mode":    setString(&rec.Mode),
				"members": func(v string) error { rec.Members = strings.Split(v, ","); return nil },
			})
			if err != nil {
				return nil, fail(n, "record: %v", err)
			}
			tr.records = append(tr.records, rec)
		case strings.HasPrefix(line, "#"):
			if tr.title == "" && len(tr.steps) == 0 {
				tr.title = line
			}
		case line == "reconnect":
			tr.steps = append(tr.steps, &transcriptStep{line: n, text: line, kind: reconnectStep})
		case strings.HasPrefix(line, "await "):
			if len(tr.steps) == 0 {
				return nil, fail(n, "await before any step")
			}
			st := tr.steps[len(tr.steps)-1]
			st.awaitText = line
			count := func(to *int) func(string) error {
				return func(v string) error {
					if c, err := strconv.Atoi(v); err == nil && c >= 1 {
						*to = c
						return nil
					}
					return fmt.Errorf("%q: want a count", v)
				}
			}
			if err := setEach(strings.TrimPrefix(line, "await "), map[string]func(string) error{
				"cli": count(&st.awaitCLI), "client": count(&st.awaitClient),
			}); err != nil {
				return nil, fail(n, "await: %v", err)
			}
		default:
			prefix, frame, ok := strings.Cut(line, "> ")
			kinds := map[string]stepKind{"client": clientStep, "client~": clientWaitStep, "cli": cliStep}
			kind, known := kinds[prefix]
			if !ok || !known || frame == "" {
				return nil, fail(n, "want client> FRAME, client~> FRAME, cli> FRAME, await ..., reconnect or a # comment: %q", line)
			}
			tr.steps = append(tr.steps, &transcriptStep{line: n, text: line, kind: kind, frame: frame})
		}
	}
	if len(tr.steps) == 0 {
		return nil, fmt.Errorf("%s: no steps", path)
	}
	return tr, nil
}

// setEach applies each key=value of a space-separated list with the setter its
// key names; an unknown key is an error.
func setEach(list string, setters map[string]func(string) error) error {
	for _, kv := range strings.Fields(list) {
		k, v, _ := strings.Cut(kv, "=")
		set, ok := setters[k]
		if !ok {
			return fmt.Errorf("unknown key %q", k)
		}
		if err := set(v); err != nil {
			return err
		}
	}
	return nil
}

func setString(to *string) func(string) error {
	return func(v string) error { *to = v; return nil }
}
