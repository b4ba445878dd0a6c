package main

// The ground-truth manifest: every seeded fact, for tests and benchmarks to compare with
// what a collector reads back.

import (
	"encoding/json"
	"fmt"
	"os"
	"time"
)

type mGPU struct {
	PciID       string   `json:"pci_id"`
	Bridge      string   `json:"parent_bridge"`
	NumaNode    int      `json:"numa_node"`
	VendorID    int      `json:"vendor_id"`
	DeviceID    int      `json:"device_id"`
	DeviceName  string   `json:"device_name"`
	Model       string   `json:"model"`
	MemoryMiB   int      `json:"memory_mib"`
	Mode        string   `json:"mode"`
	VgpuMode    *string  `json:"vgpu_mode"`
	Profile     *string  `json:"vgpu_profile"`
	GraphicType string   `json:"graphics_type"`
	VMs         []string `json:"vms"`
}

type mNuma struct {
	Node     int      `json:"node"`
	CpuFirst int      `json:"cpu_first"`
	CpuCount int      `json:"cpu_count"`
	PciIDs   []string `json:"pci_ids"`
}

type mHost struct {
	Moref      string   `json:"moref"`
	Name       string   `json:"name"`
	Cluster    string   `json:"cluster"`
	UUID       string   `json:"uuid"`
	Server     string   `json:"server_model"`
	GpuModel   string   `json:"gpu_model"`
	Segments   []string `json:"pci_segments"`
	VmotionIP  string   `json:"vmotion_ip"`
	CpuThreads int      `json:"cpu_threads"`
	MemoryB    int64    `json:"memory_bytes"`
	Numa       []mNuma  `json:"numa_nodes"`
	GPUs       []mGPU   `json:"gpus"`
	OtherPci   []string `json:"other_pci_ids"`
	BaseW      float64  `json:"base_power_w"`
	VMs        int      `json:"vm_count"`
}

type mVMGPU struct {
	Kind      string  `json:"kind"` // passthrough | dynamic | vgpu
	DeviceKey int32   `json:"device_key"`
	PciSlot   int32   `json:"pci_slot_number"`
	HostPciID *string `json:"host_pci_id"`
	NumaNode  *int    `json:"numa_node"`
	Profile   *string `json:"vgpu_profile"`
	FbGiB     *int    `json:"fb_gib"`
	MigSlices *int    `json:"mig_slices"`
	Share     float64 `json:"gpu_share"`
}

type mNumaVM struct {
	Status   string `json:"status"` // aligned | misaligned | partial | unpinned | unknown | no_gpu
	Reason   string `json:"reason,omitempty"`
	GpuNodes []int  `json:"gpu_nodes"`
	CpuNodes []int  `json:"cpu_nodes"`
}

type mVM struct {
	Moref        string    `json:"moref"`
	Name         string    `json:"name"`
	Host         string    `json:"host"`
	HostName     string    `json:"host_name"`
	Cluster      string    `json:"cluster"`
	PowerState   string    `json:"power_state"`
	BiosUUID     string    `json:"bios_uuid"`
	InstanceUUID string    `json:"instance_uuid"`
	NumCPU       int32     `json:"num_cpu"`
	MemoryMB     int64     `json:"memory_mb"`
	GuestID      string    `json:"guest_id"`
	IP           string    `json:"ip,omitempty"`
	ToolsRunning bool      `json:"tools_running"`
	NodeAffinity *string   `json:"numa_node_affinity"`
	CPUAffinity  []int     `json:"cpu_affinity_set"`
	GPUs         []mVMGPU  `json:"gpus"`
	Numa         mNumaVM   `json:"numa"`
	Workload     string    `json:"workload"`
	LogDir       string    `json:"log_dir"`
	LogFiles     []logFile `json:"log_files,omitempty"`
}

type mMigration struct {
	VM          string    `json:"vm"`
	VMName      string    `json:"vm_name"`
	ChainID     int32     `json:"chain_id"`
	EventKeys   []int32   `json:"event_keys"`
	Initiator   string    `json:"initiator"` // drs | user
	Result      string    `json:"result"`    // success | failed
	Source      string    `json:"source_host"`
	Dest        string    `json:"dest_host"`
	SourceIP    string    `json:"source_ip"`
	DestIP      string    `json:"dest_ip"`
	Start       time.Time `json:"start"`
	StunStart   time.Time `json:"stun_start"`
	End         time.Time `json:"end"`
	StunUs      int64     `json:"stun_us"`
	Vgpu        bool      `json:"vgpu"`
	FbGiB       int       `json:"fb_gib"`
	MigrationID int64     `json:"migration_id"`
	SrcLog      string    `json:"source_log"`
	DstLog      *string   `json:"dest_log"`
	Task        *string   `json:"drs_task"`
}

