package harness

import (
	"fmt"

	copilot "github.com/github/copilot-sdk/go"
)

// AssistantText is the text of a turn's last event (what SendAndWait returns),
// which must be an assistant message.
func AssistantText(ev *copilot.SessionEvent) (string, error) {
	if ev == nil {
		return "", fmt.Errorf("no assistant message before session.idle")
	}
	d, ok := ev.Data.(*copilot.AssistantMessageData)
	if !ok {
		return "", fmt.Errorf("last event is %T, want an assistant message", ev.Data)
	}
	return d.Content, nil
}
