package main

// vMotion history: events (start/emigrating/end or failure, paired by chainId) and, in each
// migrated VM's datastore folder, vmware.log files in real vmx format with stun times
// realistic for the vGPU framebuffer (published V100 32 GB on 10 Gb: 1 GB ≈ 2 s, 8 GB ≈ 12 s,
// 32 GB ≈ 39 s). A successful vMotion rotates the log: the destination vmx writes a fresh
// vmware.log and the previous one becomes vmware-N.log (higher N = newer).

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
)

const maxSwitchoverMsg = "[msg.checkpoint.migration.maxSwitchoverTimeExceeded] The migration has exceeded the maximum " +
	"switchover time of 100 second(s). ESX has preemptively failed the migration to allow the VM to continue running " +
	"on the source. To avoid this failure, either increase the maximum allowable switchover time or wait until the VM " +
	"is performing a less intensive workload."

type migration struct {
	VM        *vmPlan
	Src, Dst  *hostPlan
	DRS       bool
	Failed    bool
	Start     time.Time
	StunStart time.Time
	End       time.Time
	StunUs    int64
	Mid       int64
	ChainID   int32
	Keys      []int32
	SrcLog    string
	DstLog    string
	Task      string // DRS: the Drm.ExecuteVMotionLRO task
}

// stunSeconds interpolates the published vGPU stun figures (framebuffer GB -> seconds).
func stunSeconds(fb float64) float64 {
	pts := [][2]float64{{0, 0.3}, {1, 2}, {8, 12}, {32, 39}}
	for i := 1; i < len(pts); i++ {
		if fb <= pts[i][0] {
			a, b := pts[i-1], pts[i]
			return a[1] + (fb-a[0])*(b[1]-a[1])/(b[0]-a[0])
		}
	}
	return 39 + (fb-32)*(39.0-12.0)/24.0
}

func (e *estate) otherHost(h *hostPlan, not *hostPlan) *hostPlan {
	hosts := e.ByCluster[h.Cluster]
	for i := 1; i < len(hosts); i++ {
		c := hosts[(h.Index-hosts[0].Index+i)%len(hosts)]
		if c != h && c != not {
			return c
		}
	}
	return nil
}

