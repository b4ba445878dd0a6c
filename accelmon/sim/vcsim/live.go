package main

// Live changes while serving, for incremental-collection tests: POST /accelmon/vmotion
// migrates a VM now, as vCenter would show it: runtime.host changes (visible to
// WaitForUpdatesEx), host graphicsInfo follows a vGPU, new events are posted, the source side
// is appended to vmware.log and a successful move rotates it (vmware.log -> vmware-N.log).
// Basic auth with the simulator's credentials. The manifest file is rewritten afterwards.

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

type live struct {
	mu             sync.Mutex
	e              *estate
	c              *vim25.Client
	refs           *eventRefs
	pm             *perfManager
	user, pass     string
	manifestPath   string
	start          time.Time
	timings        map[string]any
	extra          map[string]any // added to the manifest's vcenter section
	sessionManager types.ManagedObjectReference
}

func (l *live) register(s *simulator.Service) {
	s.HandleFunc("/accelmon/vmotion", l.vmotionHandler)
}

// requireAuth wraps the server: like vCenter, /folder needs a session cookie or basic auth
// (the simulator itself serves datastore files to anyone).
func (l *live) requireAuth(inner http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/folder") && !l.authorized(r) {
			w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
			http.Error(w, "401 Unauthorized", http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
	})
}

func (l *live) authorized(r *http.Request) bool {
	if u, p, ok := r.BasicAuth(); ok {
		return subtle.ConstantTimeCompare([]byte(u), []byte(l.user)) == 1 &&
			subtle.ConstantTimeCompare([]byte(p), []byte(l.pass)) == 1
	}
	cookie, err := r.Cookie(soap.SessionCookieName)
	if err != nil || cookie.Value == "" {
		return false
	}
	res, err := methods.SessionIsActive(r.Context(), l.c, &types.SessionIsActive{
		This: l.sessionManager, SessionID: cookie.Value, UserName: l.user,
	})
	return err == nil && res.Returnval
}

func httpError(w http.ResponseWriter, code int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": fmt.Sprintf(format, args...)})
}

func (l *live) vmotionHandler(w http.ResponseWriter, r *http.Request) {
	u, p, ok := r.BasicAuth()
	if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(l.user)) != 1 ||
		subtle.ConstantTimeCompare([]byte(p), []byte(l.pass)) != 1 {
		httpError(w, http.StatusUnauthorized, "unauthorized")
		return
	}
	if r.Method != http.MethodPost {
		httpError(w, http.StatusMethodNotAllowed, "POST only")
		return
	}
	q := r.URL.Query()
	l.mu.Lock()
	defer l.mu.Unlock()
	m, code, err := l.vmotion(q.Get("vm"), q.Get("dest"), q.Get("fail") == "1", q.Get("drs") == "1")
	if err != nil {
		httpError(w, code, "%v", err)
		return
	}
	mf := buildManifest(l.e, l.start, l.timings)
	for k, v := range l.extra {
		mf.Vcenter[k] = v
	}
	if err := writeJSON(l.manifestPath, mf); err != nil {
		httpError(w, http.StatusInternalServerError, "manifest: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(mf.Vmotions[len(mf.Vmotions)-1])
	_ = m
}

func (l *live) vmotion(vmRef, destRef string, fail, drs bool) (*migration, int, error) {
	e := l.e
	var v *vmPlan
	for _, x := range e.VMs {
		if x.Moref == vmRef {
			v = x
			break
		}
	}
	switch {
	case v == nil:
		return nil, http.StatusNotFound, fmt.Errorf("no VM %q", vmRef)
	case !v.PoweredOn:
		return nil, http.StatusConflict, fmt.Errorf("%s is powered off", vmRef)
	}
	for _, d := range v.GPUs {
		if d.Kind != "vgpu" {
			return nil, http.StatusConflict, fmt.Errorf("%s has a DirectPath device and cannot be migrated", vmRef)
		}
	}
	src := v.Host
	dst := e.otherHost(src, nil)
	if destRef != "" {
		dst = nil
		for _, h := range e.ByCluster[src.Cluster] {
			if h.Moref == destRef && h != src {
				dst = h
			}
		}
	}
	if dst == nil {
		return nil, http.StatusConflict, fmt.Errorf("no destination host %q in the VM's cluster", destRef)
	}
	m := &migration{VM: v, Src: src, Dst: dst, DRS: drs, Failed: fail}
	var newGPU *gpuPlan
	if !fail && v.hasVgpu() {
		newGPU = e.findVgpuSlot(e.gpuOrder(dst, -1), v.GPUs[0].Profile)
		if newGPU == nil {
			return nil, http.StatusConflict, fmt.Errorf("no free %s vGPU slot on %s", v.GPUs[0].Profile.Name, dst.Name)
		}
	}
	// timing: the migration has just completed
	memGB := float64(v.MemoryMB) / 1024
	precopy := math.Max(2, memGB*0.85) + float64(v.vgpuFb())*0.4
	stun := 0.12 + 0.5*e.rng.Float64()
	switch {
	case fail:
		stun = 100.3 + 0.5*e.rng.Float64()
	case v.hasVgpu():
		stun = stunSeconds(float64(v.vgpuFb())) * (1 + 0.08*(2*e.rng.Float64()-1))
	}
	m.StunUs = int64(stun * 1e6)
	m.End = time.Now()
	m.StunStart = m.End.Add(-time.Duration(m.StunUs)*time.Microsecond - 1500*time.Millisecond)
	m.Start = m.StunStart.Add(-time.Duration(precopy * float64(time.Second)))
	m.Mid = m.Start.UnixNano()/1000 + int64(e.rng.Intn(1000))

	ctx := context.Background()
	if _, err := postMigrationEvents(ctx, l.c, l.refs, []*migration{m}); err != nil {
		return nil, http.StatusInternalServerError, err
	}
	if !fail {
		// the plan is read by QueryPerf under the PerformanceManager lock
		simulator.Map.WithLock(l.pm, func() {
			d := v.GPUs[0]
			if newGPU != nil {
				old := d.GPU
				old.VMs = removeVM(old.VMs, v)
				if d.Profile.Slices > 0 {
					old.Used -= d.Profile.Slices
				} else {
					old.Used--
				}
				if old.Used <= 0 {
					old.Mode, old.Profile, old.Used, old.Cap = "unassigned", "", 0, 0
				}
				d.GPU = newGPU
				newGPU.VMs = append(newGPU.VMs, v)
			}
			src.VMs = removeVM(src.VMs, v)
			dst.VMs = append(dst.VMs, v)
			v.Host = dst
		})
		l.moveInSimulator(v, src, dst)
	}
	v.Migrations = append(v.Migrations, m)
	e.Migs = append(e.Migs, m)
	if err := l.appendLogs(v, m); err != nil {
		return nil, http.StatusInternalServerError, err
	}
	return m, http.StatusOK, nil
}

func removeVM(list []*vmPlan, v *vmPlan) []*vmPlan {
	out := list[:0]
	for _, x := range list {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}

func hostObj(h *hostPlan) *simulator.HostSystem {
	return simulator.Map.Get(types.ManagedObjectReference{Type: "HostSystem", Value: h.Moref}).(*simulator.HostSystem)
}

func (l *live) moveInSimulator(v *vmPlan, src, dst *hostPlan) {
	vmRef := types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref}
	dstRef := types.ManagedObjectReference{Type: "HostSystem", Value: dst.Moref}
	vm := simulator.Map.Get(vmRef).(*simulator.VirtualMachine)
	simulator.Map.WithLock(vm, func() {
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "runtime.host", Val: dstRef},
			{Name: "summary.runtime.host", Val: dstRef},
		})
	})
	for _, hp := range []*hostPlan{src, dst} {
		h := hostObj(hp)
		if hp == src { // these two lock h themselves
			simulator.Map.RemoveReference(h, &h.Vm, vmRef)
		} else {
			simulator.Map.AppendReference(h, &h.Vm, vmRef)
		}
		simulator.Map.WithLock(h, func() {
			seedHostGraphics(h, hp)
			simulator.Map.Update(h, []types.PropertyChange{
				{Name: "vm", Val: h.Vm},
				{Name: "config.graphicsInfo", Val: h.Config.GraphicsInfo},
			})
		})
	}
}

