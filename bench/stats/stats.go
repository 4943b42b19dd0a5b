// Package stats holds what every benchmark under bench/ reports with.
package stats

import (
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
