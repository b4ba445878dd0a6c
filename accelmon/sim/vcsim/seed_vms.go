package main

// VM seeding through the simulator's own CreateVM/PowerOn (in-process SOAP), so every VM is
// a normal simulator VM; GPU devices are VirtualPCIPassthrough with DirectPath, vGPU
// (vmiop) or dynamic DirectPath backings.

import (
	"context"
	"fmt"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

const datastoreName = "LocalDS_0"

func taskResult(ref types.ManagedObjectReference) (types.AnyType, error) {
	t, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return nil, fmt.Errorf("task %s not found", ref)
	}
	if t.Info.Error != nil {
		return nil, fmt.Errorf("task %s: %s", t.Info.DescriptionId, t.Info.Error.LocalizedMessage)
	}
	return t.Info.Result, nil
}

// gpuSlot is the pciSlotNumber of a VM's i-th GPU device: a PCIe root port of its own on
// pciBridge5, 6, 7 (4 holds the NIC), function 0, then 1, ... (KB 2047927 encoding FFF.BBBBB.DDDDD).
// The simulated guests (accelmon/sim/spec.py guest_gpu_slot) place GPU i at the same slot.
// Defined for i < 24 (8 functions × 3 bridges); the estate seeds at most 2 GPUs per VM.
func gpuSlot(i int) int32 {
	return int32((i/3)<<10 | (6+i%3)<<5)
}

func gpuDevice(v *vmPlan, hp *hostPlan, d *vmGPU, i int) types.BaseVirtualDevice {
	m := hp.Model
	unit := int32(18 + i)
	dev := types.VirtualPCIPassthrough{VirtualDevice: types.VirtualDevice{
		Key:           d.Key,
		ControllerKey: 100,
		UnitNumber:    &unit,
		SlotInfo:      &types.VirtualDevicePciBusSlotInfo{PciSlotNumber: gpuSlot(i)},
	}}
	label := fmt.Sprintf("PCI device %d", i)
	switch d.Kind {
	case "passthrough":
		dev.Backing = &types.VirtualPCIPassthroughDeviceBackingInfo{
			VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: m.DeviceName},
			Id:                             d.GPU.PciID,
			DeviceId:                       fmt.Sprintf("%x", m.DeviceID),
			SystemId:                       hp.UUID,
			VendorId:                       s16(nvidiaVendor),
		}
		dev.DeviceInfo = &types.Description{Label: label, Summary: d.GPU.PciID + " | " + m.DeviceName}
	case "dynamic":
		b := &types.VirtualPCIPassthroughDynamicBackingInfo{
			AllowedDevice: []types.VirtualPCIPassthroughAllowedDevice{{VendorId: nvidiaVendor, DeviceId: int32(m.DeviceID)}},
			CustomLabel:   m.Key,
		}
		if v.PoweredOn && d.GPU != nil {
			b.AssignedId = d.GPU.PciID
		}
		dev.Backing = b
		dev.DeviceInfo = &types.Description{Label: label, Summary: "Dynamic DirectPath IO: " + m.Key}
	case "vgpu":
		dev.Backing = newVmiopBacking(d.Profile.Name, d.Profile.FbGiB)
		dev.DeviceInfo = &types.Description{Label: label, Summary: "NVIDIA GRID vGPU " + d.Profile.Name}
	}
	return newPassthrough(dev, v.vnumaNode(d))
}

