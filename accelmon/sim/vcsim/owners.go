package main

// Ownership seeding, the way vSphere admins record who owns a VM:
//   - vSphere tags in the categories "owner", "team", "cost-center", created and attached
//     through the vAPI simulator's tagging REST API (/rest/com/vmware/cis/tagging/...), on some
//     GPU VMs directly and on VM folders and a resource pool (inherited by the VMs inside);
//   - custom attributes (CustomFieldsManager field definitions "Owner", "Team", "OwnerEmail"
//     for VirtualMachine, customValue set with SetField) on some VMs;
//   - some GPU VMs have nothing and must be reported as unowned.
// Which GPU VM gets what cycles over its index among the GPU VMs (the small estate has 7 GPU
// VMs: each case once). The expected resolution is written to the manifest ("owners").

import (
	"context"
	"fmt"
	"net/url"
	"sort"

	"github.com/vmware/govmomi/vapi/rest"
	_ "github.com/vmware/govmomi/vapi/simulator" // registers the vAPI (REST) endpoints, tagging included
	"github.com/vmware/govmomi/vapi/tags"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

var ownerCategories = []string{"owner", "team", "cost-center"}
var ownerAttributes = []string{"Owner", "Team", "OwnerEmail"}

// ownerPlan: where a VM lives (folder path under the datacenter's vm folder, child resource
// pool of its cluster) and what is set on it.
type ownerPlan struct {
	Folder []string          // nil: directly in the vm folder
	Pool   string            // "": the cluster's root pool
	Tags   map[string]string // category -> tag name, attached to the VM
	Attrs  map[string]string // custom attribute -> value on the VM
	Expect mOwner
}

// mOwner is the expected resolution (precedence per field: VM tag > VM attribute > folder
// tag (nearest first) > resource pool tag > cluster tag; owner_source = source of the owner).
type mOwner struct {
	VM         string  `json:"vm"`
	Owner      *string `json:"owner"`
	Team       *string `json:"team"`
	CostCenter *string `json:"cost_center"`
	Email      *string `json:"email"`
	Source     string  `json:"owner_source"` // tag | attribute | folder | resource_pool | cluster | unowned
	FolderPath string  `json:"folder_path"`
	Pool       string  `json:"resource_pool"`
}

// containerTags: tags on folders (by path) and pools (by name), inherited by what they contain.
var containerTags = map[string]map[string]string{
	"folder:nlp":      {"team": "nlp", "cost-center": "cc-200"},
	"folder:nlp/prod": {"owner": "bob"},
	"pool:research":   {"team": "research", "owner": "dave", "cost-center": "cc-300"},
}

var ownerPlans = map[*vmPlan]*ownerPlan{}
var tagAllVMs bool
var ownerRefs map[string]types.ManagedObjectReference // folders and pools created by seedOwnerContainers

func sp(s string) *string { return &s }

func planOwners(e *estate) {
	gi := 0
	for _, v := range e.VMs {
		if !v.isGPU() {
			if tagAllVMs {
				ownerPlans[v] = &ownerPlan{
					Tags:  map[string]string{"owner": "ops", "team": "batch"},
					Attrs: map[string]string{"Owner": "ops", "Team": "batch"},
				}
			}
			continue
		}
		p := &ownerPlan{}
		switch gi % 7 {
		case 0: // VM tags win over VM attributes
			p.Tags = map[string]string{"owner": "alice", "team": "vision", "cost-center": "cc-100"}
			p.Attrs = map[string]string{"Owner": "zed", "Team": "zteam"}
			p.Expect = mOwner{Owner: sp("alice"), Team: sp("vision"), CostCenter: sp("cc-100"), Source: "tag"}
		case 1: // custom attributes only
			p.Attrs = map[string]string{"Owner": "carol", "Team": "speech", "OwnerEmail": "carol@example.com"}
			p.Expect = mOwner{Owner: sp("carol"), Team: sp("speech"), Email: sp("carol@example.com"), Source: "attribute"}
		case 2: // nested folders: owner from the nearest (prod), team from its parent (nlp)
			p.Folder = []string{"nlp", "prod"}
			p.Expect = mOwner{Owner: sp("bob"), Team: sp("nlp"), CostCenter: sp("cc-200"), Source: "folder"}
		case 3: // resource pool
			p.Pool = "research"
			p.Expect = mOwner{Owner: sp("dave"), Team: sp("research"), CostCenter: sp("cc-300"), Source: "resource_pool"}
		case 4: // owner from the VM attribute, team and cost center inherited from the folder
			p.Folder = []string{"nlp"}
			p.Attrs = map[string]string{"Owner": "erin"}
			p.Expect = mOwner{Owner: sp("erin"), Team: sp("nlp"), CostCenter: sp("cc-200"), Source: "attribute"}
		default: // 5, 6: nothing in vSphere
			p.Expect = mOwner{Source: "unowned"}
			if tagAllVMs {
				p.Tags = map[string]string{"owner": "ops", "team": "batch"}
				p.Attrs = map[string]string{"Owner": "ops", "Team": "batch"}
				p.Expect = mOwner{Owner: sp("ops"), Team: sp("batch"), Source: "tag"}
			}
		}
		ownerPlans[v] = p
		gi++
	}
}

// seedOwnerContainers creates the VM folders and resource pools of the plan (before the VMs).
func seedOwnerContainers(ctx context.Context, c *vim25.Client, vmFolder types.ManagedObjectReference,
	pools []types.ManagedObjectReference) (map[string]types.ManagedObjectReference, error) {
	refs := map[string]types.ManagedObjectReference{"folder:": vmFolder}
	for ci, pool := range pools {
		refs[fmt.Sprintf("pool::%d", ci)] = pool
	}
	var folder func(path []string) (types.ManagedObjectReference, error)
	folder = func(path []string) (types.ManagedObjectReference, error) {
		key := "folder:" + joinPath(path)
		if r, ok := refs[key]; ok {
			return r, nil
		}
		parent, err := folder(path[:len(path)-1])
		if err != nil {
			return parent, err
		}
		res, err := methods.CreateFolder(ctx, c, &types.CreateFolder{This: parent, Name: path[len(path)-1]})
		if err != nil {
			return parent, fmt.Errorf("create folder %s: %w", key, err)
		}
		refs[key] = res.Returnval
		return res.Returnval, nil
	}
	for _, v := range sortedPlanned() {
		p := ownerPlans[v]
		if p.Folder != nil {
			if _, err := folder(p.Folder); err != nil {
				return nil, err
			}
		}
		if p.Pool != "" {
			key := fmt.Sprintf("pool:%s:%d", p.Pool, v.Host.Cluster)
			if _, ok := refs[key]; ok {
				continue
			}
			res, err := methods.CreateResourcePool(ctx, c, &types.CreateResourcePool{
				This: pools[v.Host.Cluster], Name: p.Pool, Spec: types.DefaultResourceConfigSpec(),
			})
			if err != nil {
				return nil, fmt.Errorf("create resource pool %s: %w", p.Pool, err)
			}
			refs[key] = res.Returnval
		}
	}
	return refs, nil
}

func joinPath(p []string) string {
	s := ""
	for i, x := range p {
		if i > 0 {
			s += "/"
		}
		s += x
	}
	return s
}

func sortedPlanned() []*vmPlan {
	out := make([]*vmPlan, 0, len(ownerPlans))
	for v := range ownerPlans {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Index < out[j].Index })
	return out
}

