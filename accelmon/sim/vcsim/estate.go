package main

// The estate plan: a pure, deterministic (from the seed) description of clusters, hosts,
// GPUs and VMs, decided before any simulator object exists. seed_*.go turn it into objects.

import (
	"fmt"
	"math"
	"math/rand"
	"sort"
	"strings"
)

type params struct {
	Clusters        int
	HostsPerCluster int
	VMs             int
	GpuRatio        float64
	Seed            int64
	ExtraVmotions   int // -1: automatic
}

type gpuPlan struct {
	Host    *hostPlan
	Index   int
	Node    int
	PciID   string
	Bus     int
	Bridge  string
	Mode    string // unassigned | passthrough | vgpu | mig
	Profile string // vgpu (time-sliced, sameSize) profile
	Used    int    // vgpu slots or MIG slices in use
	Cap     int
	VMs     []*vmPlan
}

type hostPlan struct {
	Index     int
	Cluster   int
	Name      string
	Moref     string
	UUID      string
	Model     *gpuModel
	GPUs      []*gpuPlan
	Segments  [2]int
	NumaPci   [2][]string // pci ids per NUMA node (GPUs, bridges, NIC, NVSwitches)
	Others    []otherPci  // non-GPU PCI devices we add (bridges, NIC, NVSwitch)
	VmotionIP string
	BaseW     float64
	VMs       []*vmPlan
	rrGPU     int
}

type otherPci struct {
	ID, DeviceName, VendorName string
	Vendor, Device, SubVendor  uint16
	Class                      uint16
	Bus                        int
	Parent                     string
	Node                       int
	Passthru                   bool
}

type vmGPU struct {
	Kind    string // passthrough | dynamic | vgpu
	GPU     *gpuPlan
	Profile *vgpuProfile
	Key     int32
}

type vmPlan struct {
	Index      int
	Name       string
	Cluster    int
	Host       *hostPlan
	Moref      string
	PoweredOn  bool
	NumCPU     int32
	MemoryMB   int64
	GuestID    string
	BiosUUID   string
	InstUUID   string
	IP         string
	Tools      bool
	GPUs       []*vmGPU
	Affinity   []int // numa.nodeAffinity; nil = not set
	CpuPin     []int // config.cpuAffinity.affinitySet (host logical CPUs); nil = not set
	Workload   string
	CPUUtil    float64
	Phase      float64
	Noise      uint64
	BootAgo    float64 // seconds before sim start
	GarbageLog bool
	LogOld     bool // vmware.log in the older "| vmx| I125:" style
	Forced     int  // index into forced, -1 if none
	Migrations []*migration
}

type estate struct {
	P            params
	rng          *rand.Rand
	Hosts        []*hostPlan
	ByCluster    [][]*hostPlan
	VMs          []*vmPlan
	Unplaced     int
	InstanceUID  string
	Migs         []*migration
	DatastoreURL string
	Logs         map[*vmPlan][]logFile
}

func (v *vmPlan) isGPU() bool { return len(v.GPUs) > 0 }

func (v *vmPlan) hasVgpu() bool {
	for _, g := range v.GPUs {
		if g.Kind == "vgpu" {
			return true
		}
	}
	return false
}

func (v *vmPlan) vgpuFb() int {
	fb := 0
	for _, g := range v.GPUs {
		if g.Profile != nil {
			fb += g.Profile.FbGiB
		}
	}
	return fb
}

