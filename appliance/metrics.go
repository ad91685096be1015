package appliance

import (
	"context"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics exports every disk's status as Prometheus metrics, read at
// scrape time (GET /metrics on the API socket), so nothing is counted
// twice and the data path pays nothing for them.
type metrics struct{ d *Daemon }

var (
	metricLabels     = []string{"disk", "role"}
	descJournalHead  = prometheus.NewDesc("tandem_journal_head", "Newest sequence number of the disk's journal.", metricLabels, nil)
	descJournalBytes = prometheus.NewDesc("tandem_journal_bytes", "Unreleased bytes of the disk's journal.", metricLabels, nil)
	descLagSeconds   = prometheus.NewDesc("tandem_replication_lag_seconds", "Age of the oldest record the secondary does not hold.", metricLabels, nil)
	descLagBytes     = prometheus.NewDesc("tandem_replication_lag_bytes", "Bytes the secondary does not hold.", metricLabels, nil)
	descRawBytes     = prometheus.NewDesc("tandem_replication_data_bytes_total", "Record and region data shipped to the secondary.", metricLabels, nil)
	descWireBytes    = prometheus.NewDesc("tandem_replication_wire_bytes_total", "Bytes on the wire to the secondary, after compression.", metricLabels, nil)
	descRPOAlert     = prometheus.NewDesc("tandem_replication_rpo_alert", "1 while the lag passes the disk's --rpo-alert.", metricLabels, nil)
	descConnected    = prometheus.NewDesc("tandem_replication_connected", "1 while the link to the secondary is up.", metricLabels, nil)
	descRead         = prometheus.NewDesc("tandem_disk_read_bytes_total", "Bytes read from the disk through NBD and FUSE.", metricLabels, nil)
	descWritten      = prometheus.NewDesc("tandem_disk_written_bytes_total", "Bytes written to the disk through NBD and FUSE.", metricLabels, nil)
)

var _ prometheus.Collector = metrics{}

func (m metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descJournalHead, descJournalBytes, descLagSeconds, descLagBytes, descRawBytes, descWireBytes, descRPOAlert, descConnected, descRead, descWritten} {
		ch <- d
	}
}

func (m metrics) Collect(ch chan<- prometheus.Metric) {
	st, err := m.d.Status(context.Background(), "")
	if err != nil {
		return
	}
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, s := range st {
		l := []string{s.Name, s.Role}
		ch <- prometheus.MustNewConstMetric(descJournalHead, prometheus.GaugeValue, float64(s.NewestPoint), l...)
		ch <- prometheus.MustNewConstMetric(descJournalBytes, prometheus.GaugeValue, float64(s.JournalBytes), l...)
		if od, ok := m.d.lookup(s.Name); ok {
			ch <- prometheus.MustNewConstMetric(descRead, prometheus.CounterValue, float64(od.meter.read.Load()), l...)
			ch <- prometheus.MustNewConstMetric(descWritten, prometheus.CounterValue, float64(od.meter.written.Load()), l...)
		}
		if s.Role != RolePrimary || s.Peer == "" {
			continue
		}
		ch <- prometheus.MustNewConstMetric(descLagSeconds, prometheus.GaugeValue, s.LagSeconds, l...)
		ch <- prometheus.MustNewConstMetric(descLagBytes, prometheus.GaugeValue, float64(s.LagBytes), l...)
		ch <- prometheus.MustNewConstMetric(descRawBytes, prometheus.CounterValue, float64(s.RawBytes), l...)
		ch <- prometheus.MustNewConstMetric(descWireBytes, prometheus.CounterValue, float64(s.WireBytes), l...)
		ch <- prometheus.MustNewConstMetric(descRPOAlert, prometheus.GaugeValue, b2f(s.RPOAlert), l...)
		ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, b2f(s.Connected), l...)
	}
}

// metricsHandler serves the daemon's metrics and the Go runtime's from a
// registry of its own (no global registry).
func (d *Daemon) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics{d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}