type mCluster struct {
	Moref    string   `json:"moref"`
	Name     string   `json:"name"`
	GpuModel string   `json:"gpu_model"`
	Hosts    []string `json:"hosts"`
}

type manifest struct {
	Version    int            `json:"version"`
	Params     params         `json:"params"`
	Started    time.Time      `json:"started"`
	Vcenter    map[string]any `json:"vcenter"`
	Counters   map[string]any `json:"counters"`
	Power      map[string]any `json:"power_model"`
	Datastore  map[string]any `json:"datastore"`
	Clusters   []mCluster     `json:"clusters"`
	Hosts      []mHost        `json:"hosts"`
	VMs        []mVM          `json:"vms"`
	Vmotions   []mMigration   `json:"vmotions"`
	Summary    map[string]any `json:"summary"`
	Owners     []mOwner       `json:"owners"` // expected ownership of the GPU VMs (owners.go)
	BuildTimes map[string]any `json:"timings_s"`
}

func writeJSON(path string, v any) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	if err := enc.Encode(v); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func strOrNil(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func vgpuMode(g *gpuPlan) string {
	switch g.Mode {
	case "mig":
		return "multiInstanceGpu"
	case "vgpu":
		return "sameSize"
	}
	return ""
}

func buildManifest(e *estate, start time.Time, timings map[string]any) *manifest {
	mf := &manifest{
		Version: 1, Params: e.P, Started: start.UTC(), BuildTimes: timings,
		Vcenter: map[string]any{
			"instance_uuid": e.InstanceUID, "datacenter": "DC0", "api_version": "",
		},
		Counters: map[string]any{
			"power.power.average":    map[string]any{"key": counterPower + counterKeyOffset, "unit": "W", "level": 2},
			"power.energy.summation": map[string]any{"key": counterEnergy + counterKeyOffset, "unit": "J", "level": 3},
			"interval_s":             sampleSec, "realtime_samples_kept": realtimeKeep,
		},
		Power: map[string]any{
			"energy_j":                        "round(watts * interval_s); power_w = round(watts), same watts",
			"powered_off_vms_have_no_samples": true,
			"deterministic":                   "same entity and timestamp always give the same value",
		},
		Datastore: map[string]any{"name": datastoreName, "url": e.DatastoreURL, "folder_query": "dcPath=DC0&dsName=" + datastoreName},
		Vmotions:  []mMigration{},
		Owners:    ownersManifest(e),
	}
	for ci, hosts := range e.ByCluster {
		c := mCluster{Name: "", GpuModel: hosts[0].Model.Key}
		for _, h := range hosts {
			c.Hosts = append(c.Hosts, h.Moref)
		}
		c.Name = fmt.Sprintf("DC0_C%d", ci)
		mf.Clusters = append(mf.Clusters, c)
	}
	counts := map[string]int{}
	for _, h := range e.Hosts {
		mh := mHost{
			Moref: h.Moref, Name: h.Name, Cluster: mf.Clusters[h.Cluster].Name, UUID: h.UUID, Server: h.Model.Server,
			GpuModel: h.Model.Key, VmotionIP: h.VmotionIP, CpuThreads: 2 * threadsPerNode,
			MemoryB: hostMemoryBytes(h.Model), BaseW: h.BaseW, VMs: len(h.VMs),
			Segments: []string{fmt.Sprintf("%04x", h.Segments[0]), fmt.Sprintf("%04x", h.Segments[1])},
		}
		for node := 0; node < 2; node++ {
			mh.Numa = append(mh.Numa, mNuma{Node: node, CpuFirst: node * threadsPerNode, CpuCount: threadsPerNode, PciIDs: h.NumaPci[node]})
		}
		for _, o := range h.Others {
			mh.OtherPci = append(mh.OtherPci, o.ID)
		}
		for _, g := range h.GPUs {
			mg := mGPU{
				PciID: g.PciID, Bridge: g.Bridge, NumaNode: g.Node, VendorID: nvidiaVendor, DeviceID: int(h.Model.DeviceID),
				DeviceName: h.Model.DeviceName, Model: h.Model.Key, MemoryMiB: h.Model.FbGiB * 1024, Mode: g.Mode,
				VgpuMode: strOrNil(vgpuMode(g)), Profile: strOrNil(g.Profile), GraphicType: "sharedDirect", VMs: []string{},
			}
			if g.Mode == "passthrough" {
				mg.GraphicType = "direct"
			}
			for _, v := range g.VMs {
				mg.VMs = append(mg.VMs, v.Moref)
			}
			counts["gpus_"+g.Mode]++
			mh.GPUs = append(mh.GPUs, mg)
		}
		mf.Hosts = append(mf.Hosts, mh)
	}
	for _, v := range e.VMs {
		mv := mVM{
			Moref: v.Moref, Name: v.Name, Host: v.Host.Moref, HostName: v.Host.Name, Cluster: mf.Clusters[v.Cluster].Name,
			PowerState: "poweredOff", BiosUUID: v.BiosUUID, InstanceUUID: v.InstUUID, NumCPU: v.NumCPU,
			MemoryMB: v.MemoryMB, GuestID: v.GuestID, IP: v.IP, ToolsRunning: v.PoweredOn && v.Tools,
			Workload: v.Workload, GPUs: []mVMGPU{}, LogDir: v.Name, LogFiles: e.Logs[v],
		}
		if v.PoweredOn {
			mv.PowerState = "poweredOn"
			counts["vms_powered_on"]++
		}
		if v.Affinity != nil {
			a := joinInts(v.Affinity)
			mv.NodeAffinity = &a
		}
		mv.CPUAffinity = v.CpuPin
		for i, d := range v.GPUs {
			g := mVMGPU{Kind: d.Kind, DeviceKey: d.Key, PciSlot: gpuSlot(i)}
			if d.GPU != nil {
				id, node := d.GPU.PciID, d.GPU.Node
				g.HostPciID, g.NumaNode = &id, &node
				g.Share = d.share()
			}
			if d.Profile != nil {
				p := *d.Profile
				g.Profile, g.FbGiB, g.MigSlices = &p.Name, &p.FbGiB, &p.Slices
			}
			counts["vm_gpu_"+d.Kind]++
			mv.GPUs = append(mv.GPUs, g)
		}
		status, reason := v.numaStatus()
		mv.Numa = mNumaVM{Status: status, Reason: reason, GpuNodes: v.gpuNodes(), CpuNodes: v.Affinity}
		if mv.Numa.GpuNodes == nil {
			mv.Numa.GpuNodes = []int{}
		}
		if mv.Numa.CpuNodes == nil {
			mv.Numa.CpuNodes = []int{}
		}
		counts["numa_"+status]++
		if v.isGPU() {
			counts["gpu_vms"]++
		}
		mf.VMs = append(mf.VMs, mv)
	}
	for _, m := range e.Migs {
		mm := mMigration{
			VM: m.VM.Moref, VMName: m.VM.Name, ChainID: m.ChainID, EventKeys: m.Keys, Initiator: "user", Result: "success",
			Source: m.Src.Moref, Dest: m.Dst.Moref, SourceIP: m.Src.VmotionIP, DestIP: m.Dst.VmotionIP,
			Start: m.Start.UTC(), StunStart: m.StunStart.UTC(), End: m.End.UTC(), StunUs: m.StunUs,
			Vgpu: m.VM.hasVgpu(), FbGiB: m.VM.vgpuFb(), MigrationID: m.Mid, SrcLog: m.SrcLog,
		}
		if m.DRS {
			mm.Initiator = "drs"
			mm.Task = strOrNil(m.Task)
		}
		if m.Failed {
			mm.Result = "failed"
		} else {
			dst := m.DstLog
			mm.DstLog = &dst
		}
		mf.Vmotions = append(mf.Vmotions, mm)
	}
	mf.Summary = map[string]any{
		"clusters": len(e.ByCluster), "hosts": len(e.Hosts), "vms": len(e.VMs), "gpu_vms": counts["gpu_vms"],
		"gpu_vms_unplaced": e.Unplaced, "vmotions": len(e.Migs), "counts": counts,
	}
	return mf
}
