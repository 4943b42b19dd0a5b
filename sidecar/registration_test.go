package sidecar

import (
	"errors"
	"testing"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/climesh/climesh/protocol"
)

// backendLog records what Registration asks of Consul; Update fails while lost.
type backendLog struct {
	lost       bool
	registered []*api.AgentService
	statuses   []string
}

func (b *backendLog) Register(svc *api.AgentService, status, _ string) error {
	b.registered, b.statuses, b.lost = append(b.registered, svc), append(b.statuses, status), false
	return nil
}

func (b *backendLog) Update(status, _ string) error {
	if b.lost {
		return errors.New(`Unexpected response code: 500 (CheckID "climesh-cli:cli-a" does not have associated TTL)`)
	}
	b.statuses = append(b.statuses, status)
	return nil
}

func (b *backendLog) Deregister() error { return nil }

// A Consul that lost the instance (restarted without its state) gets it back
// on the next ping, as it is now: its status, and draining if it drains.
func TestRegistrationComesBackAfterConsulLosesIt(t *testing.T) {
	b := &backendLog{}
	r := &Registration{Backend: b, Log: zap.NewNop(), Pool: "copilot", InstanceID: "cli-a", Address: "127.0.0.1", Port: 7001}
	if err := r.Register(); err != nil {
		t.Fatal(err)
	}
	r.Report(true, "pong")
	if len(b.registered) != 1 {
		t.Fatalf("registered %d times while Consul knew the check", len(b.registered))
	}
	if err := r.SetDraining(); err != nil {
		t.Fatal(err)
	}
	b.lost = true
	r.Report(true, "pong")
	if len(b.registered) != 3 {
		t.Fatalf("a lost check was not registered again (%d registrations)", len(b.registered))
	}
	last := b.registered[2]
	if last.ID != "cli-a" || last.Meta[protocol.ConsulMetaDraining] != "true" || b.statuses[len(b.statuses)-1] != api.HealthPassing {
		t.Fatalf("registered again as %+v with %s; want cli-a, still draining, passing", last, b.statuses[len(b.statuses)-1])
	}
	// Once deregistered (the drain is over), a late health result brings
	// nothing back.
	if err := r.Deregister(); err != nil {
		t.Fatal(err)
	}
	b.lost = true
	r.Report(true, "pong")
	if len(b.registered) != 3 {
		t.Fatal("a deregistered instance was registered again")
	}
}
