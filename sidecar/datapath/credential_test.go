package datapath

import "testing"

func TestCredentialsAcceptEveryListedValue(t *testing.T) {
	c := NewCredentials("old-credential-0123456789")
	if !c.Accepts("old-credential-0123456789") || c.Accepts("new-credential-0123456789") || c.Accepts("") {
		t.Fatal("one credential: want only it accepted")
	}
	c.Set([]string{"old-credential-0123456789", "new-credential-0123456789"})
	if !c.Accepts("old-credential-0123456789") || !c.Accepts("new-credential-0123456789") {
		t.Fatal("while rotating: want both accepted")
	}
	c.Set([]string{"new-credential-0123456789"})
	if c.Accepts("old-credential-0123456789") || !c.Accepts("new-credential-0123456789") || c.Accepts("new-credential-012345678") {
		t.Fatal("after the rotation: want only the new one, exactly")
	}
}