// planMigrations decides which VMs moved, when, how long they were stunned.
func (e *estate) planMigrations(now time.Time) []*migration {
	if e.P.HostsPerCluster < 2 {
		return nil
	}
	type want struct {
		v      *vmPlan
		drs    bool
		failed bool
	}
	var wants []want
	byForced := map[int]*vmPlan{}
	var plain []*vmPlan
	var vgpuOn []*vmPlan
	for _, v := range e.VMs {
		if !v.PoweredOn {
			continue
		}
		if v.Forced >= 0 {
			byForced[v.Forced] = v
		}
		if !v.isGPU() {
			plain = append(plain, v)
		} else if v.hasVgpu() {
			vgpuOn = append(vgpuOn, v)
		}
	}
	if v := byForced[1]; v != nil {
		wants = append(wants, want{v, false, true}, want{v, true, false})
	}
	if v := byForced[3]; v != nil {
		wants = append(wants, want{v, false, false})
	}
	if v := byForced[4]; v != nil {
		wants = append(wants, want{v, true, false})
	}
	if len(plain) >= 2 {
		wants = append(wants, want{plain[0], true, false}, want{plain[1], false, false}, want{plain[1], false, false})
		plain[1].GarbageLog = true
	}
	extraGPU, extraPlain := len(vgpuOn)/20, len(e.VMs)/500
	if extraGPU > 60 {
		extraGPU = 60
	}
	if extraPlain > 20 {
		extraPlain = 20
	}
	if e.P.ExtraVmotions >= 0 {
		extraGPU, extraPlain = e.P.ExtraVmotions, 0
	}
	used := map[*vmPlan]bool{}
	for _, w := range wants {
		used[w.v] = true
	}
	pick := func(pool []*vmPlan, n int) {
		for tries := 0; n > 0 && tries < 10*len(pool)+10 && len(pool) > 0; tries++ {
			v := pool[e.rng.Intn(len(pool))]
			if used[v] {
				continue
			}
			used[v] = true
			wants = append(wants, want{v, e.rng.Float64() < 0.5, e.rng.Float64() < 0.05})
			n--
		}
	}
	pick(vgpuOn, extraGPU)
	pick(plain, extraPlain)

	// time slots over the last ~55 minutes (inside the 1 h realtime perf window)
	n := len(wants)
	var out []*migration
	last := map[*vmPlan]*migration{}
	window := 50 * time.Minute
	base := now.Add(-56 * time.Minute)
	perVM := map[*vmPlan][]int{}
	for i, w := range wants {
		perVM[w.v] = append(perVM[w.v], i)
	}
	for i, w := range wants {
		v := w.v
		m := &migration{VM: v, DRS: w.drs, Failed: w.failed}
		m.Start = base.Add(time.Duration(float64(window) * float64(i) / float64(n)))
		if prev := last[v]; prev != nil && m.Start.Before(prev.End.Add(5*time.Minute)) {
			m.Start = prev.End.Add(5 * time.Minute)
		}
		m.Start = m.Start.Add(time.Duration(e.rng.Intn(900)) * time.Millisecond)
		memGB := float64(v.MemoryMB) / 1024
		precopy := math.Max(2, memGB*0.85) + float64(v.vgpuFb())*0.4
		var stun float64
		switch {
		case w.failed:
			stun = 100 + 0.3 + 0.5*e.rng.Float64()
		case v.hasVgpu():
			stun = stunSeconds(float64(v.vgpuFb())) * (1 + 0.08*(2*e.rng.Float64()-1))
		default:
			stun = 0.12 + 0.5*e.rng.Float64()
		}
		m.StunStart = m.Start.Add(time.Duration(precopy * float64(time.Second)))
		m.StunUs = int64(stun * 1e6)
		m.End = m.StunStart.Add(time.Duration(m.StunUs)*time.Microsecond + 1500*time.Millisecond)
		m.Mid = m.Start.UnixNano()/1000 + int64(e.rng.Intn(1000))
		last[v] = m
		out = append(out, m)
	}
	// hosts: walk each VM's migrations backwards from where it is now
	for v, idx := range perVM {
		cur := v.Host
		for j := len(idx) - 1; j >= 0; j-- {
			m := out[idx[j]]
			if m.Failed {
				m.Src, m.Dst = cur, e.otherHost(cur, nil)
				continue
			}
			m.Dst = cur
			m.Src = e.otherHost(cur, nil)
			cur = m.Src
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	for _, m := range out {
		m.VM.Migrations = append(m.VM.Migrations, m)
	}
	return out
}

// ---- events ----

// patchEventInfo fixes the broken VmMigratedEvent template (PostEvent would panic) and adds
// message templates for the migration events the simulator lacks. Call before Create().
func patchEventInfo() {
	formats := map[string]string{
		"VmMigratedEvent":         "Migration of virtual machine {{.Vm.Name}} from {{.SourceHost.Name}}, {{.SourceDatastore.Name}} to {{.Host.Name}}, {{.Ds.Name}} completed",
		"DrsVmMigratedEvent":      "DRS migrated {{.Vm.Name}} from {{.SourceHost.Name}} to {{.Host.Name}} in cluster {{.ComputeResource.Name}} in {{.Datacenter.Name}}",
		"VmBeingHotMigratedEvent": "Migrating {{.Vm.Name}} from {{.Host.Name}}, {{.Ds.Name}} to {{.DestHost.Name}}, {{.DestDatastore.Name}} in {{.Datacenter.Name}}",
		"VmEmigratingEvent":       "Migrating {{.Vm.Name}} off host {{.Host.Name}} in {{.Datacenter.Name}}",
		"VmFailedMigrateEvent":    "Cannot migrate {{.Vm.Name}} from {{.Host.Name}}, {{.Ds.Name}} to {{.DestHost.Name}}, {{.DestDatastore.Name}} in {{.Datacenter.Name}}",
	}
	for i := range esx.EventInfo {
		if f, ok := formats[esx.EventInfo[i].Key]; ok {
			esx.EventInfo[i].FullFormat = f
			delete(formats, esx.EventInfo[i].Key)
		}
	}
	for k, f := range formats {
		esx.EventInfo = append(esx.EventInfo, types.EventDescriptionEventDetail{
			Key: k, Description: k, Category: "info", FullFormat: f,
		})
	}
}

type eventRefs struct {
	em      types.ManagedObjectReference
	dc      *types.DatacenterEventArgument
	ds      *types.DatastoreEventArgument
	cluster []*types.ComputeResourceEventArgument
}

func hostArg(h *hostPlan) types.HostEventArgument {
	return types.HostEventArgument{
		EntityEventArgument: types.EntityEventArgument{Name: h.Name},
		Host:                types.ManagedObjectReference{Type: "HostSystem", Value: h.Moref},
	}
}

func (r *eventRefs) vmEvent(v *vmPlan, h *hostPlan) types.VmEvent {
	ha := hostArg(h)
	return types.VmEvent{Event: types.Event{
		Datacenter: r.dc, ComputeResource: r.cluster[h.Cluster], Host: &ha, Ds: r.ds,
		Vm: &types.VmEventArgument{
			EntityEventArgument: types.EntityEventArgument{Name: v.Name},
			Vm:                  types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref},
		},
	}}
}

type timedEvent struct {
	at  time.Time
	ev  types.BaseEvent
	m   *migration
	usr string
}

// postMigrationEvents posts every migration's events in time order; returns the first key.
func postMigrationEvents(ctx context.Context, c *vim25.Client, r *eventRefs, migs []*migration) (int32, error) {
	var evs []timedEvent
	for _, m := range migs {
		v := m.VM
		user := "VSPHERE.LOCAL\\Administrator"
		if m.DRS {
			user = ""
		}
		dst := hostArg(m.Dst)
		evs = append(evs,
			timedEvent{m.Start, &types.VmBeingHotMigratedEvent{VmEvent: r.vmEvent(v, m.Src), DestHost: dst, DestDatacenter: r.dc, DestDatastore: r.ds}, m, user},
			timedEvent{m.Start.Add(400 * time.Millisecond), &types.VmEmigratingEvent{VmEvent: r.vmEvent(v, m.Src)}, m, user},
		)
		switch {
		case m.Failed:
			evs = append(evs, timedEvent{m.End, &types.VmFailedMigrateEvent{
				VmEvent: r.vmEvent(v, m.Src), DestHost: dst, DestDatacenter: r.dc, DestDatastore: r.ds,
				Reason: types.LocalizedMethodFault{Fault: &types.GenericVmConfigFault{Reason: maxSwitchoverMsg}, LocalizedMessage: maxSwitchoverMsg},
			}, m, user})
		case m.DRS:
			evs = append(evs, timedEvent{m.End, &types.DrsVmMigratedEvent{VmMigratedEvent: types.VmMigratedEvent{
				VmEvent: r.vmEvent(v, m.Dst), SourceHost: hostArg(m.Src), SourceDatacenter: r.dc, SourceDatastore: r.ds,
			}}, m, user})
		default:
			evs = append(evs, timedEvent{m.End, &types.VmMigratedEvent{
				VmEvent: r.vmEvent(v, m.Dst), SourceHost: hostArg(m.Src), SourceDatacenter: r.dc, SourceDatastore: r.ds,
			}, m, user})
		}
	}
	sort.SliceStable(evs, func(i, j int) bool { return evs[i].at.Before(evs[j].at) })
	var first int32
	for _, te := range evs {
		if _, err := methods.PostEvent(ctx, c, &types.PostEvent{This: r.em, EventToPost: te.ev}); err != nil {
			return 0, err
		}
		ev := te.ev.GetEvent() // the simulator keeps this very object: fix chain and time
		if te.m.ChainID == 0 {
			te.m.ChainID = ev.Key
		}
		if first == 0 {
			first = ev.Key
		}
		ev.ChainId = te.m.ChainID
		ev.CreatedTime = te.at
		ev.UserName = te.usr
		te.m.Keys = append(te.m.Keys, ev.Key)
	}
	for _, m := range migs {
		if m.DRS {
			drsTask(m)
		}
	}
	return first, nil
}

// drsTask records a DRS move as vCenter does: a completed Drm.ExecuteVMotionLRO task on the VM
// (in TaskManager.recentTask; this simulator has no task history collector).
func drsTask(m *migration) {
	ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: m.VM.Moref}
	t := simulator.CreateTask(ref, "ExecuteVMotionLRO", nil)
	start, end := m.Start.Add(-300*time.Millisecond), m.End
	t.Info.DescriptionId = "Drm.ExecuteVMotionLRO"
	t.Info.Name = ""
	t.Info.EntityName = m.VM.Name
	t.Info.Reason = &types.TaskReasonSystem{}
	t.Info.State = types.TaskInfoStateSuccess
	t.Info.QueueTime, t.Info.StartTime, t.Info.CompleteTime = start, &start, &end
	t.Info.EventChainId = m.ChainID
	m.Task = t.Self.Value
}