// placement of a VM for createVMs: its folder and pool.
func ownerPlacement(v *vmPlan, refs map[string]types.ManagedObjectReference, vmFolder, pool types.ManagedObjectReference) (
	types.ManagedObjectReference, types.ManagedObjectReference) {
	p := ownerPlans[v]
	if p == nil {
		return vmFolder, pool
	}
	f, rp := vmFolder, pool
	if p.Folder != nil {
		f = refs["folder:"+joinPath(p.Folder)]
	}
	if p.Pool != "" {
		rp = refs[fmt.Sprintf("pool:%s:%d", p.Pool, v.Host.Cluster)]
	}
	return f, rp
}

// seedAttributes: CustomFieldsManager field definitions and the VMs' values (SOAP, in-process).
func seedAttributes(ctx context.Context, c *vim25.Client, cfm types.ManagedObjectReference) error {
	keys := map[string]int32{}
	for _, name := range ownerAttributes {
		res, err := methods.AddCustomFieldDef(ctx, c, &types.AddCustomFieldDef{This: cfm, Name: name, MoType: "VirtualMachine"})
		if err != nil {
			return fmt.Errorf("custom field %s: %w", name, err)
		}
		keys[name] = res.Returnval.Key
	}
	for _, v := range sortedPlanned() {
		p := ownerPlans[v]
		for _, name := range ownerAttributes {
			val, ok := p.Attrs[name]
			if !ok {
				continue
			}
			ref := types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref}
			if _, err := methods.SetField(ctx, c, &types.SetField{This: cfm, Entity: ref, Key: keys[name], Value: val}); err != nil {
				return fmt.Errorf("set field %s on %s: %w", name, v.Name, err)
			}
		}
	}
	return nil
}

