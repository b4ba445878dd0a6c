package main

// Host seeding: 2-socket GPU servers with 2 NUMA nodes whose pciId lists name the GPUs,
// NVIDIA GPUs in hardware.pciDevice, passthrough and graphics info in config.
// h.Hardware is shared between simulator hosts: every host gets a fresh copy.

import (
	"fmt"
	"sort"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25/types"
)

const (
	threadsPerNode = 64
	coresPerHost   = 64
	cpuMhz         = 2800
)

// vendor/device ids are signed 16-bit in the API
func s16(x uint16) int16 { return int16(x) }

func hostMemoryBytes(m *gpuModel) int64 {
	if m.PerHost == 8 {
		return 2048 << 30
	}
	return 1024 << 30
}

func seedHostHardware(h *simulator.HostSystem, hp *hostPlan) {
	m := hp.Model
	mem := hostMemoryBytes(m)

	hw := new(types.HostHardwareInfo)
	hw.SystemInfo = types.HostSystemInfo{
		Vendor: "Dell Inc.",
		Model:  m.Server,
		Uuid:   h.Hardware.SystemInfo.Uuid,
		OtherIdentifyingInfo: []types.HostSystemIdentificationInfo{{
			IdentifierValue: fmt.Sprintf("SVC%05d", hp.Index),
			IdentifierType: &types.ElementDescription{
				Description: types.Description{Label: "Service tag", Summary: "Service tag of the system"},
				Key:         "ServiceTag",
			},
		}},
	}
	hw.CpuPowerManagementInfo = &types.HostCpuPowerManagementInfo{CurrentPolicy: "Balanced"}
	hw.CpuInfo = types.HostCpuInfo{NumCpuPackages: 2, NumCpuCores: coresPerHost, NumCpuThreads: 2 * threadsPerNode, Hz: cpuMhz * 1000000}
	for pkg := 0; pkg < 2; pkg++ {
		ids := make([]int16, threadsPerNode)
		for i := range ids {
			ids[i] = int16(pkg*threadsPerNode + i)
		}
		hw.CpuPkg = append(hw.CpuPkg, types.HostCpuPackage{
			Index: int16(pkg), Vendor: "intel", Hz: cpuMhz * 1000000, BusHz: 100000000,
			Description: "Intel(R) Xeon(R) Platinum 8462Y+", ThreadId: ids,
		})
	}
	hw.MemorySize = mem
	numa := &types.HostNumaInfo{Type: "NUMA", NumNodes: 2}
	for node := 0; node < 2; node++ {
		ids := make([]int16, threadsPerNode)
		for i := range ids {
			ids[i] = int16(node*threadsPerNode + i)
		}
		numa.NumaNode = append(numa.NumaNode, types.HostNumaNode{
			TypeId:            byte(node),
			CpuID:             ids,
			MemoryRangeBegin:  int64(node) * mem / 2,
			MemoryRangeLength: mem / 2,
			PciId:             append([]string(nil), hp.NumaPci[node]...),
		})
	}
	hw.NumaInfo = numa
	hw.SmcPresent = types.NewBool(false)
	// keep the template's chipset devices, then the GPU server's
	hw.PciDevice = append([]types.HostPciDevice(nil), esx.HostHardwareInfo.PciDevice...)
	for _, o := range hp.Others {
		hw.PciDevice = append(hw.PciDevice, types.HostPciDevice{
			Id: o.ID, ClassId: s16(o.Class), Bus: byte(o.Bus), VendorId: s16(o.Vendor), SubVendorId: s16(o.SubVendor),
			VendorName: o.VendorName, DeviceId: s16(o.Device), SubDeviceId: s16(o.Device), DeviceName: o.DeviceName,
			ParentBridge: o.Parent,
		})
	}
	for _, g := range hp.GPUs {
		hw.PciDevice = append(hw.PciDevice, types.HostPciDevice{
			Id: g.PciID, ClassId: s16(0x0302), Bus: byte(g.Bus), VendorId: s16(nvidiaVendor),
			SubVendorId: s16(nvidiaVendor), VendorName: "NVIDIA Corporation", DeviceId: s16(m.DeviceID),
			SubDeviceId: s16(m.SubDeviceID), ParentBridge: g.Bridge, DeviceName: m.DeviceName,
		})
	}
	sort.SliceStable(hw.PciDevice, func(i, j int) bool { return hw.PciDevice[i].Id < hw.PciDevice[j].Id })
	hw.CpuFeature = esx.HostHardwareInfo.CpuFeature
	hw.BiosInfo = &types.HostBIOSInfo{BiosVersion: "2.19.1", Vendor: "Dell Inc."}
	h.Hardware = hw

	sh := *h.Summary.Hardware
	sh.Vendor, sh.Model = hw.SystemInfo.Vendor, m.Server
	sh.MemorySize = mem
	sh.CpuModel = hw.CpuPkg[0].Description
	sh.CpuMhz = cpuMhz
	sh.NumCpuPkgs, sh.NumCpuCores, sh.NumCpuThreads = 2, coresPerHost, 2*threadsPerNode
	h.Summary.Hardware = &sh
}