// appendLogs appends the source side to vmware.log; a successful move rotates it.
func (l *live) appendLogs(v *vmPlan, m *migration) error {
	dir := filepath.Join(l.e.DatastoreURL, v.Name)
	cur := filepath.Join(dir, "vmware.log")
	src := &vmxLog{old: v.LogOld}
	src.sourceSide(m)
	f, err := os.OpenFile(cur, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(strings.Join(src.lines, "\n") + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	m.SrcLog = "vmware.log"
	if !m.Failed {
		next := 1
		names, _ := filepath.Glob(filepath.Join(dir, "vmware-*.log"))
		for _, n := range names {
			if k, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(filepath.Base(n), "vmware-"), ".log")); err == nil && k >= next {
				next = k + 1
			}
		}
		rotated := fmt.Sprintf("vmware-%d.log", next)
		if err := os.Rename(cur, filepath.Join(dir, rotated)); err != nil {
			return err
		}
		// earlier migrations whose lines were in vmware.log now live in the rotated file
		for _, x := range v.Migrations {
			if x.SrcLog == "vmware.log" {
				x.SrcLog = rotated
			}
			if x.DstLog == "vmware.log" {
				x.DstLog = rotated
			}
		}
		dst := &vmxLog{old: v.LogOld}
		dst.destSide(m, 2200000+len(l.e.Migs))
		if err := os.WriteFile(cur, []byte(strings.Join(dst.lines, "\n")+"\n"), 0o644); err != nil {
			return err
		}
		m.DstLog = "vmware.log"
	}
	// refresh the file list (names, sizes; garbage counts stay with their file)
	garbage := map[string]int{}
	for _, f := range l.e.Logs[v] {
		garbage[f.Name] = f.Garbage
	}
	if m.DstLog == "vmware.log" {
		for _, f := range l.e.Logs[v] {
			if f.Name == "vmware.log" && f.Garbage > 0 {
				garbage[m.SrcLog] = f.Garbage
				garbage["vmware.log"] = 0
			}
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var files []logFile
	for _, en := range entries {
		n := en.Name()
		if n == "vmware.log" || (strings.HasPrefix(n, "vmware-") && strings.HasSuffix(n, ".log")) {
			info, err := en.Info()
			if err != nil {
				return err
			}
			files = append(files, logFile{Name: n, Bytes: int(info.Size()), Garbage: garbage[n]})
		}
	}
	sort.Slice(files, func(i, j int) bool { return logOrder(files[i].Name) < logOrder(files[j].Name) })
	l.e.Logs[v] = files
	return nil
}

// logOrder sorts vmware-1.log < vmware-2.log < ... < vmware.log (oldest first)
func logOrder(name string) int {
	if name == "vmware.log" {
		return math.MaxInt32
	}
	k, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, "vmware-"), ".log"))
	return k
}
