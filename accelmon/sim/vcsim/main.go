// Command vcsim-accelmon runs the govmomi vSphere simulator seeded as a GPU estate:
// NVIDIA GPU hosts with 2 NUMA nodes, GPU VMs (DirectPath, dynamic DirectPath, vGPU/MIG),
// NUMA affinity (aligned and misaligned), guest IPs, power perf metrics, vMotion events
// and vmware.log files. It writes a ground-truth manifest, prints one READY line on stdout
// and serves until SIGTERM/SIGINT, then removes its datastore folders.
//
// Build: GOPATH=/usr/share/gocode GO111MODULE=off go build (Debian golang-go and
// golang-github-vmware-govmomi-dev 0.24). Driven by the Python harness accelmon.sim.vcsim.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

func main() {
	var p params
	flag.IntVar(&p.Clusters, "clusters", 2, "clusters")
	flag.IntVar(&p.HostsPerCluster, "hosts-per-cluster", 3, "hosts per cluster")
	flag.IntVar(&p.VMs, "vms", 60, "virtual machines in total")
	flag.Float64Var(&p.GpuRatio, "gpu-vm-ratio", 1.0/9, "fraction of VMs with GPUs")
	flag.Int64Var(&p.Seed, "seed", 1, "seed (everything but absolute times is deterministic)")
	flag.IntVar(&p.ExtraVmotions, "vmotions", -1, "extra random vMotions of vGPU VMs (-1: automatic)")
	listen := flag.String("listen", "127.0.0.1:0", "listen address (port 0: any free port)")
	noTLS := flag.Bool("no-tls", false, "serve plain http")
	dir := flag.String("dir", ".", "state dir: manifest.json, ca.pem")
	removeDir := flag.Bool("remove-dir", false, "remove the state dir on exit (SIGTERM/SIGINT/SIGHUP)")
	user := flag.String("user", "administrator@vsphere.local", "login user (password from $VCSIM_PASSWORD)")
	apiVersion := flag.String("api-version", "7.0.3.0", "advertised vSphere API version (8.x adds vSphere 8 fields)")
	idle := flag.Duration("session-idle-timeout", 0, "expire idle sessions after this long (0: never)")
	keyOffset := flag.Int("counter-key-offset", 0, "shift all perf counter keys (they differ between real installs)")
	delays := flag.String("method-delay", "", "per-method delays in ms, e.g. RetrievePropertiesEx=500,QueryPerf=2000")
	flag.BoolVar(&tagAllVMs, "tag-all-vms", false, "owner/team tags and attributes on every VM (bench)")
	guestIPPrefix := flag.String("guest-ip-prefix", "", `first octet of the guest IPs instead of "10.", e.g. "127." (loopback)`)
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("vcsim: ")
	if p.Clusters < 1 || p.HostsPerCluster < 1 || p.VMs < 0 || p.GpuRatio < 0 || p.GpuRatio > 1 {
		fail("invalid size: clusters and hosts-per-cluster must be >= 1, vms >= 0, 0 <= gpu-vm-ratio <= 1")
	}
	password := os.Getenv("VCSIM_PASSWORD")
	if password == "" {
		fail("VCSIM_PASSWORD is not set")
	}
	apiV8 = strings.HasPrefix(*apiVersion, "8.")
	counterKeyOffset = int32(*keyOffset)

	t0 := time.Now()
	timings := map[string]any{}
	patchEventInfo()
	esx.HostConfigInfo.Product.Version = "7.0.3"
	esx.HostConfigInfo.Product.Build = "21930508"
	esx.HostConfigInfo.Product.FullName = "VMware ESXi 7.0.3 build-21930508"
	esx.HostConfigInfo.Product.ApiVersion = *apiVersion

	e := newEstate(p)
	if err := e.rewriteGuestIPs(*guestIPPrefix); err != nil {
		fail("%v", err)
	}
	m := simulator.VPX()
	m.Datacenter, m.Cluster, m.ClusterHost, m.Host, m.Machine = 1, p.Clusters, p.HostsPerCluster, 0, 0
	m.Portgroup, m.Datastore, m.Autostart = 0, 1, true
	about := &m.ServiceContent.About
	about.ApiVersion = *apiVersion // >= 7.0: else pyvmomi drops VMs with DynamicBackingInfo
	about.Version = strings.Join(strings.Split(*apiVersion, ".")[:3], ".")
	about.Build = "21958406"
	about.FullName = fmt.Sprintf("VMware vCenter Server %s build-%s", about.Version, about.Build)
	about.InstanceUuid = e.InstanceUID

	var once sync.Once
	cleanup := func() {
		once.Do(func() {
			m.Remove()
			if *removeDir {
				_ = os.RemoveAll(*dir)
			}
		})
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	stop := make(chan struct{})
	go func() {
		<-sig
		cleanup()
		close(stop)
		os.Exit(0)
	}()

	for _, kv := range strings.Split(*delays, ",") {
		if kv == "" {
			continue
		}
		var ms int
		name, val, _ := strings.Cut(kv, "=")
		if _, err := fmt.Sscanf(val, "%d", &ms); err != nil || name == "" {
			fail("invalid -method-delay entry %q (want Method=milliseconds)", kv)
		}
		if m.DelayConfig.MethodDelay == nil {
			m.DelayConfig.MethodDelay = map[string]int{}
		}
		m.DelayConfig.MethodDelay[name] = ms
	}
	if err := m.Create(); err != nil {
		cleanup()
		fail("create: %v", err)
	}
	timings["create_inventory"] = time.Since(t0).Seconds()
	start := time.Now()
	lv, err := seed(e, m, start, timings)
	if err != nil {
		cleanup()
		fail("seed: %v", err)
	}
	debug.FreeOSMemory() // seeding left a lot of garbage

	var tlsErr error
	if !*noTLS {
		host, _, _ := net.SplitHostPort(*listen)
		names := []string{"127.0.0.1", "::1", "localhost"}
		if host != "" && host != "127.0.0.1" && host != "0.0.0.0" {
			names = append(names, host)
		}
		m.Service.TLS, tlsErr = newTLSConfig(filepath.Join(*dir, "ca.pem"), names)
		if tlsErr != nil {
			cleanup()
			fail("tls: %v", tlsErr)
		}
	}
	simulator.SessionIdleTimeout = *idle
	lv.user, lv.pass, lv.manifestPath = *user, password, filepath.Join(*dir, "manifest.json")
	lv.register(m.Service)
	m.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, password)}
	lv.sessionManager = *m.ServiceContent.SessionManager
	m.Service.RegisterEndpoints = true // the vAPI REST endpoints (tagging) of vapi/simulator
	s := m.Service.NewServer()
	s.Config.Handler = lv.requireAuth(s.Config.Handler) // before the first client connects
	t1 := time.Now()
	if err := seedTags(context.Background(), s.URL, *user, password, ownerRefs); err != nil {
		cleanup()
		fail("seed tags: %v", err)
	}
	timings["seed_tags"] = time.Since(t1).Seconds()
	timings["total"] = time.Since(t0).Seconds()
	mf := buildManifest(e, start, timings)
	mf.Vcenter["url"] = s.URL.Scheme + "://" + s.URL.Host + "/sdk"
	lv.extra = map[string]any{"url": mf.Vcenter["url"], "api_version": *apiVersion, "user": *user}
	for k, v := range lv.extra {
		mf.Vcenter[k] = v
	}
	if err := writeJSON(filepath.Join(*dir, "manifest.json"), mf); err != nil {
		cleanup()
		fail("manifest: %v", err)
	}
	ready, _ := json.Marshal(map[string]any{
		"url": mf.Vcenter["url"], "port": s.URL.Port(), "pid": os.Getpid(), "seconds": timings["total"],
	})
	fmt.Printf("VCSIM_READY %s\n", ready)
	_ = os.Stdout.Sync()
	<-stop
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vcsim: "+format+"\n", args...)
	os.Exit(1)
}

