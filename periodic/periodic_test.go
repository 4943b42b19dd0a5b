package periodic

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestEveryStopsWhenToldOrCancelled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start, calls := time.Now(), 0
		Every(t.Context(), time.Second, func() bool { calls++; return calls < 3 })
		if calls != 3 || time.Since(start) != 3*time.Second {
			t.Fatalf("%d calls in %v, want 3 in 3s (the first a period after the start)", calls, time.Since(start))
		}
		ctx, cancel := context.WithTimeout(t.Context(), 2500*time.Millisecond)
		defer cancel()
		calls = 0
		Every(ctx, time.Second, func() bool { calls++; return true })
		if calls != 2 {
			t.Fatalf("%d calls before a cancel at 2.5s, want 2", calls)
		}
	})
}

func TestSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		if !Sleep(t.Context(), time.Minute) {
			t.Fatal("Sleep ended early without a cancel")
		}
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if Sleep(ctx, time.Minute) {
			t.Fatal("Sleep on a cancelled context reported a full wait")
		}
	})
}