// backdateEvents moves the creation/power-on events (posted at startup) before the
// migrations, so event keys grow with time as in vCenter.
func backdateEvents(ctx context.Context, c *vim25.Client, em types.ManagedObjectReference, before int32, at time.Time) error {
	res, err := methods.QueryEvents(ctx, c, &types.QueryEvents{This: em, Filter: types.EventFilterSpec{MaxCount: 1000}})
	if err != nil {
		return err
	}
	for _, be := range res.Returnval {
		ev := be.GetEvent()
		if before == 0 || ev.Key < before {
			ev.CreatedTime = at.Add(time.Duration(ev.Key) * time.Millisecond)
		}
	}
	return nil
}

// ---- vmware.log ----

type vmxLog struct {
	old   bool
	lines []string
}

func (l *vmxLog) add(t time.Time, thread, level, msg string) {
	ts := t.UTC().Format("2006-01-02T15:04:05.000Z")
	if l.old {
		code := map[string]string{"I": "I125", "W": "W115", "E": "E105"}[level]
		l.lines = append(l.lines, fmt.Sprintf("%s| %s| %s: %s", ts, thread, code, msg))
		return
	}
	code := map[string]string{"I": "In(05)", "W": "Wa(03)", "E": "Er(02)"}[level]
	l.lines = append(l.lines, fmt.Sprintf("%s %s %s - %s", ts, code, thread, msg))
}

