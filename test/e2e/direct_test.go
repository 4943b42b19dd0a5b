package e2e

import (
	"strings"
	"testing"
	"time"

	copilot "github.com/github/copilot-sdk/go"

	"github.com/climesh/climesh/test/harness"
	"github.com/climesh/climesh/test/modeldouble"
)

// TestSDKDirectToCLI is the baseline the mesh must match: the Go SDK dialling a
// real CLI, whose model is the double.
func TestSDKDirectToCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	dir := t.TempDir()
	model, err := modeldouble.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer model.Close()
	cli, err := harness.StartCLI(t.Context(), dir, "cli-direct", "tok-direct")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { dumpOnFailure(t, cli.Proc); cli.Close() }()

	client := copilot.NewClient(&copilot.ClientOptions{Connection: copilot.URIConnection{URL: cli.Addr, ConnectionToken: cli.Token}})
	if err := client.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer client.Stop()
	provider := &copilot.ProviderConfig{Type: "openai", BaseURL: model.URL, APIKey: "double"}
	s, err := client.CreateSession(t.Context(), &copilot.SessionConfig{Model: "double-1", Provider: provider, OnPermissionRequest: copilot.PermissionHandler.ApproveAll})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	ev, err := s.SendAndWait(ctx, copilot.MessageOptions{Prompt: "hello there"})
	if err != nil {
		t.Fatal(err)
	}
	d, ok := ev.Data.(*copilot.AssistantMessageData)
	if !ok || !strings.Contains(d.Content, "echo: hello there") {
		t.Fatalf("answer %#v", ev.Data)
	}
	_ = time.Second
}