func uuidFrom(r *rand.Rand, prefix byte) string {
	var b [16]byte
	for i := range b {
		b[i] = byte(r.Intn(256))
	}
	b[0] = prefix
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

func pciID(seg, bus int) string { return fmt.Sprintf("%04x:%02x:00.0", seg, bus) }

// GPU bus numbers per NUMA node (typical of 2-socket GPU servers).
var gpuBuses = [2][]int{{0x17, 0x31, 0x4b, 0x65}, {0x98, 0xb1, 0xca, 0xe3}}

func newEstate(p params) *estate {
	e := &estate{P: p, rng: rand.New(rand.NewSource(p.Seed))}
	e.InstanceUID = uuidFrom(e.rng, 0xdb)
	e.planHosts()
	e.planVMs()
	return e
}

func (e *estate) planHosts() {
	e.ByCluster = make([][]*hostPlan, e.P.Clusters)
	idx := 0
	for c := 0; c < e.P.Clusters; c++ {
		model := &clusterFlavors[c%len(clusterFlavors)]
		for h := 0; h < e.P.HostsPerCluster; h++ {
			hp := &hostPlan{Index: idx, Cluster: c, Model: model}
			// PCI segments: some hosts all on 0000, some with node 1 on 0001, some on 0002/0003.
			switch idx % 3 {
			case 0:
				hp.Segments = [2]int{0, 0}
			case 1:
				hp.Segments = [2]int{0, 1}
			default:
				hp.Segments = [2]int{2, 3}
			}
			hp.VmotionIP = fmt.Sprintf("10.10.%d.%d", c, 11+h)
			hp.BaseW = 260 + float64(e.rng.Intn(60))
			per := model.PerHost / 2
			for node := 0; node < 2; node++ {
				seg := hp.Segments[node]
				for i := 0; i < per; i++ {
					bus := gpuBuses[node][i]
					g := &gpuPlan{
						Host: hp, Index: len(hp.GPUs), Node: node, Bus: bus,
						PciID: pciID(seg, bus), Bridge: pciID(seg, bus-1), Mode: "unassigned",
					}
					hp.GPUs = append(hp.GPUs, g)
					hp.Others = append(hp.Others, otherPci{
						ID: g.Bridge, DeviceName: "PEX 89104 PCIe Gen5 Switch", VendorName: "Broadcom / LSI",
						Vendor: 0x1000, Device: 0xc030, SubVendor: 0x1000, Class: 0x0604, Bus: bus - 1, Node: node,
					})
					hp.NumaPci[node] = append(hp.NumaPci[node], g.Bridge, g.PciID)
				}
			}
			nic := otherPci{
				ID: pciID(hp.Segments[1], 0x86), DeviceName: "MT28908 Family [ConnectX-6]",
				VendorName: "Mellanox Technologies", Vendor: 0x15b3, Device: 0x101b, SubVendor: 0x15b3,
				Class: 0x0207, Bus: 0x86, Node: 1, Passthru: true,
			}
			hp.Others = append(hp.Others, nic)
			hp.NumaPci[1] = append(hp.NumaPci[1], nic.ID)
			if model.PerHost == 8 { // HGX boards: NVSwitches on node 1, bridge class (not GPUs)
				dev := uint16(0x1af1)
				if strings.HasPrefix(model.Key, "H100") {
					dev = 0x22a3
				}
				for i := 0; i < 4; i++ {
					sw := otherPci{
						ID: pciID(hp.Segments[1], 0xc5+i), DeviceName: "NVSwitch", VendorName: "NVIDIA Corporation",
						Vendor: nvidiaVendor, Device: dev, SubVendor: nvidiaVendor, Class: 0x0680, Bus: 0xc5 + i, Node: 1,
					}
					hp.Others = append(hp.Others, sw)
					hp.NumaPci[1] = append(hp.NumaPci[1], sw.ID)
				}
			}
			e.Hosts = append(e.Hosts, hp)
			e.ByCluster[c] = append(e.ByCluster[c], hp)
			idx++
		}
	}
}

// forced GPU VMs: the first GPU VMs, so that even a tiny estate has every case.
type forcedGPU struct {
	kind      string // passthrough | dynamic | vgpu
	cluster   int
	profile   string // wanted vGPU profile (fallback: same fb on the cluster's model)
	ngpu      int
	node      int    // preferred GPU NUMA node (-1 any)
	affinity  string // aligned | misaligned | none
	workload  string
	poweredOn bool
	spread    bool  // vGPU: take a GPU of its own (vSphere's default "performance" assignment spreads vGPUs)
	cpus      int32 // vCPUs (0: drawn at random)
	memGB     int64 // memory (0: drawn at random)
}

// The first seven make every case of a small estate (7 GPU VMs at the default ratio). The
// next eight, present once an estate has 15 GPU VMs (the demo's), are what a spread-out estate
// looks like a few months in: low-traffic model endpoints ("serving") and an idle dev VM, each
// alone on a time-sliced GPU of the same profile, next to a busy vGPU of that profile, and two
// small endpoints on whole passthrough GPUs whose framebuffer use would fit a vGPU profile.
// Together they can be consolidated legally (same model and framebuffer size, sameSize mode,
// NUMA room, p95 sum under the target), which is what the consolidation plan should find.
var forced = []forcedGPU{
	{kind: "passthrough", cluster: 0, ngpu: 1, node: 1, affinity: "misaligned", workload: "idle", poweredOn: true},
	{kind: "vgpu", cluster: 0, profile: "grid_a100-40c", ngpu: 1, node: 0, affinity: "aligned", workload: "training", poweredOn: true},
	{kind: "dynamic", cluster: 1, ngpu: 1, node: 0, affinity: "none", workload: "inference", poweredOn: true},
	{kind: "vgpu", cluster: 0, profile: "grid_a100-4-20c", ngpu: 1, node: 1, affinity: "aligned", workload: "light", poweredOn: true},
	{kind: "vgpu", cluster: 1, profile: "grid_h100-20c", ngpu: 1, node: 0, affinity: "misaligned", workload: "inference", poweredOn: true},
	{kind: "passthrough", cluster: 1, ngpu: 2, node: 1, affinity: "aligned", workload: "training", poweredOn: true},
	{kind: "vgpu", cluster: 1, profile: "grid_h100-10c", ngpu: 1, node: -1, affinity: "none", workload: "batch", poweredOn: false},
	// consolidation candidates (A100 40GB: 10C x4 per GPU; H100 80GB: 20C x4 per GPU)
	{kind: "vgpu", cluster: 0, profile: "grid_a100-10c", ngpu: 1, node: 0, affinity: "aligned", workload: "serving", poweredOn: true, spread: true, cpus: 8, memGB: 32},
	{kind: "vgpu", cluster: 0, profile: "grid_a100-10c", ngpu: 1, node: 1, affinity: "aligned", workload: "serving", poweredOn: true, spread: true, cpus: 8, memGB: 32},
	{kind: "vgpu", cluster: 0, profile: "grid_a100-10c", ngpu: 1, node: 0, affinity: "none", workload: "idle", poweredOn: true, spread: true, cpus: 8, memGB: 32},
	{kind: "passthrough", cluster: 0, ngpu: 1, node: 0, affinity: "aligned", workload: "serving", poweredOn: true, cpus: 16, memGB: 128},
	{kind: "vgpu", cluster: 0, profile: "grid_a100-10c", ngpu: 1, node: 1, affinity: "aligned", workload: "inference", poweredOn: true, spread: true, cpus: 8, memGB: 64},
	{kind: "vgpu", cluster: 1, profile: "grid_h100-20c", ngpu: 1, node: 0, affinity: "aligned", workload: "serving", poweredOn: true, spread: true, cpus: 8, memGB: 32},
	{kind: "vgpu", cluster: 1, profile: "grid_h100-20c", ngpu: 1, node: 1, affinity: "aligned", workload: "serving", poweredOn: true, spread: true, cpus: 8, memGB: 32},
	{kind: "passthrough", cluster: 1, ngpu: 1, node: 1, affinity: "aligned", workload: "serving", poweredOn: true, cpus: 16, memGB: 128},
}

var gpuWorkloads = []struct {
	name string
	w    float64
}{{"idle", 0.2}, {"light", 0.15}, {"inference", 0.25}, {"training", 0.25}, {"batch", 0.15}}

var otherRoles = []string{"web", "app", "db", "batch", "ci", "cache", "etl"}
var guestIDs = []string{"ubuntu64Guest", "rhel8_64Guest", "rhel9_64Guest", "windows2019srv_64Guest", "sles15_64Guest"}

func (e *estate) pickWorkload() string {
	x := e.rng.Float64()
	for _, w := range gpuWorkloads {
		if x < w.w {
			return w.name
		}
		x -= w.w
	}
	return "inference"
}

func (e *estate) planVMs() {
	n := e.P.VMs
	nGPU := int(math.Round(float64(n) * e.P.GpuRatio))
	if nGPU > n {
		nGPU = n
	}
	gpuAt := make(map[int]int, nGPU) // vm index -> GPU ordinal
	for k := 0; k < nGPU; k++ {
		gpuAt[k*n/nGPU] = k
	}
	rrHost := make([]int, e.P.Clusters)
	rrGPUCluster := 0
	for i := 0; i < n; i++ {
		v := &vmPlan{Index: i, Forced: -1, Noise: uint64(e.rng.Int63()), Phase: e.rng.Float64() * 2 * math.Pi}
		v.BiosUUID = uuidFrom(e.rng, 0x42)
		v.InstUUID = uuidFrom(e.rng, 0x50)
		v.GuestID = guestIDs[e.rng.Intn(len(guestIDs))]
		v.BootAgo = 3600*6 + e.rng.Float64()*86400*30
		v.Tools = e.rng.Float64() > 0.02
		k, isGPU := gpuAt[i]
		placed := false
		if isGPU {
			placed = e.planGPUVM(v, k, &rrGPUCluster)
			if !placed {
				e.Unplaced++
			}
		}
		if !placed {
			role := otherRoles[e.rng.Intn(len(otherRoles))]
			v.Name = fmt.Sprintf("%s-%05d", role, i)
			v.Cluster = i % e.P.Clusters
			hosts := e.ByCluster[v.Cluster]
			v.Host = hosts[rrHost[v.Cluster]%len(hosts)]
			rrHost[v.Cluster]++
			v.NumCPU = []int32{2, 4, 4, 8}[e.rng.Intn(4)]
			v.MemoryMB = int64([]int{4, 8, 16, 32}[e.rng.Intn(4)]) * 1024
			v.PoweredOn = e.rng.Float64() > 0.04
			v.CPUUtil = 0.05 + e.rng.Float64()*0.45
			v.Workload = "cpu"
			if e.rng.Float64() < 0.05 {
				v.Affinity = []int{e.rng.Intn(2)}
			}
		}
		if v.PoweredOn && v.Tools {
			v.IP = fmt.Sprintf("10.%d.%d.%d", 32+i/62500, (i/250)%250, i%250+2)
		}
		v.Host.VMs = append(v.Host.VMs, v)
		e.VMs = append(e.VMs, v)
	}
}

func (e *estate) planGPUVM(v *vmPlan, k int, rr *int) bool {
	var f forcedGPU
	if k < len(forced) {
		f = forced[k]
		f.cluster %= e.P.Clusters
		v.Forced = k
	} else {
		x := e.rng.Float64()
		f = forcedGPU{kind: "vgpu", ngpu: 1, node: -1, workload: e.pickWorkload(), poweredOn: e.rng.Float64() > 0.02}
		switch {
		case x < 0.10:
			f.kind = "passthrough"
			if e.rng.Float64() < 0.15 {
				f.ngpu = 2
			}
		case x < 0.13:
			f.kind = "dynamic"
		}
		switch a := e.rng.Float64(); {
		case a < 0.5:
			f.affinity = "aligned"
		case a < 0.6:
			f.affinity = "misaligned"
		default:
			f.affinity = "none"
		}
		f.cluster = *rr % e.P.Clusters
		*rr++
		if f.kind == "vgpu" && e.rng.Float64() < 0.7 {
			f.profile = e.partlyUsed(f.cluster)
		}
	}
	v.PoweredOn = f.poweredOn
	v.Workload = f.workload
	v.CPUUtil = 0.1 + e.rng.Float64()*0.3
	if f.kind == "vgpu" {
		v.NumCPU = []int32{8, 8, 16, 16, 32}[e.rng.Intn(5)]
		v.MemoryMB = int64([]int{32, 64, 64, 128}[e.rng.Intn(4)]) * 1024
	} else {
		v.NumCPU = []int32{16, 32, 32}[e.rng.Intn(3)]
		v.MemoryMB = int64([]int{128, 256, 256, 512}[e.rng.Intn(4)]) * 1024
	}
	if f.cpus > 0 { // drawn above all the same, so the random stream does not depend on it
		v.NumCPU = f.cpus
	}
	if f.memGB > 0 {
		v.MemoryMB = f.memGB * 1024
	}
	// try the wanted cluster first, then the others
	for off := 0; off < e.P.Clusters; off++ {
		c := (f.cluster + off) % e.P.Clusters
		if e.placeGPUs(v, f, c) {
			v.Cluster = c
			break
		}
	}
	if !v.isGPU() {
		v.Forced = -1
		return false
	}
	prefix := map[string]string{"idle": "dev", "light": "notebook", "inference": "infer", "training": "train", "batch": "batch",
		"serving": "serve"}[v.Workload]
	v.Name = fmt.Sprintf("gpu-%s-%05d", prefix, v.Index)
	e.planAffinity(v, f.affinity)
	if v.Forced == 1 && len(v.Affinity) == 1 { // also pinned by CPU scheduling affinity to its node's logical CPUs
		for c := 0; c < threadsPerNode; c++ {
			v.CpuPin = append(v.CpuPin, v.Affinity[0]*threadsPerNode+c)
		}
	}
	return true
}

func (e *estate) chooseProfile(m *gpuModel, want string) *vgpuProfile {
	if want != "" {
		if p, ok := m.profile(want); ok {
			return &p
		}
		// same framebuffer size on this cluster's model, else its first time-sliced profile
		wantFb, mig := 0, strings.Count(want, "-") == 2
		fmt.Sscanf(want[strings.LastIndex(want, "-")+1:], "%d", &wantFb)
		list := m.TimeSliced
		if mig && len(m.Mig) > 0 {
			list = m.Mig
		}
		for _, p := range list {
			if p.FbGiB == wantFb {
				return &p
			}
		}
		p := m.TimeSliced[len(m.TimeSliced)/2]
		return &p
	}
	if len(m.Mig) > 0 && e.rng.Float64() < 0.35 {
		return e.weighted(m.Mig, 7)
	}
	return e.weighted(m.TimeSliced, 0)
}

// weighted picks a profile with probability ~ 1/size (small slices are the common case);
// maxSlices > 0 limits MIG profiles to those that fit.
func (e *estate) weighted(list []vgpuProfile, maxSlices int) *vgpuProfile {
	size := func(p vgpuProfile) float64 {
		if p.Slices > 0 {
			return float64(p.Slices)
		}
		return float64(p.FbGiB)
	}
	total := 0.0
	for _, p := range list {
		if maxSlices == 0 || p.Slices <= maxSlices {
			total += 1 / size(p)
		}
	}
	x := e.rng.Float64() * total
	for _, p := range list {
		if maxSlices > 0 && p.Slices > maxSlices {
			continue
		}
		if x -= 1 / size(p); x < 0 {
			p := p
			return &p
		}
	}
	p := list[len(list)-1]
	return &p
}

// partlyUsed returns the profile to use so that a new vGPU VM fills a partly used GPU of the
// cluster (sameSize vGPU or MIG), as an administrator's placement would; "" if none.
func (e *estate) partlyUsed(c int) string {
	var cands []*gpuPlan
	for _, h := range e.ByCluster[c] {
		for _, g := range h.GPUs {
			if (g.Mode == "vgpu" && g.Used < g.Cap) || (g.Mode == "mig" && g.Used < 7) {
				cands = append(cands, g)
			}
		}
	}
	if len(cands) == 0 {
		return ""
	}
	g := cands[e.rng.Intn(len(cands))]
	if g.Mode == "vgpu" {
		return g.Profile
	}
	return e.weighted(g.Host.Model.Mig, 7-g.Used).Name
}

// placeGPUs finds host GPUs for v in cluster c; fills v.Host and v.GPUs on success.
func (e *estate) placeGPUs(v *vmPlan, f forcedGPU, c int) bool {
	hosts := e.ByCluster[c]
	var prof *vgpuProfile
	if f.kind == "vgpu" {
		prof = e.chooseProfile(hosts[0].Model, f.profile)
	}
	start := e.rng.Intn(len(hosts))
	for hi := 0; hi < len(hosts); hi++ {
		h := hosts[(start+hi)%len(hosts)]
		order := e.gpuOrder(h, f.node)
		if !v.PoweredOn && f.kind == "vgpu" {
			// a powered-off vGPU VM holds no physical GPU (vGPUs are placed at power-on)
			v.Host = h
			v.GPUs = []*vmGPU{{Kind: "vgpu", Profile: prof, Key: 13000}}
			return true
		}
		switch f.kind {
		case "passthrough", "dynamic":
			var got []*gpuPlan
			for _, g := range order {
				if g.Mode == "unassigned" && (len(got) == 0 || g.Node == got[0].Node || f.ngpu == 1) {
					got = append(got, g)
					if len(got) == f.ngpu {
						break
					}
				}
			}
			if len(got) < f.ngpu {
				continue
			}
			v.Host = h
			for i, g := range got {
				g.Mode, g.Cap, g.Used = "passthrough", 1, 1
				if v.PoweredOn {
					g.VMs = append(g.VMs, v)
				}
				v.GPUs = append(v.GPUs, &vmGPU{Kind: f.kind, GPU: g, Key: int32(13000 + i)})
			}
			return true
		case "vgpu":
			var g *gpuPlan
			if f.spread {
				g = e.freeGPU(order, prof)
			}
			if g == nil {
				g = e.findVgpuSlot(order, prof)
			}
			if g == nil {
				continue
			}
			v.Host = h
			g.VMs = append(g.VMs, v)
			v.GPUs = []*vmGPU{{Kind: "vgpu", GPU: g, Profile: prof, Key: 13000}}
			return true
		}
	}
	return false
}

func (e *estate) gpuOrder(h *hostPlan, node int) []*gpuPlan {
	out := make([]*gpuPlan, 0, len(h.GPUs))
	if node >= 0 {
		for _, g := range h.GPUs {
			if g.Node == node {
				out = append(out, g)
			}
		}
		for _, g := range h.GPUs {
			if g.Node != node {
				out = append(out, g)
			}
		}
		return out
	}
	s := h.rrGPU
	h.rrGPU++
	for i := range h.GPUs {
		out = append(out, h.GPUs[(s+i)%len(h.GPUs)])
	}
	return out
}

// freeGPU takes an unassigned GPU for a time-sliced vGPU (nil if none, or for MIG profiles):
// how vSphere's default "performance" (spread) assignment policy places a new vGPU VM.
func (e *estate) freeGPU(order []*gpuPlan, p *vgpuProfile) *gpuPlan {
	if p.Slices > 0 {
		return nil
	}
	for _, g := range order {
		if g.Mode == "unassigned" {
			g.Mode, g.Profile, g.Cap, g.Used = "vgpu", p.Name, g.Host.Model.FbGiB/p.FbGiB, 1
			return g
		}
	}
	return nil
}

func (e *estate) findVgpuSlot(order []*gpuPlan, p *vgpuProfile) *gpuPlan {
	fits := func(g *gpuPlan) bool {
		if p.Slices > 0 {
			return g.Mode == "mig" && g.Used+p.Slices <= 7
		}
		return g.Mode == "vgpu" && g.Profile == p.Name && g.Used < g.Cap
	}
	take := func(g *gpuPlan) *gpuPlan {
		if g.Mode == "unassigned" {
			if p.Slices > 0 {
				g.Mode, g.Cap = "mig", 7
			} else {
				g.Mode, g.Profile, g.Cap = "vgpu", p.Name, g.Host.Model.FbGiB/p.FbGiB
			}
		}
		if p.Slices > 0 {
			g.Used += p.Slices
		} else {
			g.Used++
		}
		return g
	}
	for _, g := range order { // fill partly used GPUs first (vGPU sameSize / MIG)
		if fits(g) {
			return take(g)
		}
	}
	for _, g := range order {
		if g.Mode == "unassigned" {
			return take(g)
		}
	}
	return nil
}

func (e *estate) planAffinity(v *vmPlan, mode string) {
	nodes := v.gpuNodes()
	if len(nodes) == 0 || mode == "none" {
		return
	}
	switch mode {
	case "aligned":
		v.Affinity = nodes
	case "misaligned":
		if len(nodes) == 2 {
			return
		}
		v.Affinity = []int{1 - nodes[0]}
	}
}

func (v *vmPlan) gpuNodes() []int {
	seen := map[int]bool{}
	var out []int
	for _, g := range v.GPUs {
		if g.GPU != nil && !seen[g.GPU.Node] {
			seen[g.GPU.Node] = true
			out = append(out, g.GPU.Node)
		}
	}
	sort.Ints(out)
	return out
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = itoa(x)
	}
	return strings.Join(s, ",")
}