func (l *vmxLog) header(t time.Time, v *vmPlan, h *hostPlan, pid int) {
	l.add(t, "vmx", "I", fmt.Sprintf("Log for VMware ESX pid=%d version=7.0.3 build=build-21930508 option=Release", pid))
	l.add(t, "vmx", "I", "The host is x86_64.")
	l.add(t, "vmx", "I", "Host codepage=UTF-8 encoding=UTF-8")
	l.add(t, "vmx", "I", "Hostname="+h.Name)
	l.add(t, "vmx", "I", fmt.Sprintf("DICT --- CONFIGURATION /vmfs/volumes/%s/%s/%s.vmx", datastoreName, v.Name, v.Name))
	l.add(t, "vmx", "I", fmt.Sprintf("DICT             displayName = \"%s\"", v.Name))
	l.add(t, "vmx", "I", fmt.Sprintf("DICT                numvcpus = \"%d\"", v.NumCPU))
	l.add(t, "vmx", "I", fmt.Sprintf("DICT                 memSize = \"%d\"", v.MemoryMB))
	if v.Affinity != nil {
		l.add(t, "vmx", "I", fmt.Sprintf("DICT        numa.nodeAffinity = \"%s\"", joinInts(v.Affinity)))
	}
	for i, g := range v.GPUs {
		l.add(t, "vmx", "I", fmt.Sprintf("DICT     pciPassthru%d.present = \"TRUE\"", i))
		if g.Kind == "vgpu" {
			l.add(t, "vmx", "I", fmt.Sprintf("DICT        pciPassthru%d.vgpu = \"%s\"", i, g.Profile.Name))
		} else if g.GPU != nil {
			l.add(t, "vmx", "I", fmt.Sprintf("DICT          pciPassthru%d.id = \"%s\"", i, g.GPU.PciID))
		}
	}
	t = t.Add(850 * time.Millisecond)
	for _, g := range v.GPUs {
		if g.Kind == "vgpu" && g.GPU != nil {
			l.add(t, "vmx", "I", "vmiop_log: Loading module /usr/lib64/vmware/plugin/libnvidia-vgx.so")
			l.add(t, "vmx", "I", fmt.Sprintf("vmiop_log: (0x0): gpu-pci-id : %s", g.GPU.PciID))
			l.add(t, "vmx", "I", fmt.Sprintf("vmiop_log: (0x0): vGPU type : %s, framebuffer %d MB", g.Profile.Name, g.Profile.FbGiB*1024))
		}
	}
	l.add(t.Add(2*time.Second), "vcpu-0", "I", "Tools: Running status rpc handler: 0 => 1.")
	l.add(t.Add(40*time.Second), "vmx", "I", "Guest: toolbox: Version: 12.3.5, build-22544099")
}