// seedTags creates the categories and tags through the running server's REST API and attaches
// them (one attach-tag-to-multiple-objects call per tag).
func seedTags(ctx context.Context, u *url.URL, user, pass string, refs map[string]types.ManagedObjectReference) error {
	sc := soap.NewClient(u, true)
	vc, err := vim25.NewClient(ctx, sc)
	if err != nil {
		return err
	}
	rc := rest.NewClient(vc)
	if err := rc.Login(ctx, url.UserPassword(user, pass)); err != nil {
		return fmt.Errorf("vapi login: %w", err)
	}
	defer func() { _ = rc.Logout(ctx) }()
	m := tags.NewManager(rc)
	catID := map[string]string{}
	for _, name := range ownerCategories {
		id, err := m.CreateCategory(ctx, &tags.Category{
			Name: name, Description: "accelmon ownership: " + name, Cardinality: "SINGLE",
			AssociableTypes: []string{"VirtualMachine", "Folder", "ResourcePool", "ClusterComputeResource"},
		})
		if err != nil {
			return fmt.Errorf("category %s: %w", name, err)
		}
		catID[name] = id
	}
	attach := map[[2]string][]mo.Reference{} // (category, tag) -> objects
	add := func(cat, tag string, ref types.ManagedObjectReference) {
		k := [2]string{cat, tag}
		attach[k] = append(attach[k], ref)
	}
	for _, v := range sortedPlanned() {
		for cat, tag := range ownerPlans[v].Tags {
			add(cat, tag, types.ManagedObjectReference{Type: "VirtualMachine", Value: v.Moref})
		}
	}
	for key, tg := range containerTags {
		for rk, ref := range refs {
			if rk == key || (len(rk) > len(key) && rk[:len(key)+1] == key+":") {
				for cat, tag := range tg {
					add(cat, tag, ref)
				}
			}
		}
	}
	keys := make([][2]string, 0, len(attach))
	for k := range attach {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i][0]+"\x00"+keys[i][1] < keys[j][0]+"\x00"+keys[j][1] })
	for _, k := range keys {
		id, err := m.CreateTag(ctx, &tags.Tag{Name: k[1], CategoryID: catID[k[0]], Description: k[0] + " " + k[1]})
		if err != nil {
			return fmt.Errorf("tag %s/%s: %w", k[0], k[1], err)
		}
		if err := m.AttachTagToMultipleObjects(ctx, id, attach[k]); err != nil {
			return fmt.Errorf("attach %s/%s: %w", k[0], k[1], err)
		}
	}
	return nil
}

func ownersManifest(e *estate) []mOwner {
	out := []mOwner{}
	for _, v := range e.VMs {
		p := ownerPlans[v]
		if p == nil || !v.isGPU() {
			continue
		}
		o := p.Expect
		o.VM = v.Name
		o.FolderPath = "/DC0/vm"
		if p.Folder != nil {
			o.FolderPath += "/" + joinPath(p.Folder)
		}
		o.Pool = p.Pool
		out = append(out, o)
	}
	return out
}
