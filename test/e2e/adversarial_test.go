package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/climesh/climesh/policy"
	"github.com/climesh/climesh/session/registry"
	"github.com/climesh/climesh/test/harness"
)

// The adversarial suite: through the real edge (JWT, Envoy, ext_authz), a real
// sidecar and a real CLI, tenants attack each other's sessions and the CLI's host
// on the "hostile" pool, whose one sidecar reaches its CLI through a tap that
// records every frame the CLI receives. The promise under test: no tenant reaches
// another's session, and nobody reaches the host through the CLI.

// rpcTunnel is a raw JSON-RPC client on one tunnel.
type rpcTunnel struct {
	t    *testing.T
	ws   *websocket.Conn
	next int
	seen []string // every frame received
}

// dialEdge opens a tunnel through the edge as user of tenant, with one routing
// header (which pool it reaches); it closes with the test.
func dialEdge(t *testing.T, env *meshEnv, user, tenant, header, value string) *websocket.Conn {
	t.Helper()
	h := bearer(env.Token(user, tenant))
	h.Set(header, value)
	ws, _, err := websocket.Dial(t.Context(), env.EdgeURL, &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		t.Fatalf("%s of %s through the edge (%s: %s): %v", user, tenant, header, value, err)
	}
	ws.SetReadLimit(16 << 20)
	t.Cleanup(func() { ws.CloseNow() })
	return ws
}

func hostileTunnel(t *testing.T, env *meshEnv, user, tenant string) *rpcTunnel {
	t.Helper()
	c := &rpcTunnel{t: t, ws: dialEdge(t, env, user, tenant, "X-Climesh-Target", harness.HostileTarget), next: 1000}
	c.call("connect", map[string]string{})
	return c
}

// send writes a frame; a tunnel the sidecar closed shows in recv.
func (c *rpcTunnel) send(body string) {
	c.ws.Write(context.Background(), websocket.MessageText, []byte(body))
}

func (c *rpcTunnel) recv() string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, b, err := c.ws.Read(ctx)
	if err != nil {
		return "read error: " + err.Error()
	}
	c.seen = append(c.seen, string(b))
	return string(b)
}

// call sends a request and returns its answer.
func (c *rpcTunnel) call(method string, params any) map[string]any {
	c.t.Helper()
	c.next++
	return call(c.t, c.send, c.recv, c.next, method, params)
}

