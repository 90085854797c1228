// Program kafkacount reads a Kafka topic written by the collector's kafka exporter
// (encoding otlp_proto: each record one ExportMetricsServiceRequest) from the start of
// every partition to the end offsets it finds at start, counts records and data points,
// and, given loadgen's list of acknowledged requests (-acked), how many acknowledged
// points never reached the topic (lost) and how many arrived more than once (duplicates).
// Requests are told apart by the resource attributes ferrule.agent and ferrule.seq.
// Prints one JSON object on stdout.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.opentelemetry.io/collector/pdata/pmetric"
)

type key struct{ agent, seq int64 }

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "bootstrap brokers, comma-separated")
	topic := flag.String("topic", "otlp_metrics", "topic")
	ackedPath := flag.String("acked", "", "loadgen's acknowledged requests (agent seq points per line)")
	timeout := flag.Duration("timeout", 120*time.Second, "overall limit")
	waitPoints := flag.Int64("wait-points", 0, "instead of reading to the end offsets: read until this many points arrived, or none arrived for -idle, or -timeout (then exit 0); prints {points, records, waited_secs, reason}")
	idle := flag.Duration("idle", 40*time.Second, "with -wait-points: give up after this long without a new record")
	flag.Parse()
	if *waitPoints > 0 {
		waitFor(*brokers, *topic, *waitPoints, *idle, *timeout)
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(*brokers, ",")...))
	must(err)
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, *topic)
	must(err)
	must(ends.Error())
	want := map[int32]int64{}
	offsets := map[string]map[int32]kgo.Offset{*topic: {}}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			want[o.Partition] = o.Offset
			offsets[*topic][o.Partition] = kgo.NewOffset().AtStart()
		}
	})
	seen := map[key]int64{}
	var records, points, undecodable, unkeyed int64
	if len(want) > 0 {
		cl.AddConsumePartitions(offsets)
		var um pmetric.ProtoUnmarshaler
		for len(want) > 0 {
			fs := cl.PollFetches(ctx)
			if ctx.Err() != nil {
				fatal("timed out with %d partitions unread to their end", len(want))
			}
			fs.EachError(func(t string, p int32, err error) { fatal("fetch %s/%d: %v", t, p, err) })
			fs.EachRecord(func(r *kgo.Record) {
				end, ok := want[r.Partition]
				if !ok || r.Offset >= end {
					return
				}
				if r.Offset+1 >= end {
					delete(want, r.Partition)
				}
				records++
				md, err := um.UnmarshalMetrics(r.Value)
				if err != nil {
					undecodable++
					return
				}
				rms := md.ResourceMetrics()
				for i := 0; i < rms.Len(); i++ {
					rm := rms.At(i)
					n := countPoints(rm)
					points += n
					a, ok1 := rm.Resource().Attributes().Get("ferrule.agent")
					s, ok2 := rm.Resource().Attributes().Get("ferrule.seq")
					if !ok1 || !ok2 {
						unkeyed += n
						continue
					}
					seen[key{a.Int(), s.Int()}] += n
				}
			})
		}
	}
	out := map[string]any{
		"topic":             *topic,
		"records":           records,
		"points":            points,
		"undecodable":       undecodable,
		"unkeyed_points":    unkeyed,
		"distinct_requests": len(seen),
	}
	if *ackedPath != "" {
		f, err := os.Open(*ackedPath)
		must(err)
		sc := bufio.NewScanner(f)
		var ackedReqs, ackedPts, lostReqs, lostPts, dupPts int64
		ackedSet := map[key]bool{}
		for sc.Scan() {
			var a, s, n int64
			if _, err := fmt.Sscan(sc.Text(), &a, &s, &n); err != nil {
				fatal("bad line in %s: %q", *ackedPath, sc.Text())
			}
			k := key{a, s}
			ackedSet[k] = true
			ackedReqs++
			ackedPts += n
			got := seen[k]
			if got < n {
				lostPts += n - got
				if got == 0 {
					lostReqs++
				}
			} else {
				dupPts += got - n
			}
		}
		must(sc.Err())
		f.Close()
		// Points in Kafka from requests the client saw fail (the collector took them
		// after all, e.g. a deadline passed while they were queued).
		var unackedPts int64
		for k, n := range seen {
			if !ackedSet[k] {
				unackedPts += n
			}
		}
		out["acked_requests"] = ackedReqs
		out["acked_points"] = ackedPts
		out["lost_requests"] = lostReqs
		out["lost_points"] = lostPts
		out["duplicate_points"] = dupPts
		out["points_from_unacked_requests"] = unackedPts
	}
	b, _ := json.MarshalIndent(out, "", "  ")
	os.Stdout.Write(append(b, '\n'))
}

// waitFor consumes the topic from the start until n points arrived, nothing arrived for
// idle, or timeout passed: how long the Collector took to deliver what it had queued.
func waitFor(brokers, topic string, n int64, idle, timeout time.Duration) {
	start := time.Now()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...),
		kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	must(err)
	defer cl.Close()
	var um pmetric.ProtoUnmarshaler
	var points, records int64
	last := time.Now()
	reason := "reached"
	for points < n {
		if time.Since(start) > timeout {
			reason = "timeout"
			break
		}
		if time.Since(last) > idle {
			reason = "idle"
			break
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			records++
			last = time.Now()
			if md, err := um.UnmarshalMetrics(r.Value); err == nil {
				points += int64(md.DataPointCount())
			}
		})
	}
	b, _ := json.Marshal(map[string]any{"points": points, "records": records,
		"waited_secs": time.Since(start).Seconds(), "reason": reason})
	os.Stdout.Write(append(b, '\n'))
}

func countPoints(rm pmetric.ResourceMetrics) int64 {
	var n int64
	sms := rm.ScopeMetrics()
	for i := 0; i < sms.Len(); i++ {
		ms := sms.At(i).Metrics()
		for j := 0; j < ms.Len(); j++ {
			m := ms.At(j)
			switch m.Type() {
			case pmetric.MetricTypeGauge:
				n += int64(m.Gauge().DataPoints().Len())
			case pmetric.MetricTypeSum:
				n += int64(m.Sum().DataPoints().Len())
			case pmetric.MetricTypeHistogram:
				n += int64(m.Histogram().DataPoints().Len())
			case pmetric.MetricTypeExponentialHistogram:
				n += int64(m.ExponentialHistogram().DataPoints().Len())
			case pmetric.MetricTypeSummary:
				n += int64(m.Summary().DataPoints().Len())
			}
		}
	}
	return n
}

func must(err error) {
	if err != nil {
		fatal("%v", err)
	}
}

func fatal(f string, a ...any) {
	fmt.Fprintf(os.Stderr, "kafkacount: "+f+"\n", a...)
	os.Exit(1)
}
