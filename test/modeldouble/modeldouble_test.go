package modeldouble

import (
	"bytes"
	"encoding/json"
	"net/http"
	"testing"
	"time"
)

func user(text string) chatRequest {
	c, _ := json.Marshal(text)
	return chatRequest{Messages: []Message{{Role: "user", Content: c}}}
}

func TestSlowRepliesParseWhatTestsSend(t *testing.T) {
	cases := map[string]time.Duration{
		"slow 300":              300 * time.Millisecond,
		"slow 5000 for dur-00":  5 * time.Second,
		"slow 20000 for kil-03": 20 * time.Second,
		"slow":                  0,
		"slow down":             0,
		"slow -5":               0,
		"not slow 300":          0,
	}
	for prompt, want := range cases {
		if got := decide(user(prompt)).delay; got != want {
			t.Errorf("%q: delay %v, want %v", prompt, got, want)
		}
	}
}

func TestSlowReplyIsSlowOverHTTP(t *testing.T) {
	s, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	body, _ := json.Marshal(map[string]any{"model": "double-1", "messages": []map[string]string{{"role": "user", "content": "slow 250 for alice"}}})
	start := time.Now()
	resp, err := http.Post(s.URL+"/chat/completions", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if took := time.Since(start); took < 250*time.Millisecond || resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d after %v, want 200 after at least 250ms", resp.StatusCode, took)
	}
	// The turn reached the model when the request arrived, not when it was answered.
	if at, ok := s.Arrived("slow 250 for alice"); !ok || at.Before(start) || at.Sub(start) > 200*time.Millisecond {
		t.Fatalf("Arrived = %v %v, want the arrival, just after %v", at, ok, start)
	}
	if at, ok := s.Answered("slow 250 for alice"); !ok || at.Sub(start) < 250*time.Millisecond {
		t.Fatalf("Answered = %v %v, want after the delay of 250ms from %v", at, ok, start)
	}
	if _, ok := s.Arrived("slow 250"); ok {
		t.Fatal("Arrived of a prompt never sent")
	}
}
