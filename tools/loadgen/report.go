package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
)

// Targets from the issue: the daemon must reach 90% of the reference's
// lookups per CPU-second, with a p99 no worse than 1.2 times the
// reference's.
const (
	targetCPURatio = 0.90
	targetP99Ratio = 1.2
)

type report struct {
	Duration string   `json:"duration"`
	Warmup   string   `json:"warmup"`
	Rounds   int      `json:"rounds"`
	CPUs     int      `json:"cpus"`
	Keys     []string `json:"keys"`
	Levels   []level  `json:"levels"`
}

// level is one concurrency: every run, the per-target medians and the
// median of the per-round daemon/reference ratios (each round pairs runs
// made moments apart, so the ratio of a pair is steadier than a ratio of
// medians).
type level struct {
	Conns     int           `json:"conns"`
	Reference summary       `json:"reference"`
	Daemon    summary       `json:"daemon"`
	CPURatio  float64       `json:"cpu_efficiency_ratio"`
	P99Ratio  float64       `json:"p99_ratio"`
	Met       bool          `json:"target_met"`
	Runs      []measurement `json:"runs"`
}

// measurement is one run against one target. Latencies in microseconds,
// CPU in seconds. LookupsPerCPUs is 0 if the server used no measurable CPU.
type measurement struct {
	Round          int     `json:"round"`
	Target         string  `json:"target"`
	Lookups        uint64  `json:"lookups"`
	Seconds        float64 `json:"seconds"`
	LookupsPerSec  float64 `json:"lookups_per_sec"`
	P50us          float64 `json:"p50_us"`
	P99us          float64 `json:"p99_us"`
	ServerCPUs     float64 `json:"server_cpu_s"`
	ClientCPUs     float64 `json:"client_cpu_s"`
	LookupsPerCPUs float64 `json:"lookups_per_cpu_s"`
}

// summary holds the medians over rounds of one target's measurements.
type summary struct {
	LookupsPerSec  float64 `json:"lookups_per_sec"`
	P50us          float64 `json:"p50_us"`
	P99us          float64 `json:"p99_us"`
	ServerCPUs     float64 `json:"server_cpu_s"`
	ClientCPUs     float64 `json:"client_cpu_s"`
	LookupsPerCPUs float64 `json:"lookups_per_cpu_s"`
}

func newMeasurement(round int, name string, r *loadResult) measurement {
	m := measurement{
		Round:      round,
		Target:     name,
		Lookups:    r.Lookups,
		Seconds:    r.Elapsed.Seconds(),
		P50us:      float64(r.Hist.percentile(0.50).Nanoseconds()) / 1e3,
		P99us:      float64(r.Hist.percentile(0.99).Nanoseconds()) / 1e3,
		ServerCPUs: r.ServerCPU.Seconds(),
		ClientCPUs: r.ClientCPU.Seconds(),
	}
	if m.Seconds > 0 {
		m.LookupsPerSec = float64(r.Lookups) / m.Seconds
	}
	if m.ServerCPUs > 0 {
		m.LookupsPerCPUs = float64(r.Lookups) / m.ServerCPUs
	}
	return m
}

func (lv *level) summarise() {
	var cpuRatios, p99Ratios []float64
	byTarget := map[string][]measurement{}
	for _, m := range lv.Runs {
		byTarget[m.Target] = append(byTarget[m.Target], m)
	}
	ref, dmn := byTarget["reference"], byTarget["daemon"]
	for i := range min(len(ref), len(dmn)) {
		if ref[i].LookupsPerCPUs > 0 {
			cpuRatios = append(cpuRatios, dmn[i].LookupsPerCPUs/ref[i].LookupsPerCPUs)
		}
		if ref[i].P99us > 0 {
			p99Ratios = append(p99Ratios, dmn[i].P99us/ref[i].P99us)
		}
	}
	lv.Reference, lv.Daemon = summarize(ref), summarize(dmn)
	lv.CPURatio, lv.P99Ratio = median(cpuRatios), median(p99Ratios)
	lv.Met = lv.CPURatio >= targetCPURatio && lv.P99Ratio <= targetP99Ratio
}

