package main

import "strconv"

// GPU models and their NVIDIA vGPU profiles. Device ids are the real PCI ids; profile
// names follow NVIDIA's grid_<board>-[<slices>-]<fbGB><series> scheme.

type vgpuProfile struct {
	Name   string // e.g. grid_a100-40c, grid_a100-4-20c
	FbGiB  int    // framebuffer (the label number)
	Slices int    // MIG compute slices (0 = time-sliced)
}

type gpuModel struct {
	Key         string // short model key used in the manifest
	DeviceID    uint16
	SubDeviceID uint16
	DeviceName  string // hardware.pciDevice[].deviceName (pci.ids style)
	Product     string // config.graphicsInfo[].deviceName (driver style)
	FbGiB       int
	TdpW        int // board power limit
	IdleW       int
	PerHost     int // GPUs per host (half on each NUMA node)
	Server      string
	TimeSliced  []vgpuProfile
	Mig         []vgpuProfile
}

const nvidiaVendor = 0x10de

func ts(board string, fbs ...int) []vgpuProfile {
	out := make([]vgpuProfile, 0, len(fbs))
	for _, fb := range fbs {
		out = append(out, vgpuProfile{Name: "grid_" + board + "-" + itoa(fb) + "c", FbGiB: fb})
	}
	return out
}

func mig(board string, pairs ...[2]int) []vgpuProfile {
	out := make([]vgpuProfile, 0, len(pairs))
	for _, p := range pairs {
		out = append(out, vgpuProfile{
			Name:   "grid_" + board + "-" + itoa(p[0]) + "-" + itoa(p[1]) + "c",
			FbGiB:  p[1],
			Slices: p[0],
		})
	}
	return out
}

// clusterFlavors cycle over the clusters: C0 A100 40GB SXM, C1 H100 PCIe, C2 H100 SXM5, ...
var clusterFlavors = []gpuModel{
	{
		Key: "A100-SXM4-40GB", DeviceID: 0x20b0, SubDeviceID: 0x134f,
		DeviceName: "GA100 [A100 SXM4 40GB]", Product: "NVIDIA A100-SXM4-40GB",
		FbGiB: 40, TdpW: 400, IdleW: 55, PerHost: 8, Server: "PowerEdge XE8545",
		TimeSliced: ts("a100", 40, 20, 10, 8, 5, 4),
		Mig:        mig("a100", [2]int{1, 5}, [2]int{2, 10}, [2]int{3, 20}, [2]int{4, 20}, [2]int{7, 40}),
	},
	{
		Key: "H100-PCIe-80GB", DeviceID: 0x2331, SubDeviceID: 0x1626,
		DeviceName: "GH100 [H100 PCIe]", Product: "NVIDIA H100 PCIe",
		FbGiB: 80, TdpW: 350, IdleW: 48, PerHost: 4, Server: "PowerEdge R760xa",
		TimeSliced: ts("h100", 80, 40, 20, 16, 10),
		Mig:        mig("h100", [2]int{1, 10}, [2]int{2, 20}, [2]int{3, 40}, [2]int{4, 40}, [2]int{7, 80}),
	},
	{
		Key: "H100-SXM5-80GB", DeviceID: 0x2330, SubDeviceID: 0x16c1,
		DeviceName: "GH100 [H100 SXM5 80GB]", Product: "NVIDIA H100 80GB HBM3",
		FbGiB: 80, TdpW: 700, IdleW: 70, PerHost: 8, Server: "PowerEdge XE9680",
		TimeSliced: ts("h100xm", 80, 40, 20, 16, 10),
		Mig:        mig("h100xm", [2]int{1, 10}, [2]int{2, 20}, [2]int{3, 40}, [2]int{4, 40}, [2]int{7, 80}),
	},
	{
		Key: "A100-PCIe-80GB", DeviceID: 0x20b5, SubDeviceID: 0x1533,
		DeviceName: "GA100 [A100 PCIe 80GB]", Product: "NVIDIA A100 80GB PCIe",
		FbGiB: 80, TdpW: 300, IdleW: 45, PerHost: 4, Server: "PowerEdge R750xa",
		TimeSliced: ts("a100d", 80, 40, 20, 16, 10, 8),
		Mig:        mig("a100d", [2]int{1, 10}, [2]int{2, 20}, [2]int{3, 40}, [2]int{4, 40}, [2]int{7, 80}),
	},
	{
		Key: "L40S", DeviceID: 0x26b9, SubDeviceID: 0x1851,
		DeviceName: "AD102GL [L40S]", Product: "NVIDIA L40S",
		FbGiB: 48, TdpW: 350, IdleW: 35, PerHost: 4, Server: "PowerEdge R760xa",
		TimeSliced: []vgpuProfile{
			{Name: "grid_l40s-48q", FbGiB: 48}, {Name: "grid_l40s-24q", FbGiB: 24},
			{Name: "grid_l40s-12q", FbGiB: 12}, {Name: "grid_l40s-48c", FbGiB: 48},
			{Name: "grid_l40s-24c", FbGiB: 24},
		},
	},
}

func (g *gpuModel) profile(name string) (vgpuProfile, bool) {
	for _, p := range g.TimeSliced {
		if p.Name == name {
			return p, true
		}
	}
	for _, p := range g.Mig {
		if p.Name == name {
			return p, true
		}
	}
	return vgpuProfile{}, false
}

func itoa(i int) string { return strconv.Itoa(i) }
