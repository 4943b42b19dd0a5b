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
			for _, kv := range strings.Fields(strings.TrimPrefix(line, "# options:")) {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "policy":
					if v != "shipped" && v != "none" {
						return nil, fail(n, "policy=%q: want shipped or none", v)
					}
					tr.policy = v == "shipped"
				case "user":
					tr.caller.User = v
				case "tenant":
					tr.caller.Tenant = v
				case "roles":
					tr.caller.Roles = strings.Split(v, ",")
				case "capacity":
					if tr.capacity, err = strconv.Atoi(v); err != nil || tr.capacity < 0 {
						return nil, fail(n, "capacity=%q: want a count", v)
					}
				case "pool":
					tr.pool = v
				case "mode":
					tr.mode = v
				default:
					return nil, fail(n, "unknown option %q", k)
				}
			}
		case strings.HasPrefix(line, "# record:"):
			fields := strings.Fields(strings.TrimPrefix(line, "# record:"))
			if len(fields) == 0 {
				return nil, fail(n, "record: want an id")
			}
			rec := &registry.Record{ID: fields[0], Mode: "shared", Members: []string{}, Pool: tr.pool}
			for _, kv := range fields[1:] {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "owner":
					rec.Owner = v
				case "tenant":
					rec.Tenant = v
				case "mode":
					rec.Mode = v
				case "members":
					rec.Members = strings.Split(v, ",")
				default:
					return nil, fail(n, "record: unknown field %q", k)
				}
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
			for _, kv := range strings.Fields(strings.TrimPrefix(line, "await ")) {
				k, v, _ := strings.Cut(kv, "=")
				c, err := strconv.Atoi(v)
				if err != nil || c < 1 {
					return nil, fail(n, "await %s: want a count", kv)
				}
				switch k {
				case "cli":
					st.awaitCLI = c
				case "client":
					st.awaitClient = c
				default:
					return nil, fail(n, "await: unknown side %q (want cli or client)", k)
				}
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
