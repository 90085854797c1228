// Program loadgen drives an OTLP/gRPC metrics receiver the way ferrule-loadtest fleet drives
// the aggregator: N workers ("agents"), each on its own gRPC connection with mutual TLS,
// each sending one ExportMetricsServiceRequest of B gauge points every B/rate seconds over
// S sensors (one gauge metric per sensor), values a random walk per sensor (not one
// repeated block). Every request carries resource attributes ferrule.agent and
// ferrule.seq, so that kafkacount can tell which acknowledged requests reached Kafka.
//
// The schedule is open-loop: request i of a worker is due at start+i*interval; latency is
// measured from when the request was due (free of coordinated omission) and, separately,
// from when it was written, for the requests due in the measured period; throughput counts
// the points whose answer arrived in it. A worker that falls behind sends at once, never
// skips.
// With the collector's batch processor and sending queue on, the answer means "accepted
// into memory", not "committed to Kafka": the latency is that of the answer only.
//
// Writes a JSON report (-out) and the list of acknowledged requests (-acked: one line
// "agent seq points" per request answered OK).
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/pmetric"
	"go.opentelemetry.io/collector/pdata/pmetric/pmetricotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

type acked struct {
	agent, seq, points int
}

type workerResult struct {
	acked                []acked
	okPoints, failPoints int64
	okReqs, failReqs     int64
	measOK, measFail     int64 // points of requests due inside the measured window
	doneOK               int64 // points acknowledged (answer arrived) inside it
	latDue, latSend      []time.Duration
	errs                 map[string]int
}

func main() {
	endpoint := flag.String("endpoint", "127.0.0.1:4317", "OTLP gRPC endpoint host:port")
	serverName := flag.String("server-name", "localhost", "TLS server name")
	caFile := flag.String("ca", "", "CA certificate (PEM) the server's chains to")
	certFile := flag.String("cert", "", "client certificate (PEM)")
	keyFile := flag.String("key", "", "client key (PEM)")
	plaintext := flag.Bool("plaintext", false, "no TLS")
	workers := flag.Int("workers", 200, "workers (agents), one gRPC connection each")
	rate := flag.Float64("rate", 2000, "points per second per worker")
	batch := flag.Int("batch", 100, "points per request")
	sensors := flag.Int("sensors", 7, "sensors (gauge metrics) per worker; a request's points are spread over them")
	warmup := flag.Duration("warmup", 5*time.Second, "warm-up (requests due then are sent but not measured)")
	duration := flag.Duration("duration", 20*time.Second, "measured period")
	timeout := flag.Duration("timeout", 10*time.Second, "per-request deadline")
	out := flag.String("out", "", "JSON report path (default stdout)")
	ackedPath := flag.String("acked", "", "write acknowledged requests here (agent seq points per line)")
	flag.Parse()

	var creds credentials.TransportCredentials
	if !*plaintext {
		pool := x509.NewCertPool()
		pem, err := os.ReadFile(*caFile)
		must(err)
		if !pool.AppendCertsFromPEM(pem) {
			fatal("no certificate in %s", *caFile)
		}
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		must(err)
		creds = credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: *serverName, MinVersion: tls.VersionTLS12})
	}

	interval := time.Duration(float64(time.Second) * float64(*batch) / *rate)
	total := *warmup + *duration
	start := time.Now().Add(200 * time.Millisecond)
	measFrom, measTo := start.Add(*warmup), start.Add(total)

	// The generator's own CPU over the measured period (user+system, this process).
	cpuAt := make(chan float64, 2)
	go func() {
		for _, t := range []time.Time{measFrom, measTo} {
			time.Sleep(time.Until(t))
			cpuAt <- cpuSecs()
		}
	}()

	results := make([]*workerResult, *workers)
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			res := &workerResult{errs: map[string]int{}}
			results[w] = res
			var opts []grpc.DialOption
			if creds != nil {
				opts = append(opts, grpc.WithTransportCredentials(creds))
			} else {
				opts = append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))
			}
			conn, err := grpc.NewClient(*endpoint, opts...)
			if err != nil {
				res.errs["dial: "+err.Error()]++
				return
			}
			defer conn.Close()
			client := pmetricotlp.NewGRPCClient(conn)
			rng := rand.New(rand.NewPCG(uint64(w)+1, 42))
			values := make([]float64, *sensors)
			for s := range values {
				values[s] = 200 + 40*rng.Float64()
			}
			// Stagger workers over one interval so that they do not all fire together.
			offset := time.Duration(rng.Int64N(int64(interval)))
			for seq := 0; ; seq++ {
				due := start.Add(offset + time.Duration(seq)*interval)
				if !due.Before(measTo) {
					break
				}
				if d := time.Until(due); d > 0 {
					time.Sleep(d)
				}
				req := build(w, seq, *batch, *sensors, values, rng, due, interval)
				sent := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), *timeout)
				_, err := client.Export(ctx, req)
				cancel()
				done := time.Now()
				measured := !due.Before(measFrom)
				if err != nil {
					res.failReqs++
					res.failPoints += int64(*batch)
					if measured {
						res.measFail += int64(*batch)
					}
					msg := err.Error()
					if len(msg) > 160 {
						msg = msg[:160]
					}
					res.errs[msg]++
					continue
				}
				res.okReqs++
				res.okPoints += int64(*batch)
				res.acked = append(res.acked, acked{w, seq, *batch})
				if !done.Before(measFrom) && done.Before(measTo) {
					res.doneOK += int64(*batch)
				}
				if measured {
					res.measOK += int64(*batch)
					res.latDue = append(res.latDue, done.Sub(due))
					res.latSend = append(res.latSend, done.Sub(sent))
				}
			}
		}(w)
	}
	wg.Wait()
	end := time.Now()
	genCPU := -(<-cpuAt)
	genCPU += <-cpuAt

	var okP, failP, okR, failR, measOK, measFail, doneOK int64
	var latDue, latSend []time.Duration
	errs := map[string]int{}
	for _, r := range results {
		okP += r.okPoints
		failP += r.failPoints
		okR += r.okReqs
		failR += r.failReqs
		measOK += r.measOK
		measFail += r.measFail
		doneOK += r.doneOK
		latDue = append(latDue, r.latDue...)
		latSend = append(latSend, r.latSend...)
		for k, v := range r.errs {
			errs[k] += v
		}
	}
	if *ackedPath != "" {
		f, err := os.Create(*ackedPath)
		must(err)
		bw := bufio.NewWriter(f)
		for _, r := range results {
			for _, a := range r.acked {
				fmt.Fprintf(bw, "%d %d %d\n", a.agent, a.seq, a.points)
			}
		}
		must(bw.Flush())
		must(f.Close())
	}
	report := map[string]any{
		"workers":                     *workers,
		"rate_per_worker":             *rate,
		"batch_points":                *batch,
		"sensors_per_worker":          *sensors,
		"offered_points_per_sec":      *rate * float64(*workers),
		"warmup_secs":                 warmup.Seconds(),
		"measured_secs":               duration.Seconds(),
		"ran_secs":                    end.Sub(start).Seconds(),
		"acked_points_total":          okP,
		"failed_points_total":         failP,
		"acked_requests_total":        okR,
		"failed_requests_total":       failR,
		"measured_acked_points":       doneOK,
		"measured_acked_per_sec":      float64(doneOK) / duration.Seconds(),
		"due_in_window_acked_points":  measOK,
		"due_in_window_failed_points": measFail,
		"ack_latency_from_due_ms":     percentiles(latDue),
		"ack_latency_from_send_ms":    percentiles(latSend),
		"errors":                      errs,
		"generator_cpu_secs":          genCPU,
		"ack_meaning":                 "the collector's gRPC answer (with batch processor / sending queue on: accepted in memory, not committed to Kafka)",
	}
	b, _ := json.MarshalIndent(report, "", "  ")
	if *out == "" {
		os.Stdout.Write(append(b, '\n'))
	} else {
		must(os.WriteFile(*out, append(b, '\n'), 0o644))
	}
}

