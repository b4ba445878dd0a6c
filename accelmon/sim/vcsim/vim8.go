package main

// Newer vSphere fields that govmomi 0.24's types lack. The XML encoder names xsi:type after
// the Go type's name, so a local type with the same name as the vSphere type, embedding the
// govmomi one by value, is sent to clients as the real type with the extra fields.

import "github.com/vmware/govmomi/vim25/types"

// apiV8 is set when the simulator advertises a vSphere 8 API (-api-version 8.x).
var apiV8 bool

// VirtualPCIPassthroughVmiopBackingInfo adds migrateSupported (7.0.2) and
// vgpuMigrateDataSizeMB / enhancedMigrateCapability (8.0.0.1).
type VirtualPCIPassthroughVmiopBackingInfo struct {
	types.VirtualPCIPassthroughVmiopBackingInfo

	VgpuMigrateDataSizeMB     int32 `xml:"vgpuMigrateDataSizeMB,omitempty"`
	MigrateSupported          *bool `xml:"migrateSupported,omitempty"`
	EnhancedMigrateCapability *bool `xml:"enhancedMigrateCapability,omitempty"`
}

func newVmiopBacking(profile string, fbGiB int) types.BaseVirtualDeviceBackingInfo {
	b := &VirtualPCIPassthroughVmiopBackingInfo{MigrateSupported: types.NewBool(true)}
	b.Vgpu = profile
	if apiV8 {
		// migration data is roughly the framebuffer plus vGPU state
		b.VgpuMigrateDataSizeMB = int32(fbGiB*1024 + 64)
		b.EnhancedMigrateCapability = types.NewBool(true)
	}
	return b
}

// VirtualPCIPassthrough adds VirtualDevice.numaNode (8.0.0.1): the VM's virtual NUMA node
// the device is associated with. Sent only when a vSphere 8 API is advertised.
type VirtualPCIPassthrough struct {
	types.VirtualPCIPassthrough

	NumaNode *int32 `xml:"numaNode,omitempty"`
}

func newPassthrough(dev types.VirtualPCIPassthrough, vnuma int32) types.BaseVirtualDevice {
	if !apiV8 {
		d := dev
		return &d
	}
	return &VirtualPCIPassthrough{VirtualPCIPassthrough: dev, NumaNode: &vnuma}
}