// numaStatus is the ground truth the analytics must reproduce.
func (v *vmPlan) numaStatus() (status, reason string) {
	nodes := v.gpuNodes()
	if !v.isGPU() {
		return "no_gpu", ""
	}
	if len(nodes) == 0 {
		return "unknown", "no physical GPU assigned (vGPU VM powered off)"
	}
	var pcis []string
	for _, g := range v.GPUs {
		if g.GPU != nil {
			pcis = append(pcis, fmt.Sprintf("%s (node %d)", g.GPU.PciID, g.GPU.Node))
		}
	}
	gpus := strings.Join(pcis, ", ")
	if v.Affinity == nil {
		return "unpinned", fmt.Sprintf("no numa.nodeAffinity: vCPUs may run on any node; GPU %s", gpus)
	}
	in := map[int]bool{}
	for _, a := range v.Affinity {
		in[a] = true
	}
	common := 0
	for _, n := range nodes {
		if in[n] {
			common++
		}
	}
	aff := joinInts(v.Affinity)
	switch {
	case common == len(nodes) && len(nodes) == len(v.Affinity):
		return "aligned", fmt.Sprintf("vCPUs pinned to NUMA node %s (numa.nodeAffinity=%s), GPU %s", aff, aff, gpus)
	case common == 0:
		return "misaligned", fmt.Sprintf("vCPUs pinned to NUMA node %s (numa.nodeAffinity=%s) while GPU %s", aff, aff, gpus)
	default:
		return "partial", fmt.Sprintf("vCPUs on NUMA nodes %s (numa.nodeAffinity=%s), GPU %s", aff, aff, gpus)
	}
}

// vnumaNode: the VM's virtual NUMA node a device is exposed on (vSphere 8 numaNode). VMs whose
// GPUs sit on both host nodes get two virtual nodes, in host-node order.
func (v *vmPlan) vnumaNode(d *vmGPU) int32 {
	nodes := v.gpuNodes()
	if d.GPU == nil || len(nodes) < 2 {
		return 0
	}
	for i, n := range nodes {
		if n == d.GPU.Node {
			return int32(i)
		}
	}
	return 0
}