func (l *vmxLog) sourceSide(m *migration) {
	v := m.VM
	l.add(m.Start, "vmx", "I", fmt.Sprintf("MigrateVMXdrToSpec: type: 1 srcIp=<%s> dstIp=<%s> mid=%x uuid=%s priority=high "+
		"checksumMemory=no maxDowntime=0 encrypted=0 resumeDuringPageIn=no latencyAware=yes diskOpFile=",
		m.Src.VmotionIP, m.Dst.VmotionIP, m.Mid, v.BiosUUID))
	l.add(m.Start, "vmx", "I", "MigrateSetState: Transitioning from state 0 to 1.")
	l.add(m.Start.Add(60*time.Millisecond), "vmx", "I",
		fmt.Sprintf("VMXVmdb_SetMigrationHostLogState: hostlog state transits to emigrating for migrate 'from' mid %d", m.Mid))
	l.add(m.Start.Add(120*time.Millisecond), "vmx", "I", "MigrateSetState: Transitioning from state 1 to 2.")
	s := m.StunStart
	l.add(s, "vmx", "I", "Migrate: VM starting stun, waiting 100 seconds for go/no-go message.")
	l.add(s.Add(20*time.Millisecond), "vmx", "I", "Migrate: VM successfully stunned.")
	stun := time.Duration(m.StunUs) * time.Microsecond
	if v.hasVgpu() {
		l.add(s.Add(50*time.Millisecond), "vmx", "I", "vmiop_log: (0x0): Start saving vGPU state")
		l.add(s.Add(stun*2/5), "vmx", "I", "vmiop_log: (0x0): Saving vGPU state done")
	}
	l.add(s.Add(stun*2/5+10*time.Millisecond), "vmx", "I", "MigrateSetState: Transitioning from state 2 to 3.")
	if m.Failed {
		fail := s.Add(100 * time.Second)
		l.add(fail, "vmx", "E", maxSwitchoverMsg)
		l.add(fail.Add(5*time.Millisecond), "vmx", "I", "Migrate: cleaning up migration state.")
		l.add(fail.Add(8*time.Millisecond), "vmx", "I", "MigrateSetState: Transitioning from state 3 to 5.")
		l.add(s.Add(stun), "vcpu-0", "I", fmt.Sprintf("Checkpoint_Unstun: vm stopped for %d us", m.StunUs))
		l.add(s.Add(stun+5*time.Millisecond), "vmx", "I", "MigrateSetState: Transitioning from state 5 to 0.")
		return
	}
	l.add(s.Add(stun), "vmx", "I", "MigrateSetState: Transitioning from state 3 to 4.")
	l.add(s.Add(stun+200*time.Millisecond), "vmx", "I", "Migrate: Powering off")
	l.add(s.Add(stun+900*time.Millisecond), "vmx", "I", "VMX exit (0).")
}

