package main

// PerformanceManager wrapper: QueryPerf answers for seeded VMs and hosts from the
// deterministic power model, with vCenter's realtime semantics (20 s samples, one hour kept,
// startTime exclusive, endTime inclusive, ascending timestamps, maxSample = latest N).
// The simulator object is embedded BY VALUE: embedding a pointer breaks property reads.

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/vpx"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	counterPower  = 157 // power.power.average (W)
	counterEnergy = 159 // power.energy.summation (J)
	realtimeKeep  = 180 // samples kept by the host: one hour of 20 s samples
)

type perfManager struct {
	simulator.PerformanceManager
	vms   map[string]*vmPlan
	hosts map[string]*hostPlan
	now   func() time.Time
	off   int32 // counter key offset: keys differ between real installs
}

// counterKeyOffset shifts every counter key the clients see (flag -counter-key-offset).
var counterKeyOffset int32

func newPerfManager(pm *simulator.PerformanceManager, e *estate) *perfManager {
	p := &perfManager{PerformanceManager: *pm, vms: map[string]*vmPlan{}, hosts: map[string]*hostPlan{}, now: time.Now,
		off: counterKeyOffset}
	if p.off != 0 {
		p.PerfCounter = append([]types.PerfCounterInfo(nil), pm.PerfCounter...)
		for i := range p.PerfCounter {
			c := &p.PerfCounter[i]
			c.Key += p.off
			assoc := make([]int32, len(c.AssociatedCounterId))
			for j, a := range c.AssociatedCounterId {
				assoc[j] = a + p.off
			}
			c.AssociatedCounterId = assoc
		}
	}
	for _, v := range e.VMs {
		p.vms[v.Moref] = v
	}
	for _, h := range e.Hosts {
		p.hosts[h.Moref] = h
	}
	return p
}

// sampleTimes returns the realtime sample timestamps (unix s) selected by the spec.
func sampleTimes(qs *types.PerfQuerySpec, now time.Time) []int64 {
	latest := now.Unix() / sampleSec * sampleSec
	first := latest - (realtimeKeep-1)*sampleSec
	lo, hi := first, latest
	if qs.StartTime != nil {
		s := qs.StartTime.Unix()
		// exclusive start: first sample strictly after StartTime
		if s2 := (s/sampleSec + 1) * sampleSec; s2 > lo {
			lo = s2
		}
	}
	if qs.EndTime != nil {
		if e := qs.EndTime.Unix() / sampleSec * sampleSec; e < hi {
			hi = e
		}
	}
	var out []int64
	for t := lo; t <= hi; t += sampleSec {
		out = append(out, t)
	}
	if qs.MaxSample > 0 && len(out) > int(qs.MaxSample) {
		out = out[len(out)-int(qs.MaxSample):]
	}
	return out
}

// QueryPerfCounter is implemented here: the simulator's own panics (nil response) in 0.24.
func (p *perfManager) QueryPerfCounter(ctx *simulator.Context, req *types.QueryPerfCounter) soap.HasFault {
	body := &methods.QueryPerfCounterBody{Res: new(types.QueryPerfCounterResponse)}
	index := make(map[int32]types.PerfCounterInfo, len(p.PerfCounter))
	for _, c := range p.PerfCounter {
		index[c.Key] = c
	}
	for _, id := range req.CounterId {
		c, ok := index[id]
		if !ok {
			return &methods.QueryPerfCounterBody{Fault_: simulator.Fault("", &types.InvalidArgument{InvalidProperty: "counterId"})}
		}
		body.Res.Returnval = append(body.Res.Returnval, c)
	}
	return body
}

// QueryAvailablePerfMetric translates the shifted counter keys.
func (p *perfManager) QueryAvailablePerfMetric(ctx *simulator.Context, req *types.QueryAvailablePerfMetric) soap.HasFault {
	res := p.PerformanceManager.QueryAvailablePerfMetric(ctx, req)
	if body := res.(*methods.QueryAvailablePerfMetricBody); body.Res != nil {
		out := make([]types.PerfMetricId, len(body.Res.Returnval))
		for i, m := range body.Res.Returnval {
			m.CounterId += p.off
			out[i] = m
		}
		body.Res.Returnval = out
	}
	return res
}

