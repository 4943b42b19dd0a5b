// Package stats holds what every benchmark under bench/ reports with.
package stats

import (
	"fmt"
	"slices"
	"time"
)

// Percentile is the p-th percentile (nearest rank) of samples; it sorts them.
// Zero when there are none.
func Percentile(samples []time.Duration, p int) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	slices.Sort(samples)
	i := (len(samples)*p+99)/100 - 1
	return samples[max(0, min(i, len(samples)-1))]
}

// Tail is the p-th percentile of samples under the label a table may honestly
// print for it. With the nearest rank, pX of n samples is the maximum unless
// ceil(n·X/100) < n — p99 needs n >= 100, p90 n >= 10 — and a "p99" that is the
// largest of 20 samples names a tail the run never measured. So the label is
// "pX" (and the value the percentile) when the rank falls below the maximum,
// otherwise "max" and the maximum. It sorts samples; no samples give "max", 0.
func Tail(samples []time.Duration, p int) (label string, v time.Duration) {
	n := len(samples)
	if (n*p+99)/100 < n {
		return fmt.Sprintf("p%d", p), Percentile(samples, p)
	}
	return "max", Percentile(samples, 100)
}

// TailCell formats Tail for a column headed "pX (or max)": the value alone when
// the samples support pX, "max <value>" when they do not.
func TailCell(samples []time.Duration, p int, format func(time.Duration) string) string {
	label, v := Tail(samples, p)
	if label == "max" {
		return "max " + format(v)
	}
	return format(v)
}