func (l *vmxLog) destSide(m *migration, pid int) {
	v := m.VM
	t0 := m.Start.Add(300 * time.Millisecond)
	l.header(t0, v, m.Dst, pid)
	l.lines = l.lines[:len(l.lines)-2] // no tools lines before the VM resumes
	l.add(t0.Add(900*time.Millisecond), "vmx", "I", fmt.Sprintf("Migrate_Open: Restoring from <%s> with migration id %d", m.Src.VmotionIP, m.Mid))
	l.add(t0.Add(910*time.Millisecond), "vmx", "I", "MigrateSetState: Transitioning from state 0 to 11.")
	l.add(t0.Add(960*time.Millisecond), "vmx", "I",
		fmt.Sprintf("VMXVmdb_SetMigrationHostLogState: hostlog state transits to immigrating for migrate 'to' mid %d", m.Mid))
	s := m.StunStart
	stun := time.Duration(m.StunUs) * time.Microsecond
	l.add(s.Add(100*time.Millisecond), "vmx", "I", "MigrateSetState: Transitioning from state 11 to 12.")
	if v.hasVgpu() {
		l.add(s.Add(stun*9/20), "vmx", "I", "vmiop_log: (0x0): Start restoring vGPU state")
		l.add(s.Add(stun*19/20), "vmx", "I", "vmiop_log: (0x0): Finished restoring vGPU state")
	}
	l.add(s.Add(stun), "vcpu-0", "I", fmt.Sprintf("Checkpoint_Unstun: vm stopped for %d us", m.StunUs))
	l.add(s.Add(stun+3*time.Millisecond), "vmx", "I", "MigrateSetState: Transitioning from state 12 to 0.")
	l.add(s.Add(stun+2*time.Second), "vcpu-0", "I", "Tools: Running status rpc handler: 0 => 1.")
}

var garbage = []string{
	"\x00\x00\x00\x00\xff\xfe garbage \x01\x02",
	"2024-05-01T10:0",
	"%s In(05) vcpu-0 - Checkpoint_Unstun: vm stopped for abc us",
}

type logFile struct {
	Name    string `json:"name"`
	Bytes   int    `json:"bytes"`
	Garbage int    `json:"garbage_lines"`
}

// writeVMLogs writes the VM's vmware.log (and rotated vmware-N.log) files.
func writeVMLogs(dir string, v *vmPlan, start time.Time, seq int) ([]logFile, error) {
	old := seq%3 == 0
	v.LogOld = old
	boot := start.Add(-time.Duration(v.BootAgo * float64(time.Second)))
	first := v.Host
	if len(v.Migrations) > 0 {
		first = v.Migrations[0].Src
	}
	cur := &vmxLog{old: old}
	cur.header(boot, v, first, 2000000+seq*17)
	var logs []*vmxLog
	for i, m := range v.Migrations {
		cur.sourceSide(m)
		if m.Failed {
			continue
		}
		logs = append(logs, cur)
		cur = &vmxLog{old: old}
		cur.destSide(m, 2100000+seq*17+i)
	}
	nGarbage := 0
	if v.GarbageLog {
		t := v.Migrations[len(v.Migrations)-1].End.Add(30 * time.Second)
		cur.lines = append(cur.lines, garbage[0], garbage[1], fmt.Sprintf(garbage[2], t.UTC().Format("2006-01-02T15:04:05.000Z")))
		cur.add(t.Add(time.Second), "vmx", "I", "Tools: Running status rpc handler: 1 => 1.")
		nGarbage = len(garbage)
	}
	logs = append(logs, cur)
	var out []logFile
	for i, l := range logs {
		name := fmt.Sprintf("vmware-%d.log", i+1)
		g := 0
		if i == len(logs)-1 {
			name, g = "vmware.log", nGarbage
		}
		data := strings.Join(l.lines, "\n") + "\n"
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			return nil, err
		}
		out = append(out, logFile{Name: name, Bytes: len(data), Garbage: g})
	}
	for _, m := range v.Migrations {
		m.SrcLog, m.DstLog = "", ""
	}
	// record which file holds each side of each migration
	idx := 0
	for _, m := range v.Migrations {
		m.SrcLog = out[idx].Name
		if !m.Failed {
			idx++
			m.DstLog = out[idx].Name
		}
	}
	return out, nil
}