func (p *perfManager) value(ref types.ManagedObjectReference, counter int32, t int64) int64 {
	counter -= p.off
	var watts float64
	switch ref.Type {
	case "VirtualMachine":
		watts = p.vms[ref.Value].vmWatts(t)
	case "HostSystem":
		watts = p.hosts[ref.Value].hostWatts(t)
	}
	switch counter {
	case counterPower:
		return int64(math.Round(watts))
	case counterEnergy:
		return int64(math.Round(watts * sampleSec))
	}
	// any other counter: the simulator's canned pattern, made deterministic
	data := vpx.MetricData[ref.Type][counter]
	if len(data) == 0 {
		return 0
	}
	x := data[(t/sampleSec)%int64(len(data))]
	return x + int64(float64(x/10)*noise(uint64(counter), t/sampleSec))
}

func (p *perfManager) known(ref types.ManagedObjectReference) bool {
	switch ref.Type {
	case "VirtualMachine":
		return p.vms[ref.Value] != nil
	case "HostSystem":
		return p.hosts[ref.Value] != nil
	}
	return false
}

func (p *perfManager) QueryPerf(ctx *simulator.Context, req *types.QueryPerf) soap.HasFault {
	body := new(methods.QueryPerfBody)
	body.Res = new(types.QueryPerfResponse)
	now := p.now()
	var other []types.PerfQuerySpec
	var otherAt []int
	out := make([]types.BasePerfEntityMetricBase, len(req.QuerySpec))
	for i := range req.QuerySpec {
		qs := &req.QuerySpec[i]
		if !p.known(qs.Entity) {
			other = append(other, *qs)
			otherAt = append(otherAt, i)
			continue
		}
		out[i] = p.entityMetric(ctx, qs, now)
	}
	if len(other) > 0 {
		for i := range other {
			ids := make([]types.PerfMetricId, len(other[i].MetricId))
			for j, id := range other[i].MetricId {
				id.CounterId -= p.off
				ids[j] = id
			}
			other[i].MetricId = ids
		}
		res := p.PerformanceManager.QueryPerf(ctx, &types.QueryPerf{This: req.This, QuerySpec: other})
		rb := res.(*methods.QueryPerfBody)
		if rb.Fault_ != nil {
			return rb
		}
		for j, m := range rb.Res.Returnval {
			if em, ok := m.(*types.PerfEntityMetric); ok {
				for _, s := range em.Value {
					s.GetPerfMetricSeries().Id.CounterId += p.off
				}
			}
			out[otherAt[j]] = m
		}
	}
	body.Res.Returnval = out
	return body
}

func (p *perfManager) entityMetric(ctx *simulator.Context, qs *types.PerfQuerySpec, now time.Time) types.BasePerfEntityMetricBase {
	ids := qs.MetricId
	if len(ids) == 0 {
		avail := p.QueryAvailablePerfMetric(ctx, &types.QueryAvailablePerfMetric{Entity: qs.Entity, IntervalId: 20})
		ids = avail.(*methods.QueryAvailablePerfMetricBody).Res.Returnval
	}
	var times []int64
	if qs.Entity.Type != "VirtualMachine" || p.vms[qs.Entity.Value].PoweredOn {
		times = sampleTimes(qs, now)
	}
	interval := int32(sampleSec)
	if qs.Format == string(types.PerfFormatCsv) {
		m := &types.PerfEntityMetricCSV{}
		m.Entity = qs.Entity
		var info []string
		for _, t := range times {
			info = append(info, strconv.Itoa(int(interval)), time.Unix(t, 0).UTC().Format(time.RFC3339))
		}
		m.SampleInfoCSV = strings.Join(info, ",")
		if len(times) == 0 {
			return m
		}
		for _, id := range ids {
			vals := make([]string, len(times))
			for k, t := range times {
				vals[k] = strconv.FormatInt(p.value(qs.Entity, id.CounterId, t), 10)
			}
			id.Instance = strings.TrimSuffix(id.Instance, "*")
			m.Value = append(m.Value, types.PerfMetricSeriesCSV{
				PerfMetricSeries: types.PerfMetricSeries{Id: id}, Value: strings.Join(vals, ","),
			})
		}
		return m
	}
	m := &types.PerfEntityMetric{}
	m.Entity = qs.Entity
	if len(times) == 0 {
		return m
	}
	for _, t := range times {
		m.SampleInfo = append(m.SampleInfo, types.PerfSampleInfo{Timestamp: time.Unix(t, 0).UTC(), Interval: interval})
	}
	for _, id := range ids {
		vals := make([]int64, len(times))
		for k, t := range times {
			vals[k] = p.value(qs.Entity, id.CounterId, t)
		}
		id.Instance = strings.TrimSuffix(id.Instance, "*")
		m.Value = append(m.Value, &types.PerfMetricIntSeries{PerfMetricSeries: types.PerfMetricSeries{Id: id}, Value: vals})
	}
	return m
}
