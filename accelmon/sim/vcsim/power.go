package main

// Deterministic, time-varying power model: the same (entity, timestamp) always gives the
// same watts, so repeated QueryPerf calls over one window agree and nothing is random.

import (
	"math"
)

const sampleSec = 20

func mix64(x uint64) uint64 { // splitmix64 finaliser
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// noise in [-1, 1), deterministic per (key, tick)
func noise(key uint64, tick int64) float64 {
	return float64(mix64(key^uint64(tick)*0x2545f4914f6cdd1d)>>11)/float64(1<<53)*2 - 1
}

func clamp01(x float64) float64 { return math.Max(0, math.Min(1, x)) }

// gpuUtil is the VM's GPU utilisation (0..1) at unix time t.
func (v *vmPlan) gpuUtil(t int64) float64 {
	tick := t / sampleSec
	n := noise(v.Noise, tick)
	ft := float64(t)
	switch v.Workload {
	case "idle":
		return clamp01(0.02 + 0.015*n)
	case "light":
		return clamp01(0.08 + 0.04*math.Sin(2*math.Pi*ft/3600+v.Phase) + 0.03*n)
	case "inference":
		return clamp01(0.35 + 0.25*math.Sin(2*math.Pi*ft/86400+v.Phase) + 0.08*n)
	case "serving": // a low-traffic endpoint: a request now and then
		return clamp01(0.04 + 0.03*math.Sin(2*math.Pi*ft/86400+v.Phase) + 0.02*n)
	case "training":
		// checkpoint dips: one minute every half hour
		if int64(ft+v.Phase*300)%1800 < 60 {
			return clamp01(0.2 + 0.05*n)
		}
		return clamp01(0.88 + 0.06*n)
	case "batch":
		if math.Sin(2*math.Pi*ft/2400+v.Phase) > 0 {
			return clamp01(0.9 + 0.05*n)
		}
		return clamp01(0.03 + 0.02*n)
	}
	return 0
}

func (v *vmPlan) cpuUtil(t int64) float64 {
	n := noise(v.Noise^0xc0ffee, t/sampleSec)
	base := v.CPUUtil + 0.1*math.Sin(2*math.Pi*float64(t)/86400+v.Phase)
	if v.isGPU() {
		base = v.CPUUtil + 0.3*v.gpuUtil(t)
	}
	return clamp01(base + 0.05*n)
}

func (v *vmPlan) cpuMemWatts(t int64) float64 {
	return float64(v.NumCPU)*3.0*(0.15+0.85*v.cpuUtil(t)) + float64(v.MemoryMB)/1024*0.03
}

// share of a physical GPU's power attributed to one VM device
func (g *vmGPU) share() float64 {
	if g.Kind != "vgpu" {
		return 1
	}
	if g.Profile.Slices > 0 {
		return float64(g.Profile.Slices) / 7
	}
	return float64(g.Profile.FbGiB) / float64(g.GPU.Host.Model.FbGiB)
}

// vmWatts is the VM's power.power.average at t (0 when off).
func (v *vmPlan) vmWatts(t int64) float64 {
	if !v.PoweredOn {
		return 0
	}
	w := v.cpuMemWatts(t)
	u := v.gpuUtil(t)
	for _, g := range v.GPUs {
		if g.GPU == nil {
			continue
		}
		m := g.GPU.Host.Model
		s := g.share()
		w += s*float64(m.IdleW) + s*float64(m.TdpW-m.IdleW)*u
	}
	return w
}

// gpuWatts is one physical GPU's power at t: idle plus the load of the VMs on it.
func (g *gpuPlan) gpuWatts(t int64) float64 {
	m := g.Host.Model
	util := 0.0
	for _, v := range g.VMs {
		if !v.PoweredOn {
			continue
		}
		for _, d := range v.GPUs {
			if d.GPU == g {
				util += d.share() * v.gpuUtil(t)
			}
		}
	}
	return float64(m.IdleW) + float64(m.TdpW-m.IdleW)*math.Min(1, util)
}

// hostWatts: chassis base + CPU/memory of its VMs + every GPU (idle ones included).
func (h *hostPlan) hostWatts(t int64) float64 {
	w := h.BaseW * (1 + 0.02*noise(uint64(h.Index)*7919, t/sampleSec))
	for _, v := range h.VMs {
		if v.PoweredOn {
			w += v.cpuMemWatts(t)
		}
	}
	for _, g := range h.GPUs {
		w += g.gpuWatts(t)
	}
	return w
}