// seedHostGraphics fills config.graphicsInfo / pciPassthruInfo once the VMs exist.
func seedHostGraphics(h *simulator.HostSystem, hp *hostPlan) {
	m := hp.Model
	cfg := h.Config
	cfg.GraphicsInfo = nil
	cfg.PciPassthruInfo = nil
	gc := &types.HostGraphicsConfig{HostDefaultGraphicsType: "sharedDirect", SharedPassthruAssignmentPolicy: "performance"}
	for _, g := range hp.GPUs {
		gtype := "sharedDirect"
		if g.Mode == "passthrough" {
			gtype = "direct"
		}
		info := types.HostGraphicsInfo{
			DeviceName: m.Product, VendorName: "NVIDIA Corporation", PciId: g.PciID,
			GraphicsType: gtype, MemorySizeInKB: int64(m.FbGiB) << 20,
		}
		for _, v := range g.VMs {
			info.Vm = append(info.Vm, types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref})
		}
		cfg.GraphicsInfo = append(cfg.GraphicsInfo, info)
		gc.DeviceType = append(gc.DeviceType, types.HostGraphicsConfigDeviceType{DeviceId: g.PciID, GraphicsType: gtype})
		pt := g.Mode == "passthrough"
		cfg.PciPassthruInfo = append(cfg.PciPassthruInfo, &types.HostPciPassthruInfo{
			Id: g.PciID, DependentDevice: g.PciID, PassthruCapable: true, PassthruEnabled: pt, PassthruActive: pt && len(g.VMs) > 0,
		})
	}
	for _, o := range hp.Others {
		if o.Passthru {
			cfg.PciPassthruInfo = append(cfg.PciPassthruInfo, &types.HostPciPassthruInfo{
				Id: o.ID, DependentDevice: o.ID, PassthruCapable: true,
			})
		}
	}
	cfg.GraphicsConfig = gc
	cfg.SharedPassthruGpuTypes = nil
	for _, p := range append(append([]vgpuProfile(nil), m.TimeSliced...), m.Mig...) {
		cfg.SharedPassthruGpuTypes = append(cfg.SharedPassthruGpuTypes, p.Name)
	}
}

// fixClusterSummary recomputes the cluster totals from the seeded host hardware.
func fixClusterSummary(c *simulator.ClusterComputeResource) {
	s, ok := c.Summary.(*types.ClusterComputeResourceSummary)
	if !ok {
		return
	}
	s.TotalCpu, s.TotalMemory, s.NumCpuCores, s.NumCpuThreads, s.EffectiveCpu, s.EffectiveMemory = 0, 0, 0, 0, 0, 0
	for _, ref := range c.Host {
		h := simulator.Map.Get(ref).(*simulator.HostSystem)
		hw := h.Summary.Hardware
		s.TotalCpu += hw.CpuMhz * int32(hw.NumCpuCores)
		s.TotalMemory += hw.MemorySize
		s.NumCpuCores += hw.NumCpuCores
		s.NumCpuThreads += hw.NumCpuThreads
	}
	s.EffectiveCpu = s.TotalCpu
	s.EffectiveMemory = s.TotalMemory >> 20
}
