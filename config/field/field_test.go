package field

import (
	"errors"
	"testing"
)

func TestErrors(t *testing.T) {
	var es Errors
	if es.Err() != nil {
		t.Fatal("no findings, an error")
	}
	es.Add("--mode", "both", ErrMalformed, "want shared, collab or isolated")
	es.Add("COPILOT_CONNECTION_TOKEN", "", ErrRequired, "needed with --cli-address")
	err := es.Err()
	if got, want := err.Error(), "--mode=\"both\": want shared, collab or isolated\nCOPILOT_CONNECTION_TOKEN: needed with --cli-address"; got != want {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if !errors.Is(err, ErrMalformed) || !errors.Is(err, ErrRequired) || errors.Is(err, ErrConflict) {
		t.Fatal("kinds not matched through the join")
	}
	var fe *Error
	if !errors.As(err, &fe) || fe.Name != "--mode" {
		t.Fatalf("as: %+v", fe)
	}
}
