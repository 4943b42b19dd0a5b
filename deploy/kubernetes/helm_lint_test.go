package kubernetes_test

import (
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
)

// TestChartLint runs Helm's own linter (`helm lint --strict`): Chart.yaml, values
// against the schema, every template rendered and parsed, deprecated APIs for the
// Kubernetes the chart targets. A warning or an error fails; notes are logged.
func TestChartLint(t *testing.T) {
	kv, err := chartutil.ParseKubeVersion(kubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	for name, values := range map[string]map[string]any{"defaults": nil, "shared-storage": sharedStorage} {
		t.Run(name, func(t *testing.T) {
			res := lint.AllWithKubeVersion(chartDir, values, "climesh", kv)
			for _, m := range res.Messages {
				if m.Severity > support.InfoSev {
					t.Errorf("helm lint: %s", m)
				} else {
					t.Logf("helm lint: %s", m)
				}
			}
		})
	}
}