func summarize(ms []measurement) summary {
	col := func(f func(measurement) float64) float64 {
		xs := make([]float64, len(ms))
		for i, m := range ms {
			xs[i] = f(m)
		}
		return median(xs)
	}
	return summary{
		LookupsPerSec:  col(func(m measurement) float64 { return m.LookupsPerSec }),
		P50us:          col(func(m measurement) float64 { return m.P50us }),
		P99us:          col(func(m measurement) float64 { return m.P99us }),
		ServerCPUs:     col(func(m measurement) float64 { return m.ServerCPUs }),
		ClientCPUs:     col(func(m measurement) float64 { return m.ClientCPUs }),
		LookupsPerCPUs: col(func(m measurement) float64 { return m.LookupsPerCPUs }),
	}
}

func (r *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "MISSED"
}

func (r *report) header() string {
	return fmt.Sprintf("%s measured after %s warmup, median of %d rounds, %d CPUs", r.Duration, r.Warmup, r.Rounds, r.CPUs)
}

// writeText prints an aligned table for the terminal.
func (r *report) writeText(w io.Writer) {
	fmt.Fprintln(w, r.header())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "conns\ttarget\tlookups/s\tp50 µs\tp99 µs\tserver CPU s\tclient CPU s\tlookups/CPU-s\t")
	for _, lv := range r.Levels {
		for _, t := range []struct {
			name string
			s    summary
		}{{"reference", lv.Reference}, {"daemon", lv.Daemon}} {
			fmt.Fprintf(tw, "%d\t%s\t%.0f\t%.1f\t%.1f\t%.2f\t%.2f\t%.0f\t\n",
				lv.Conns, t.name, t.s.LookupsPerSec, t.s.P50us, t.s.P99us, t.s.ServerCPUs, t.s.ClientCPUs, t.s.LookupsPerCPUs)
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "conns\tCPU-efficiency ratio (>= %.2f)\tp99 ratio (<= %.1f)\ttarget\t\n", targetCPURatio, targetP99Ratio)
	for _, lv := range r.Levels {
		fmt.Fprintf(tw, "%d\t%.3f\t%.3f\t%s\t\n", lv.Conns, lv.CPURatio, lv.P99Ratio, verdict(lv.Met))
	}
	tw.Flush()
}

// writeMarkdown prints the same figures as a Markdown table for the README.
func (r *report) writeMarkdown(w io.Writer) {
	fmt.Fprintf(w, "%s.\n\n", r.header())
	fmt.Fprintln(w, "| conns | server | lookups/s | p50 µs | p99 µs | server CPU s | lookups/CPU-s | daemon/reference lookups/CPU-s (≥ 0.90) | daemon/reference p99 (≤ 1.2) |")
	fmt.Fprintln(w, "|---:|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, lv := range r.Levels {
		fmt.Fprintf(w, "| %d | reference | %.0f | %.1f | %.1f | %.2f | %.0f | | |\n",
			lv.Conns, lv.Reference.LookupsPerSec, lv.Reference.P50us, lv.Reference.P99us, lv.Reference.ServerCPUs, lv.Reference.LookupsPerCPUs)
		fmt.Fprintf(w, "| %d | daemon | %.0f | %.1f | %.1f | %.2f | %.0f | %.3f (%s) | %.3f (%s) |\n",
			lv.Conns, lv.Daemon.LookupsPerSec, lv.Daemon.P50us, lv.Daemon.P99us, lv.Daemon.ServerCPUs, lv.Daemon.LookupsPerCPUs,
			lv.CPURatio, verdict(lv.CPURatio >= targetCPURatio), lv.P99Ratio, verdict(lv.P99Ratio <= targetP99Ratio))
	}
}