func vmSpec(v *vmPlan, hp *hostPlan) (types.VirtualMachineConfigSpec, error) {
	spec := types.VirtualMachineConfigSpec{
		Name:              v.Name,
		GuestId:           v.GuestID,
		NumCPUs:           v.NumCPU,
		NumCoresPerSocket: v.NumCPU,
		MemoryMB:          v.MemoryMB,
		Uuid:              v.BiosUUID,
		InstanceUuid:      v.InstUUID,
		Version:           "vmx-19",
		Files:             &types.VirtualMachineFileInfo{VmPathName: "[" + datastoreName + "]"},
	}
	var devices object.VirtualDeviceList
	scsi, err := devices.CreateSCSIController("pvscsi")
	if err != nil {
		return spec, err
	}
	disk := devices.CreateDisk(scsi.(types.BaseVirtualController), types.ManagedObjectReference{},
		spec.Files.VmPathName+" "+v.Name+"/"+v.Name+".vmdk")
	disk.CapacityInKB = 1024
	nic, err := devices.CreateEthernetCard("vmxnet3", &types.VirtualEthernetCardNetworkBackingInfo{
		VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: "VM Network"},
	})
	if err != nil {
		return spec, err
	}
	devices = append(devices, scsi, disk, nic)
	for i, d := range v.GPUs {
		devices = append(devices, gpuDevice(v, hp, d, i))
	}
	spec.DeviceChange, err = devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return spec, err
	}
	opt := func(k, val string) {
		spec.ExtraConfig = append(spec.ExtraConfig, &types.OptionValue{Key: k, Value: val})
	}
	if v.Affinity != nil {
		opt("numa.nodeAffinity", joinInts(v.Affinity))
	}
	if v.CpuPin != nil {
		set := make([]int32, len(v.CpuPin))
		for i, c := range v.CpuPin {
			set[i] = int32(c)
		}
		spec.CpuAffinity = &types.VirtualMachineAffinityInfo{AffinitySet: set}
	}
	for _, d := range v.GPUs {
		if d.Kind != "vgpu" {
			opt("pciPassthru.use64bitMMIO", "TRUE")
			opt("pciPassthru.64bitMMIOSizeGB", "256")
			break
		}
	}
	return spec, nil
}

func createVMs(ctx context.Context, c *vim25.Client, e *estate, vmFolder types.ManagedObjectReference,
	pools []types.ManagedObjectReference) error {
	for _, v := range e.VMs {
		hp := v.Host
		spec, err := vmSpec(v, hp)
		if err != nil {
			return err
		}
		host := types.ManagedObjectReference{Type: "HostSystem", Value: hp.Moref}
		folder, pool := ownerPlacement(v, ownerRefs, vmFolder, pools[hp.Cluster])
		res, err := methods.CreateVM_Task(ctx, c, &types.CreateVM_Task{
			This: folder, Config: spec, Pool: pool, Host: &host,
		})
		if err != nil {
			return fmt.Errorf("create %s: %w", v.Name, err)
		}
		r, err := taskResult(res.Returnval)
		if err != nil {
			return fmt.Errorf("create %s: %w", v.Name, err)
		}
		ref := r.(types.ManagedObjectReference)
		v.Moref = ref.Value
		if v.PoweredOn {
			pres, err := methods.PowerOnVM_Task(ctx, c, &types.PowerOnVM_Task{This: ref})
			if err != nil {
				return fmt.Errorf("power on %s: %w", v.Name, err)
			}
			if _, err := taskResult(pres.Returnval); err != nil {
				return fmt.Errorf("power on %s: %w", v.Name, err)
			}
		}
	}
	return nil
}

// seedGuest sets what VMware Tools would report, and a realistic boot time.
func seedGuest(e *estate, start time.Time) {
	for _, v := range e.VMs {
		vm := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref}).(*simulator.VirtualMachine)
		if !v.PoweredOn {
			continue
		}
		boot := start.Add(-time.Duration(v.BootAgo * float64(time.Second)))
		vm.Runtime.BootTime = &boot
		vm.Summary.Runtime.BootTime = &boot
		g := vm.Guest
		if !v.Tools {
			g.ToolsRunningStatus = string(types.VirtualMachineToolsRunningStatusGuestToolsNotRunning)
			continue
		}
		g.ToolsStatus = types.VirtualMachineToolsStatusToolsOk
		g.ToolsVersionStatus2 = string(types.VirtualMachineToolsVersionStatusGuestToolsCurrent)
		g.ToolsRunningStatus = string(types.VirtualMachineToolsRunningStatusGuestToolsRunning)
		g.ToolsVersion = "12389"
		g.GuestState = "running"
		g.GuestId = v.GuestID
		g.HostName = v.Name
		g.IpAddress = v.IP
		for i := range g.Net {
			g.Net[i].IpAddress = []string{v.IP}
			g.Net[i].IpConfig = &types.NetIpConfigInfo{IpAddress: []types.NetIpConfigInfoIpAddress{{
				IpAddress: v.IP, PrefixLength: 16, State: "preferred",
			}}}
		}
		vm.Summary.Guest.IpAddress = v.IP
		vm.Summary.Guest.HostName = v.Name
		vm.Summary.Guest.ToolsStatus = g.ToolsStatus
		vm.Summary.Guest.ToolsRunningStatus = g.ToolsRunningStatus
		vm.Summary.Guest.GuestId = v.GuestID
	}
}