// raw sends a frame as written and returns the next answer (or, for frames that
// get none, the answer to a ping sent after it: what proves the tunnel lives on).
func (c *rpcTunnel) raw(frame string) string {
	c.t.Helper()
	c.send(frame)
	c.next++
	c.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"ping","params":{}}`, c.next))
	for range 50 {
		got := c.recv()
		if strings.HasPrefix(got, "read error") || strings.Contains(got, `"error"`) || strings.Contains(got, fmt.Sprintf(`"id":%d`, c.next)) {
			return got
		}
	}
	c.t.Fatalf("no answer to %s", frame)
	return ""
}

// victimState is what an attack must leave as it was.
type victimState struct {
	events [32]byte // the session's events.jsonl
	record string   // its registry entry
	listed bool     // in its owner's session.list
}

func (env *meshEnv) victim(t *testing.T, owner *rpcTunnel, sid string) victimState {
	t.Helper()
	var s victimState
	b, err := os.ReadFile(filepath.Join(env.Homes["hostile-0"], "session-state", sid, "events.jsonl"))
	if err != nil {
		t.Fatalf("victim's events: %v", err)
	}
	s.events = sha256.Sum256(b)
	rec, err := (&registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}).Get(t.Context(), sid)
	if err != nil || rec == nil {
		t.Fatalf("victim's record: %+v %v", rec, err)
	}
	rj, _ := json.Marshal(struct{ Owner, Tenant, Mode, Instance string }{rec.Owner, rec.Tenant, rec.Mode, rec.Instance})
	s.record = string(rj)
	list := owner.call("session.list", map[string]any{})
	s.listed = strings.Contains(fmt.Sprint(list), sid)
	return s
}

// cliChildren lists the processes the hostile CLI has spawned (MCP servers, shells).
func cliChildren(t *testing.T, env *meshEnv) []string {
	t.Helper()
	pid := env.CLIs["hostile-0"].Proc.Pid()
	var kids []string
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, k := range strings.Fields(string(b)) {
			comm, _ := os.ReadFile("/proc/" + k + "/comm")
			kids = append(kids, k+":"+strings.TrimSpace(string(comm)))
		}
	}
	return kids
}

// tapNames reports the frames on the CLI's connections other than the victim's
// that name sid, read as the CLI reads them, or carry it anywhere.
func tapNames(env *meshEnv, sid string, victimConns map[int]bool) []string {
	var bad []string
	for _, f := range env.Taps["hostile-0"].Frames() {
		if victimConns[f.Conn] {
			continue
		}
		if f.SessionID == sid || strings.Contains(string(f.Body), sid) {
			bad = append(bad, fmt.Sprintf("conn %d: %s", f.Conn, f.Body))
		}
	}
	return bad
}

func victimConnections(env *meshEnv, sid string) map[int]bool {
	conns := map[int]bool{}
	for _, f := range env.Taps["hostile-0"].Frames() {
		if f.Method == "session.create" && f.SessionID == sid {
			conns[f.Conn] = true
		}
	}
	return conns
}

func TestAdversarialSessions(t *testing.T) {
	env := startMesh(t)
	provider := map[string]string{"type": "openai", "baseUrl": env.Model.URL, "apiKey": "x"}

	// alice of acme: a session with a turn, its tunnel held open.
	alice := hostileTunnel(t, env, "alice", "acme")
	sid := fmt.Sprintf("alice-%d", time.Now().UnixNano())
	if got := alice.call("session.create", map[string]any{"sessionId": sid, "model": "double-1", "provider": provider}); got["error"] != nil {
		t.Fatalf("alice creates: %v", got)
	}
	if got := alice.call("session.send", map[string]any{"sessionId": sid, "prompt": "alice's secret plan"}); got["error"] != nil {
		t.Fatalf("alice sends: %v", got)
	}
	ctx := t.Context()
	err := harness.Poll(ctx, 50*time.Millisecond, func() error {
		b, _ := os.ReadFile(filepath.Join(env.Homes["hostile-0"], "session-state", sid, "events.jsonl"))
		if !strings.Contains(string(b), "session.idle") && !strings.Contains(string(b), "assistant.turn_end") {
			return fmt.Errorf("alice's turn has not ended")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The CLI's last writes of the turn (title, metadata): wait until the file rests.
	var last [32]byte
	err = harness.Poll(ctx, 500*time.Millisecond, func() error {
		b, _ := os.ReadFile(filepath.Join(env.Homes["hostile-0"], "session-state", sid, "events.jsonl"))
		sum := sha256.Sum256(b)
		if sum != last {
			last = sum
			return fmt.Errorf("alice's events still change")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	victimConns := victimConnections(env, sid)
	if len(victimConns) != 1 {
		t.Fatalf("alice's session was created on connections %v, want one", victimConns)
	}
	before := env.victim(t, alice, sid)
	if !before.listed {
		t.Fatal("alice does not see her own session listed")
	}
	kidsBefore := cliChildren(t, env)

	// Frames that try to reach alice's session by another reading of the same
	// field, another type, another kind of message, or an option.
	q := strconv.Quote(sid)
	attacks := map[string]string{
		"case variant beside":         `{"jsonrpc":"2.0","id":1,"method":"session.getMessages","params":{"sessionId":"OWN","SessionId":` + q + `}}`,
		"case variant before":         `{"jsonrpc":"2.0","id":1,"method":"session.getMessages","params":{"sessionId":` + q + `,"SessionId":"OWN"}}`,
		"duplicate, own last":         `{"jsonrpc":"2.0","id":1,"method":"session.getMessages","params":{"sessionId":` + q + `,"sessionId":"OWN"}}`,
		"case variant alone":          `{"jsonrpc":"2.0","id":1,"method":"session.getMessages","params":{"SessionId":` + q + `}}`,
		"unicode case fold":           `{"jsonrpc":"2.0","id":1,"method":"session.getMessages","params":{"ſessionId":` + q + `}}`,
		"duplicate, victim last":      `{"jsonrpc":"2.0","id":1,"method":"session.getMessages","params":{"sessionId":"OWN","sessionId":` + q + `}}`,
		"escaped duplicate":           `{"jsonrpc":"2.0","id":1,"method":"session.getMessages","params":{"sessionId":"OWN","sess\u0069onId":` + q + `}}`,
		"numeric case variant":        `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":` + q + `,"sessionID":5,"prompt":"x"}}`,
		"duplicate method":            `{"jsonrpc":"2.0","id":1,"method":"ping","method":"session.delete","params":{"sessionId":` + q + `}}`,
		"case variant method":         `{"jsonrpc":"2.0","id":1,"Method":"ping","method":"session.delete","params":{"sessionId":` + q + `}}`,
		"duplicate params":            `{"jsonrpc":"2.0","id":1,"method":"session.delete","params":{"sessionId":"OWN"},"params":{"sessionId":` + q + `}}`,
		"request dressed as response": `{"jsonrpc":"2.0","id":1,"method":"session.delete","params":{"sessionId":` + q + `},"result":{}}`,
		"response carrying params":    `{"jsonrpc":"2.0","id":1,"result":{},"params":{"sessionId":` + q + `}}`,
		"notification send":           `{"jsonrpc":"2.0","method":"session.send","params":{"sessionId":` + q + `,"prompt":"mine now"}}`,
		"notification delete":         `{"jsonrpc":"2.0","method":"session.delete","params":{"sessionId":` + q + `}}`,
		"null id request":             `{"jsonrpc":"2.0","id":null,"method":"session.delete","params":{"sessionId":` + q + `}}`,
		"float id":                    `{"jsonrpc":"2.0","id":1.0,"method":"session.delete","params":{"sessionId":` + q + `}}`,
		"reserved id":                 `{"jsonrpc":"2.0","id":"climesh-sidecar-1","method":"session.list","params":{}}`,
		"resume with own provider":    `{"jsonrpc":"2.0","id":1,"method":"session.resume","params":{"sessionId":` + q + `,"provider":{"type":"openai","baseUrl":"http://127.0.0.1:1/v1","apiKey":"x"}}}`,
		"create over victim":          `{"jsonrpc":"2.0","id":1,"method":"session.create","params":{"sessionId":` + q + `,"model":"double-1"}}`,
		"event log read":              `{"jsonrpc":"2.0","id":1,"method":"session.eventLog.read","params":{"sessionId":` + q + `}}`,
		"bulk delete":                 `{"jsonrpc":"2.0","id":1,"method":"sessions.deleteAll","params":{}}`,
		"fork":                        `{"jsonrpc":"2.0","id":1,"method":"session.fork","params":{"sessionId":` + q + `}}`,
	}
	attackers := map[string]*rpcTunnel{
		"bob of acme":     hostileTunnel(t, env, "bob", "acme"),
		"alice of globex": hostileTunnel(t, env, "alice", "globex"),
	}
	own := map[string]string{}
	for who, c := range attackers {
		own[who] = fmt.Sprintf("own-%d", time.Now().UnixNano())
		if got := c.call("session.create", map[string]any{"sessionId": own[who], "model": "double-1", "provider": provider}); got["error"] != nil {
			t.Fatalf("%s creates a session of their own: %v", who, got)
		}
	}
	top := t
	for who, c := range attackers {
		for name, frame := range attacks {
			frame := strings.ReplaceAll(frame, `"OWN"`, strconv.Quote(own[who]))
			t.Run(who+"/"+name, func(t *testing.T) {
				c.t = t
				if got := c.raw(frame); !strings.Contains(got, `"error"`) && !strings.HasPrefix(got, "read error") {
					// A dropped frame is answered by nothing; the ping after it must then be the answer.
					if !strings.Contains(got, `"result"`) || strings.Contains(frame, `"id":1,`) {
						t.Errorf("not refused: %s", got)
					}
				}
				if strings.Contains(c.raw(`{"jsonrpc":"2.0","id":2,"method":"ping","params":{}}`), "read error") {
					// The edge closed this tunnel (a frame that is not JSON-RPC): open another.
					u, tn, _ := strings.Cut(who, " of ")
					*c = *hostileTunnel(top, env, u, tn)
					c.t = t
				}
			})
		}
	}
	after := env.victim(t, alice, sid)
	if after != before {
		t.Fatalf("alice's session changed under attack:\nbefore %+v\nafter  %+v", before, after)
	}
	if bad := tapNames(env, sid, victimConns); len(bad) > 0 {
		t.Fatalf("the CLI received frames naming alice's session from other tunnels:\n%s", strings.Join(bad, "\n"))
	}
	if kids := cliChildren(t, env); fmt.Sprint(kids) != fmt.Sprint(kidsBefore) {
		t.Fatalf("the CLI spawned processes: before %v, after %v", kidsBefore, kids)
	}

	// Nothing an attacker received names alice's session (no events, no lists).
	for who, c := range attackers {
		for _, f := range c.seen {
			if strings.Contains(f, sid) && !strings.Contains(f, `"error"`) {
				t.Errorf("%s received a frame naming alice's session: %s", who, f)
			}
		}
	}
	// One refusal for a foreign session and an unknown one: no existence oracle.
	bob := attackers["bob of acme"]
	bob.t = t
	// A listing under an id written another way is still filtered.
	for _, id := range []string{`"l\u0069st"`, `"\u006cist"`, `7`} {
		got := bob.raw(`{"jsonrpc":"2.0","id":` + id + `,"method":"session.list","params":{}}`)
		if strings.Contains(got, sid) {
			t.Fatalf("bob's session.list (id %s) shows alice's session: %s", id, got)
		}
	}
	foreign := bob.call("session.resume", map[string]any{"sessionId": sid, "provider": provider})
	unknown := bob.call("session.resume", map[string]any{"sessionId": "no-such-" + sid, "provider": provider})
	fc, fm := errorOf(foreign)
	uc, um := errorOf(unknown)
	if fc != uc || fm != um || fc != -32012 {
		t.Fatalf("foreign %d %q, unknown %d %q: want one refusal", fc, fm, uc, um)
	}
	// bob's list does not show it; alice's does, and her session still answers her.
	if strings.Contains(fmt.Sprint(bob.call("session.list", map[string]any{})), sid) {
		t.Fatal("bob's list shows alice's session")
	}
	checkTapMatchesDecisions(t, env)
}

