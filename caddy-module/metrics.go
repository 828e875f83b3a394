package cerberus

// The module's Prometheus metrics, shared by every handler instance and registered
// in each config's registry (a config reload gets a new registry; the counts go on).

import (
	"errors"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

var (
	failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "http_cerberus",
		Name:      "failures_total",
		Help:      "Requests for which the cerberus daemon gave no usable answer, by reason.",
	}, []string{"reason"})
	verdicts = newVerdictCounter()
)

// verdictCounter is caddy_http_cerberus_verdicts_total{remediation}: every request
// adds one, so each remediation's count is striped (stripes.go) rather than one
// prometheus.Counter that all cores write.
type verdictCounter struct {
	desc  *prometheus.Desc
	known [Other + 1]stripes
	// remediations past Other: the decoders refuse them, so this stays empty unless
	// a later protocol adds one before this file knows its name.
	mu      sync.Mutex
	unknown map[Remediation]uint64
}

func newVerdictCounter() *verdictCounter {
	return &verdictCounter{
		desc: prometheus.NewDesc("caddy_http_cerberus_verdicts_total",
			"Answers of the cerberus daemon, by remediation.", []string{"remediation"}, nil),
		unknown: map[Remediation]uint64{},
	}
}

// inc counts one answer of remediation r; hint picks the stripe (hintOf).
func (v *verdictCounter) inc(r Remediation, hint uint32) {
	if r <= Other {
		v.known[r].add(hint, 1)
		return
	}
	v.mu.Lock()
	v.unknown[r]++
	v.mu.Unlock()
}

// count is the number of answers of remediation r so far.
func (v *verdictCounter) count(r Remediation) uint64 {
	if r <= Other {
		return uint64(v.known[r].sum())
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.unknown[r]
}

// Describe implements prometheus.Collector.
func (v *verdictCounter) Describe(ch chan<- *prometheus.Desc) { ch <- v.desc }

// Collect implements prometheus.Collector: every known remediation, zero or not, and
// any other seen.
func (v *verdictCounter) Collect(ch chan<- prometheus.Metric) {
	for r := range v.known {
		ch <- prometheus.MustNewConstMetric(v.desc, prometheus.CounterValue,
			float64(v.known[r].sum()), Remediation(r).String())
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	for r, n := range v.unknown {
		ch <- prometheus.MustNewConstMetric(v.desc, prometheus.CounterValue, float64(n), r.String())
	}
}

func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{failures, verdicts, appsecOutcomes} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return fmt.Errorf("cerberus: registering metrics: %w", err)
			}
		}
	}
	return nil
}