// seed turns the estate plan into simulator objects.
func seed(e *estate, m *simulator.Model, start time.Time, timings map[string]any) (*live, error) {
	ctx := context.Background()
	c, err := vim25.NewClient(ctx, m.Service)
	if err != nil {
		return nil, err
	}
	t := time.Now()
	clusters := simulator.Map.All("ClusterComputeResource")
	sort.Slice(clusters, func(i, j int) bool { return clusters[i].Entity().Name < clusters[j].Entity().Name })
	var pools []types.ManagedObjectReference
	var refs eventRefs
	for ci, ce := range clusters {
		cl := ce.(*simulator.ClusterComputeResource)
		pools = append(pools, *cl.ResourcePool)
		refs.cluster = append(refs.cluster, &types.ComputeResourceEventArgument{
			EntityEventArgument: types.EntityEventArgument{Name: cl.Name}, ComputeResource: cl.Self,
		})
		hosts := make([]*simulator.HostSystem, 0, len(cl.Host))
		for _, ref := range cl.Host {
			hosts = append(hosts, simulator.Map.Get(ref).(*simulator.HostSystem))
		}
		sort.Slice(hosts, func(i, j int) bool { return hosts[i].Name < hosts[j].Name })
		for hi, h := range hosts {
			hp := e.ByCluster[ci][hi]
			hp.Name, hp.Moref, hp.UUID = h.Name, h.Self.Value, h.Hardware.SystemInfo.Uuid
			seedHostHardware(h, hp)
		}
		fixClusterSummary(cl)
	}
	dc := simulator.Map.Any("Datacenter").(*simulator.Datacenter)
	ds := simulator.Map.Any("Datastore").(*simulator.Datastore)
	refs.dc = &types.DatacenterEventArgument{EntityEventArgument: types.EntityEventArgument{Name: dc.Name}, Datacenter: dc.Self}
	refs.ds = &types.DatastoreEventArgument{EntityEventArgument: types.EntityEventArgument{Name: ds.Name}, Datastore: ds.Self}
	refs.em = *m.ServiceContent.EventManager
	timings["seed_hosts"] = time.Since(t).Seconds()

	t = time.Now()
	planOwners(e)
	if ownerRefs, err = seedOwnerContainers(ctx, c, dc.VmFolder, pools); err != nil {
		return nil, err
	}
	if err := createVMs(ctx, c, e, dc.VmFolder, pools); err != nil {
		return nil, err
	}
	if err := seedAttributes(ctx, c, *m.ServiceContent.CustomFieldsManager); err != nil {
		return nil, err
	}
	seedGuest(e, start)
	for _, hp := range e.Hosts {
		seedHostGraphics(simulator.Map.Get(types.ManagedObjectReference{Type: "HostSystem", Value: hp.Moref}).(*simulator.HostSystem), hp)
	}
	timings["create_vms"] = time.Since(t).Seconds()

	t = time.Now()
	migs := e.planMigrations(start)
	e.Migs = migs
	first, err := postMigrationEvents(ctx, c, &refs, migs)
	if err != nil {
		return nil, err
	}
	if err := backdateEvents(ctx, c, refs.em, first, start.Add(-3*time.Hour)); err != nil {
		return nil, err
	}
	dsURL := ds.Info.GetDatastoreInfo().Url
	e.DatastoreURL = dsURL
	e.Logs = map[*vmPlan][]logFile{}
	seq := 0
	for _, v := range e.VMs {
		if len(v.Migrations) == 0 && !(v.isGPU() && v.PoweredOn) {
			continue
		}
		files, err := writeVMLogs(filepath.Join(dsURL, v.Name), v, start, seq)
		if err != nil {
			return nil, err
		}
		e.Logs[v] = files
		seq++
	}
	timings["vmotions_logs"] = time.Since(t).Seconds()

	pm := simulator.Map.Get(*m.ServiceContent.PerfManager).(*simulator.PerformanceManager)
	ppm := newPerfManager(pm, e)
	simulator.Map.Put(ppm)
	return &live{e: e, c: c, refs: &refs, pm: ppm, start: start, timings: timings}, nil
}