// TestAdversarialHost: options and tools that would make the shared CLI run or
// read something on its host are refused or absent.
func TestAdversarialHost(t *testing.T) {
	env := startMesh(t)
	provider := map[string]string{"type": "openai", "baseUrl": env.Model.URL, "apiKey": "x"}
	canary := filepath.Join(env.Dir, fmt.Sprintf("canary-%d", time.Now().UnixNano()))
	mallory := hostileTunnel(t, env, "mallory", "acme")
	kidsBefore := cliChildren(t, env)

	touch := map[string]any{"command": "sh", "args": []string{"-c", "touch " + canary}, "tools": []string{"*"}}
	refused := map[string]map[string]any{
		"stdio MCP server":       {"mcpServers": map[string]any{"x": touch}},
		"http MCP server":        {"mcpServers": map[string]any{"x": map[string]any{"type": "http", "url": "http://127.0.0.1:8500/v1/agent/self"}}},
		"working directory":      {"workingDirectory": env.Homes["hostile-0"]},
		"additional directories": {"additionalDirectories": []string{"/"}},
		"custom agent":           {"customAgents": []any{map[string]any{"name": "a", "prompt": "p", "mcpServers": map[string]any{"x": touch}}}},
		"config dir":             {"configDir": env.Homes["hostile-0"]},
		"skill directories":      {"skillDirectories": []string{env.Dir}},
		"plugin directories":     {"pluginDirectories": []string{env.Dir}},
		"file hooks":             {"enableFileHooks": true},
		"case variant option":    {"MCPServers": map[string]any{"x": touch}},
	}
	for name, extra := range refused {
		t.Run(name, func(t *testing.T) {
			mallory.t = t
			for _, method := range []string{"session.create"} {
				params := map[string]any{"model": "double-1", "provider": provider}
				for k, v := range extra {
					params[k] = v
				}
				code, msg := errorOf(mallory.call(method, params))
				if code != -32012 || !strings.Contains(msg, "session option") {
					t.Errorf("%s: %d %q, want the option refused", method, code, msg)
				}
			}
		})
	}
	mallory.t = t

	// A plain chat session: the CLI's own tools are not offered, whatever is asked.
	for name, extra := range map[string]map[string]any{
		"default":             {},
		"asks for bash":       {"availableTools": []string{"bash", "view"}},
		"asks for all (null)": {"availableTools": nil},
	} {
		t.Run("tools "+name, func(t *testing.T) {
			mallory.t = t
			s := fmt.Sprintf("mallory-%d", time.Now().UnixNano())
			params := map[string]any{"sessionId": s, "model": "double-1", "provider": provider}
			for k, v := range extra {
				params[k] = v
			}
			if got := mallory.call("session.create", params); got["error"] != nil {
				t.Fatalf("create: %v", got)
			}
			for _, tool := range []string{"bash", "view", "create", "web_fetch"} {
				reply := turnReply(t, mallory, s, fmt.Sprintf(`call tool %s {"command":"touch %s","path":"/etc/passwd","url":"http://127.0.0.1:8500/","description":"x"}`, tool, canary))
				if !strings.Contains(reply, "no tool named "+tool+" was offered") {
					t.Errorf("%s was offered to the model: %q", tool, reply)
				}
			}
		})
	}
	mallory.t = t
	// Attachments that name host paths.
	s := fmt.Sprintf("mallory-att-%d", time.Now().UnixNano())
	mallory.call("session.create", map[string]any{"sessionId": s, "model": "double-1", "provider": provider})
	for _, typ := range []string{"file", "directory", "selection"} {
		code, msg := errorOf(mallory.call("session.send", map[string]any{"sessionId": s, "prompt": "read",
			"attachments": []any{map[string]any{"type": typ, "path": "/proc/self/environ", "displayName": "x"}}}))
		if code != -32012 || !strings.Contains(msg, "attachments") {
			t.Errorf("%s attachment: %d %q", typ, code, msg)
		}
	}
	if _, err := os.Stat(canary); err == nil {
		t.Fatal("the CLI ran a command on its host: the canary exists")
	}
	if kids := cliChildren(t, env); fmt.Sprint(kids) != fmt.Sprint(kidsBefore) {
		t.Fatalf("the CLI spawned processes: before %v, after %v", kidsBefore, kids)
	}
	// The admin calls are not on the tunnel port.
	sc := env.Sidecars["hostile-0"]
	for _, path := range []string{"/drain", "/sweep?ttl=1ns"} {
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d%s", sc.Port, path), "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatalf("POST %s on the tunnel port: %d", path, resp.StatusCode)
		}
	}
	if got := mallory.call("ping", map[string]any{}); got["error"] != nil {
		t.Fatalf("the instance stopped serving: %v", got)
	}
	checkTapMatchesDecisions(t, env)
}

