package jsonrpc

import (
	"strings"
	"testing"
)

// benchFrames are the frames the sidecar and climesh-connect read most: a
// client's ping and prompt, a session.create, the CLI's streamed deltas and its
// answers.
var benchFrames = []struct{ name, body string }{
	{"ping", `{"jsonrpc":"2.0","id":12,"method":"ping","params":{"message":"x"}}`},
	{"send", `{"jsonrpc":"2.0","id":41,"method":"session.send","params":{"sessionId":"5c1d6f0e-7a57-4b8e-9d0f-2b7f4e3c9a10","prompt":"` +
		strings.Repeat(`Summarise the failing tests in session/jsonrpc and propose a fix.\n`, 3) + `","mode":"enqueue"}}`},
	{"create", `{"jsonrpc":"2.0","id":"req-7","method":"session.create","params":{"model":"gpt-5","streaming":true,` +
		`"availableTools":["bash","view","edit","grep"],"tools":[{"name":"lookup","description":"Look a ticket up","parameters":{"type":"object","properties":{"id":{"type":"string"}},"required":["id"]}}],` +
		`"provider":{"type":"openai","baseUrl":"https://llm.internal.example/v1","apiKey":"sk-redacted"},"workingDirectory":"/workspace"}}`},
	{"event", `{"jsonrpc":"2.0","method":"session.event","params":{"sessionId":"5c1d6f0e-7a57-4b8e-9d0f-2b7f4e3c9a10","event":{"id":"e-1042","timestamp":"2025-06-01T12:00:00.123Z","parentId":"e-1041","ephemeral":true,` +
		`"type":"assistant.message_delta","data":{"messageId":"m-77","deltaContent":"The failing test reads the id as a float"}}}}`},
	{"result", `{"jsonrpc":"2.0","id":41,"result":{"messageId":"m-77","sessionId":"5c1d6f0e-7a57-4b8e-9d0f-2b7f4e3c9a10"}}`},
}

func BenchmarkParse(b *testing.B)        { benchParse(b, Parse) }
func BenchmarkParseTrusted(b *testing.B) { benchParse(b, ParseTrusted) }

func benchParse(b *testing.B, parse func([]byte) (Message, error)) {
	for _, f := range benchFrames {
		body := []byte(f.body)
		if _, err := parse(body); err != nil {
			b.Fatalf("%s: %v", f.name, err)
		}
		b.Run(f.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := parse(body); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