// build makes one request: resource (agent, seq), one scope, one gauge per sensor; the
// batch's points spread over the sensors, timestamped evenly over the batching interval.
func build(w, seq, batch, sensors int, values []float64, rng *rand.Rand, due time.Time, interval time.Duration) pmetricotlp.ExportRequest {
	md := pmetric.NewMetrics()
	rm := md.ResourceMetrics().AppendEmpty()
	attrs := rm.Resource().Attributes()
	attrs.PutStr("service.name", "ferrule-sim")
	attrs.PutStr("ferrule.site", fmt.Sprintf("site-%03d", w%50))
	attrs.PutInt("ferrule.agent", int64(w))
	attrs.PutInt("ferrule.seq", int64(seq))
	sm := rm.ScopeMetrics().AppendEmpty()
	sm.Scope().SetName("ferrule-loadgen")
	gauges := make([]pmetric.NumberDataPointSlice, sensors)
	for s := 0; s < sensors; s++ {
		m := sm.Metrics().AppendEmpty()
		m.SetName(fmt.Sprintf("sensor.%d", s))
		m.SetUnit("V")
		gauges[s] = m.SetEmptyGauge().DataPoints()
	}
	t0 := due.Add(-interval)
	for i := 0; i < batch; i++ {
		s := i % sensors
		values[s] += rng.NormFloat64()
		values[s] = math.Max(0, values[s])
		dp := gauges[s].AppendEmpty()
		dp.SetTimestamp(pcommon.NewTimestampFromTime(t0.Add(interval * time.Duration(i) / time.Duration(batch))))
		dp.SetDoubleValue(values[s])
	}
	return pmetricotlp.NewExportRequestFromMetrics(md)
}

func cpuSecs() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func percentiles(d []time.Duration) map[string]float64 {
	if len(d) == 0 {
		return nil
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	p := func(q float64) float64 {
		i := int(math.Ceil(q*float64(len(d)))) - 1
		if i < 0 {
			i = 0
		}
		return float64(d[i].Microseconds()) / 1000
	}
	return map[string]float64{"p50": p(0.50), "p90": p(0.90), "p99": p(0.99), "p99.9": p(0.999), "max": p(1), "count": float64(len(d))}
}

func must(err error) {
	if err != nil {
		fatal("%v", err)
	}
}

func fatal(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+f+"\n", a...)
	os.Exit(1)
}