// turnReply sends prompt on session s and returns the assistant's final text.
func turnReply(t *testing.T, c *rpcTunnel, s, prompt string) string {
	t.Helper()
	c.next++
	p, _ := json.Marshal(map[string]any{"sessionId": s, "prompt": prompt})
	c.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"session.send","params":%s}`, c.next, p))
	return waitIdle(t, c, s)
}

// checkTapMatchesDecisions: every request the hostile CLI received (read as the
// CLI reads it) is one the sidecar's policy allowed, with the same method,
// session and id — from the sidecar's debug log of what it forwarded.
func checkTapMatchesDecisions(t *testing.T, env *meshEnv) {
	t.Helper()
	b, err := os.ReadFile(env.Sidecars["hostile-0"].Proc.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	type key struct{ method, session, id string }
	allowed := map[key]int{}
	for _, line := range strings.Split(string(b), "\n") {
		var l struct {
			Msg, Method, ID string
			SessionID       string `json:"session_id"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "forwarded" {
			allowed[key{l.Method, l.SessionID, l.ID}]++
		}
	}
	checked := 0
	for _, f := range env.Taps["hostile-0"].Frames() {
		if !f.Valid || f.Method == "" || f.ID == nil || strings.HasPrefix(string(f.ID), `"climesh-sidecar-`) || strings.HasPrefix(string(f.ID), `"climesh-health-`) {
			continue // notifications and answers from the client, the sidecar's own calls and health pings
		}
		k := key{f.Method, f.SessionID, string(f.ID)}
		if allowed[k] == 0 {
			t.Errorf("the CLI executed %s on session %q (id %s), which no decision allowed: %s", f.Method, f.SessionID, f.ID, f.Body)
			continue
		}
		allowed[k]--
		checked++
	}
	if checked == 0 {
		t.Fatal("the tap saw no request: the check proves nothing")
	}
	t.Logf("%d requests the CLI received, each matched to the decision that allowed it", checked)
}

