package stats

import (
	"flag"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var s []time.Duration
	for i := 100; i >= 1; i-- {
		s = append(s, time.Duration(i))
	}
	for p, want := range map[int]time.Duration{50: 50, 99: 99, 100: 100, 1: 1} {
		if got := Percentile(s, p); got != want {
			t.Errorf("p%d = %d, want %d", p, got, want)
		}
	}
	if Percentile(nil, 99) != 0 {
		t.Error("empty samples")
	}
}

// samples is 1..n in descending order (Tail must sort).
func samples(n int) []time.Duration {
	s := make([]time.Duration, 0, n)
	for i := n; i >= 1; i-- {
		s = append(s, time.Duration(i))
	}
	return s
}

func TestTail(t *testing.T) {
	for name, tc := range map[string]struct {
		n, p      int
		wantLabel string
		want      time.Duration
	}{
		"p99 of 100 is the 99th":   {n: 100, p: 99, wantLabel: "p99", want: 99},
		"p99 of 99 is the max":     {n: 99, p: 99, wantLabel: "max", want: 99},
		"p99 of 20 is the max":     {n: 20, p: 99, wantLabel: "max", want: 20},
		"p99 of 1000 is the 990th": {n: 1000, p: 99, wantLabel: "p99", want: 990},
		"p90 of 10 is the 9th":     {n: 10, p: 90, wantLabel: "p90", want: 9},
		"p90 of 9 is the max":      {n: 9, p: 90, wantLabel: "max", want: 9},
		"p50 of 2 is the 1st":      {n: 2, p: 50, wantLabel: "p50", want: 1},
		"p50 of 1 is the max":      {n: 1, p: 50, wantLabel: "max", want: 1},
		"p100 is always the max":   {n: 1000, p: 100, wantLabel: "max", want: 1000},
		"no samples: max, zero":    {n: 0, p: 99, wantLabel: "max", want: 0},
		"p99 of 101 is the 100th":  {n: 101, p: 99, wantLabel: "p99", want: 100},
	} {
		t.Run(name, func(t *testing.T) {
			label, v := Tail(samples(tc.n), tc.p)
			if label != tc.wantLabel || v != tc.want {
				t.Errorf("Tail(%d samples, %d) = %q %d, want %q %d", tc.n, tc.p, label, v, tc.wantLabel, tc.want)
			}
		})
	}
}

func TestTailCell(t *testing.T) {
	f := func(d time.Duration) string { return d.String() }
	if got := TailCell(samples(20), 99, f); got != "max 20ns" {
		t.Errorf("20 samples: %q", got)
	}
	if got := TailCell(samples(100), 99, f); got != "99ns" {
		t.Errorf("100 samples: %q", got)
	}
}

func TestCommand(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Int("turns", 40, "")
	fs.String("pool", "", "")
	fs.Duration("duration", 3*time.Second, "")
	if err := fs.Parse([]string{"-pool", ", lb: {min_ring_size: 1024}", "-turns", "7"}); err != nil {
		t.Fatal(err)
	}
	want := `go run ./bench/x -duration=3s -pool=', lb: {min_ring_size: 1024}' -turns=7`
	if got := command("./bench/x", fs); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}