// collabTunnel is a raw tunnel to the collab pool, routed by the room's name.
func collabTunnel(t *testing.T, env *meshEnv, user, tenant, room string) *rpcTunnel {
	t.Helper()
	c := &rpcTunnel{t: t, ws: dialEdge(t, env, user, tenant, "X-Climesh-Session", room), next: 1000}
	c.call("connect", map[string]string{})
	return c
}

// TestAdversarialCollab: a room listed in policy data is created by a member
// only, the same user name in another tenant is not a member, and no frame the
// CLI would take as a send passes the turn lock.
func TestAdversarialCollab(t *testing.T) {
	env := startMesh(t)
	provider := map[string]string{"type": "openai", "baseUrl": env.Model.URL, "apiKey": "x"}
	room := fmt.Sprintf("room-%d", time.Now().UnixNano())
	data := filepath.Join(env.PolicyDir, "room-"+room+".json")
	reloaded := env.policyReloads(t, "collab-")
	if err := os.WriteFile(data, []byte(fmt.Sprintf(`{"climesh": {"shared_sessions": {%q: {"tenant": "acme", "members": ["olga", "mia"]}}}}`, room)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(data) })
	reloaded() // every collab sidecar has the room before anyone tries to create it
	create := map[string]any{"sessionId": room, "model": "double-1", "provider": provider}

	// nils of acme, not a member, tries to take the room's id before its members:
	// refused, and the id stays free.
	nils := collabTunnel(t, env, "nils", "acme", room)
	if code, msg := errorOf(nils.call("session.create", create)); code != -32012 || msg != "access denied: no such session for this caller" {
		t.Fatalf("nils creates the room: %d %q", code, msg)
	}
	if rec, _ := (&registry.Consul{KV: env.Consul.Client.KV(), Prefix: "climesh/sessions/"}).Get(t.Context(), room); rec != nil {
		t.Fatalf("a refused create left a record: %+v", rec)
	}
	// mia of globex has a member's name, not a member's identity.
	otherMia := collabTunnel(t, env, "mia", "globex", room)
	if code, _ := errorOf(otherMia.call("session.create", create)); code != -32012 {
		t.Fatal("mia of globex created acme's room")
	}
	olga := collabTunnel(t, env, "olga", "acme", room)
	if got := olga.call("session.create", create); got["error"] != nil {
		t.Fatalf("olga, a member, creates the room: %v", got)
	}
	mia := collabTunnel(t, env, "mia", "acme", room)
	if got := mia.call("session.resume", map[string]any{"sessionId": room, "provider": provider}); got["error"] != nil {
		t.Fatalf("mia, a member, joins: %v", got)
	}
	if code, _ := errorOf(otherMia.call("session.resume", map[string]any{"sessionId": room, "provider": provider})); code != -32012 {
		t.Fatal("mia of globex joined acme's room")
	}

	// olga's long turn holds the lock; mia's sends in every dress are refused or
	// dropped, and the CLI starts no turn for them.
	requests := env.Model.Requests()
	olga.next++
	long := "slow 3000 for olga in " + room
	olga.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"session.send","params":{"sessionId":%q,"prompt":%q}}`, olga.next, room, long))
	// The turn runs (holding the lock) once the model has its prompt; a fixed
	// sleep let a loaded machine start it after mia's sends.
	running, stop := context.WithTimeout(t.Context(), 15*time.Second)
	defer stop()
	if err := harness.Poll(running, 20*time.Millisecond, func() error {
		if _, ok := env.Model.Arrived(long); !ok {
			return errors.New("olga's turn has not reached the model")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	q := strconv.Quote(room)
	for name, frame := range map[string]string{
		"send":                 `{"jsonrpc":"2.0","id":1,"method":"session.send","params":{"sessionId":` + q + `,"prompt":"mia barges in"}}`,
		"send as notification": `{"jsonrpc":"2.0","method":"session.send","params":{"sessionId":` + q + `,"prompt":"mia barges in"}}`,
		"send, method variant": `{"jsonrpc":"2.0","id":1,"Method":"x","method":"session.send","params":{"sessionId":` + q + `,"prompt":"mia barges in"}}`,
		"send, duplicate id":   `{"jsonrpc":"2.0","id":1,"id":2,"method":"session.send","params":{"sessionId":` + q + `,"prompt":"mia barges in"}}`,
	} {
		if got := mia.raw(frame); strings.Contains(got, `"id":1,"result"`) {
			t.Errorf("%s passed the lock: %s", name, got)
		}
		if strings.HasPrefix(mia.raw(`{"jsonrpc":"2.0","id":3,"method":"ping","params":{}}`), "read error") {
			mia = collabTunnel(t, env, "mia", "acme", room)
		}
	}
	// Wait for olga's turn to end, then count what the model was asked for.
	if reply := waitIdle(t, olga, room); !strings.Contains(reply, "slow 3000") {
		t.Fatalf("olga's turn: %q", reply)
	}
	b, _ := os.ReadFile(filepath.Join(env.CollabHome, "session-state", room, "events.jsonl"))
	if strings.Contains(string(b), "mia barges in") {
		t.Fatal("a send of mia's ran while olga's turn held the lock")
	}
	if n := env.Model.Requests() - requests; n > 3 {
		t.Fatalf("the model was asked %d times for one turn", n)
	}
}

// waitIdle reads until session s's turn ends and returns its last assistant text.
func waitIdle(t *testing.T, c *rpcTunnel, s string) string {
	t.Helper()
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		raw := c.recv()
		var m struct {
			Method string
			Params struct {
				SessionID string `json:"sessionId"`
				Event     struct {
					Type string
					Data struct{ Content string }
				}
			}
		}
		json.Unmarshal([]byte(raw), &m)
		if m.Method != "session.event" || m.Params.SessionID != s {
			continue
		}
		switch m.Params.Event.Type {
		case "assistant.message":
			if m.Params.Event.Data.Content != "" {
				last = m.Params.Event.Data.Content
			}
		case "session.idle", "session.error":
			return last
		}
	}
	t.Fatalf("no end of turn on %s", s)
	return ""
}

// policyReloads returns a function that waits until every running sidecar whose
// id starts with prefix decides with the policy now in the mesh's policy
// directory (its climesh_policy_serving_info fingerprint).
func (env *meshEnv) policyReloads(t *testing.T, prefix string) func() {
	t.Helper()
	return func() {
		t.Helper()
		fp, err := policy.Fingerprint(env.PolicyDir)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`climesh_policy_serving_info{fingerprint=%q} 1`, fp[:12])
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = harness.Poll(ctx, 50*time.Millisecond, func() error {
			for id, sc := range env.Sidecars {
				if strings.HasPrefix(id, prefix) && !sc.Proc.Exited() && !strings.Contains(sidecarMetrics(t, sc.AdminPort), want) {
					return fmt.Errorf("%s does not decide with the policy in %s yet", id, env.PolicyDir)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
