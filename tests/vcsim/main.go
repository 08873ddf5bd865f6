// Command vcsim-bed runs govmomi 0.24.2's vSphere simulator as a test bed for Holdfast's VMware
// connector, and adds what that simulator lacks (docs/VMWARE-NOTES.md §1):
//
//   - disks with real sizes (the model's disks are empty 1 MiB files without capacityInBytes);
//   - changed block tracking: /testbed/write records guest writes, CreateSnapshot_Task stamps
//     change ids on the disks, and QueryChangedDiskAreas answers from the recorded writes;
//   - a switch that makes CreateSnapshot_Task fail, and one that makes a quiesced snapshot fail
//     as without VMware Tools;
//   - a datastore file service (/folder) that, as a real host's, serves live sessions only;
//   - several standalone hosts on demand, each mounting the one datastore;
//   - GET /testbed/info, which describes every VM so tests can check what a restore created.
//
// Wrapping the simulator's VM objects panics in 0.24.2, so the bed intercepts SOAP at the HTTP
// level instead: host-specific /sdk patterns on the simulator's ServeMux take precedence over the
// plain /sdk pattern the simulator registered. Build it with tests/testbed/build-vcsim.sh.
package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// maxAreas is how many extents one QueryChangedDiskAreas reply carries, small on purpose so
// that tests exercise the client's paging.
const maxAreas = 4

type diskJSON struct {
	Key      int32  `json:"key"`
	File     string `json:"file"`
	Flat     string `json:"flat"`
	Capacity int64  `json:"capacity"`
	ChangeID string `json:"change_id"`
}

type vmJSON struct {
	Name      string     `json:"name"`
	Moref     string     `json:"moref"`
	CBT       bool       `json:"cbt"`
	Host      string     `json:"host"`
	Snapshots []string   `json:"snapshots"`
	Disks     []diskJSON `json:"disks"`
}

type infoJSON struct {
	URL          string   `json:"url"`
	CAPEM        string   `json:"ca_pem"`
	Datacenter   string   `json:"datacenter"`
	Datastore    string   `json:"datastore"`
	DatastoreDir string   `json:"datastore_dir"`
	VMs          []vmJSON `json:"vms"`
}

// extent is one guest write, stamped with the disk's generation at the time of the write.
type extent struct{ off, len, gen int64 }

// diskCBT is the change tracking state of one (VM, disk key). Generations only grow: each
// snapshot taken with tracking on is stamped with the current one, then it is bumped, so a
// write belongs to the snapshots stamped with a generation ≥ its own.
type diskCBT struct {
	uuid   string // "" while tracking is off; a new one each time tracking (re)starts
	epoch  int64  // first generation issued under uuid; older change ids are unknown
	gen    int64
	writes []extent // kept even while tracking is off: "*" means everything ever written
}

// stamp records a snapshot taken with change tracking on: its VM and each disk's generation.
type stamp struct {
	vm   string
	gens map[int32]int64
}

type bed struct {
	svc   *simulator.Service
	fixed infoJSON          // the parts of the info that never change
	dsDir map[string]string // datastore name → directory, fixed after start

	// mu guards the maps below. Lock order: a simulator lock may be held when taking mu,
	// never the other way round.
	mu      sync.Mutex
	cbt     map[string]*diskCBT // "vm-NN:key"
	stamps  map[string]stamp    // snapshot moref → what CreateSnapshot_Task stamped
	refuse  map[string]bool     // VM moref → CreateSnapshot_Task faults
	noTools map[string]bool     // VM moref → a quiesced snapshot faults (VMware Tools not running)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	user := flag.String("user", "user", "the only user name Login accepts")
	password := flag.String("password", "pass", "the only password Login accepts")
	useTLS := flag.Bool("tls", false, "serve https (certificate from a throwaway CA, see ca_pem)")
	nvms := flag.Int("vms", 2, "number of VMs per host")
	nhosts := flag.Int("hosts", 1, "number of standalone hosts, each mounting every datastore")
	diskList := flag.String("disks", "8,4", "disk sizes in MiB for every VM, comma separated")
	flag.Parse()

	var sizes []int64
	for _, f := range strings.Split(*diskList, ",") {
		n, err := strconv.ParseInt(strings.TrimSpace(f), 10, 64)
		if err != nil || n <= 0 {
			log.Fatalf("bad -disks %q", *diskList)
		}
		sizes = append(sizes, n)
	}

	stop := make(chan os.Signal, 1) // from here on a signal means a clean shutdown
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	m := simulator.VPX()
	m.Datacenter, m.Cluster, m.Host, m.Machine = 1, 0, *nhosts, *nvms
	if err := m.Create(); err != nil {
		log.Fatal(err)
	}
	mountEverywhere()
	err := run(m, stop, *listen, *user, *password, *useTLS, sizes)
	m.Remove() // deletes the datastore directories
	if err != nil {
		log.Fatal(err)
	}
}

// mountEverywhere lists every host that mounts a datastore in the datastore's `host`: the
// simulator creates a datastore shared by several hosts once per host, each time replacing
// the object, so it names only the last host (a real shared datastore names them all).
func mountEverywhere() {
	for _, e := range simulator.Map.All("HostSystem") {
		h, ok := e.(*simulator.HostSystem)
		if !ok {
			continue
		}
		for _, ref := range h.Datastore {
			ds, ok := simulator.Map.Get(ref).(*simulator.Datastore)
			if !ok {
				continue
			}
			known := false
			for _, m := range ds.Host {
				known = known || m.Key == h.Self
			}
			if !known {
				ds.Host = append(ds.Host, types.DatastoreHostMount{Key: h.Self, MountInfo: types.HostMountInfo{
					AccessMode: string(types.HostMountModeReadWrite), Mounted: types.NewBool(true),
					Accessible: types.NewBool(true)}})
			}
		}
	}
}

// run serves the created model until SIGTERM or SIGINT.
func run(m *simulator.Model, stop chan os.Signal, listen, user, password string, useTLS bool, sizes []int64) error {
	b := &bed{svc: m.Service, dsDir: map[string]string{}, cbt: map[string]*diskCBT{},
		stamps: map[string]stamp{}, refuse: map[string]bool{}, noTools: map[string]bool{}}
	// Without a host the simulator would advertise a non-loopback address. A UserPassword other
	// than simulator.DefaultLogin makes Login demand exactly these credentials.
	m.Service.Listen = &url.URL{Host: listen}
	if user != "" {
		m.Service.Listen.User = url.UserPassword(user, password)
	}
	if useTLS {
		host, _, _ := net.SplitHostPort(listen)
		cert, caPEM, err := testCert(host)
		if err != nil {
			return err
		}
		m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		b.fixed.CAPEM = caPEM
	}
	s := m.Service.NewServer()
	defer s.Close()
	pub := *s.URL
	pub.User = nil
	b.fixed.URL = pub.String()
	for _, e := range simulator.Map.All("Datacenter") {
		simulator.Map.WithLock(e, func() { b.fixed.Datacenter = e.Entity().Name })
	}
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		simulator.Map.WithLock(ds, func() {
			b.dsDir[ds.Name] = ds.Info.GetDatastoreInfo().Url
			b.fixed.Datastore, b.fixed.DatastoreDir = ds.Name, ds.Info.GetDatastoreInfo().Url
		})
	}

	// Go's ServeMux prefers host-specific patterns, so these win over the simulator's "/sdk".
	hosts := map[string]bool{"127.0.0.1": true, "localhost": true, s.URL.Hostname(): true}
	for h := range hosts {
		for _, p := range []string{"/sdk", "/sdk/vimService"} {
			m.Service.ServeMux.HandleFunc(h+p, b.serveSDK)
		}
	}
	for h := range hosts {
		m.Service.ServeMux.HandleFunc(h+"/folder/", b.serveFolder)
	}
	m.Service.ServeMux.HandleFunc("/testbed/", b.serveTestbed)

	if err := shapeDisks(context.Background(), s.URL, sizes); err != nil {
		return fmt.Errorf("sizing disks: %v", err)
	}
	for _, vm := range b.vms() {
		for _, d := range vm.Disks {
			if err := os.Truncate(d.Flat, d.Capacity); err != nil {
				return err
			}
		}
	}

	out, _ := json.Marshal(b.info())
	fmt.Println(string(out))
	<-stop
	return nil
}

// testCert makes a throwaway CA and a server certificate it signs for the loopback names (and
// the listen host). The simulator's built-in certificate has a 1024-bit RSA key, which OpenSSL
// (security level 2) and rustls refuse; and webpki refuses a CA certificate as the server's own.
func testCert(host string) (tls.Certificate, string, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	now := time.Now()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Holdfast vcsim test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0), BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		leaf.IPAddresses = append(leaf.IPAddresses, ip)
	} else if ip == nil && host != "" && host != "localhost" {
		leaf.DNSNames = append(leaf.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}, string(caPEM), nil
}

// shapeDisks gives every model VM the requested disks through the simulator's own ReconfigVM,
// which keeps its model consistent (layout, summary, datastore space): the existing disk is
// re-keyed and resized, the others are added on the same controller with files created. Files are
// sized by the caller.
func shapeDisks(ctx context.Context, u *url.URL, sizes []int64) error {
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		return err
	}
	defer func() { _ = c.Logout(ctx) }()
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := object.NewVirtualMachine(c.Client, e.Reference())
		name, err := vm.ObjectName(ctx)
		if err != nil {
			return err
		}
		devices, err := vm.Device(ctx)
		if err != nil {
			return err
		}
		disks := devices.SelectByType((*types.VirtualDisk)(nil))
		if len(disks) != 1 {
			return fmt.Errorf("%s: expected 1 disk, found %d", name, len(disks))
		}
		first := disks[0].(*types.VirtualDisk)
		backing := first.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		var p object.DatastorePath
		p.FromString(backing.FileName)
		ctrl, err := devices.FindDiskController("scsi")
		if err != nil {
			return err
		}
		// ESXi numbers disks 2000 + unit; the model's disk has a random key. Detach it (its files
		// stay) and attach the same file again under that key, at the requested size.
		again := *first
		again.Key = 2000 + *first.UnitNumber
		again.DeviceInfo = &types.Description{Label: "Hard disk 1"} // the simulator fills in the summary
		setSize(&again, sizes[0])
		change := []types.BaseVirtualDeviceConfigSpec{
			&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationRemove, Device: first},
			&types.VirtualDeviceConfigSpec{Operation: types.VirtualDeviceConfigSpecOperationAdd, Device: &again},
		}
		for i, mib := range sizes[1:] {
			d := devices.CreateDisk(ctrl, *backing.Datastore,
				fmt.Sprintf("[%s] %s/disk%d.vmdk", p.Datastore, name, i+2))
			d.Key = 2000 + *d.UnitNumber
			d.DeviceInfo = &types.Description{Label: fmt.Sprintf("Hard disk %d", i+2)}
			setSize(d, mib)
			devices = append(devices, d) // so that the next disk gets the next unit number
			change = append(change, &types.VirtualDeviceConfigSpec{
				Operation:     types.VirtualDeviceConfigSpecOperationAdd,
				FileOperation: types.VirtualDeviceConfigSpecFileOperationCreate,
				Device:        d})
		}
		task, err := vm.Reconfigure(ctx, types.VirtualMachineConfigSpec{DeviceChange: change})
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			return fmt.Errorf("%s: %v", name, err)
		}
	}
	return nil
}

func setSize(d *types.VirtualDisk, mib int64) {
	d.CapacityInKB, d.CapacityInBytes = mib<<10, mib<<20
}

// ---- reading the model ----

// each calls f, under the VM's lock, for every fully created VM.
func (b *bed) each(f func(vm *simulator.VirtualMachine)) {
	list := simulator.Map.All("VirtualMachine")
	// CreateVM_Task registers a new VM and then fills it in holding only its folder's lock, so
	// wait for each folder first. One simulator lock at a time: Destroy_Task takes VM → folder.
	seen := map[types.ManagedObjectReference]bool{}
	for _, e := range list {
		if p := e.Entity().Parent; p != nil && !seen[*p] {
			seen[*p] = true
			simulator.Map.WithLock(*p, func() {})
		}
	}
	for _, e := range list {
		if vm, ok := e.(*simulator.VirtualMachine); ok {
			locked(vm, f)
		}
	}
}

// locked calls f under the VM's lock unless the VM is half created or already destroyed.
func locked(vm *simulator.VirtualMachine, f func(vm *simulator.VirtualMachine)) (found bool) {
	simulator.Map.WithLock(vm, func() {
		if vm.Config != nil && simulator.Map.Get(vm.Self) != nil {
			found = true
			f(vm)
		}
	})
	return found
}

func (b *bed) byName(name string, f func(vm *simulator.VirtualMachine)) (found bool) {
	b.each(func(vm *simulator.VirtualMachine) {
		if !found && vm.Name == name {
			found = true
			f(vm)
		}
	})
	return found
}

func (b *bed) byRef(ref string, f func(vm *simulator.VirtualMachine)) bool {
	obj := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: ref})
	vm, ok := obj.(*simulator.VirtualMachine)
	return ok && locked(vm, f)
}

// flatDisk returns the device as a disk if it is one with the (only) backing the simulator makes.
func flatDisk(d types.BaseVirtualDevice) (*types.VirtualDisk, *types.VirtualDiskFlatVer2BackingInfo) {
	if disk, ok := d.(*types.VirtualDisk); ok {
		if bk, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
			return disk, bk
		}
	}
	return nil, nil
}

func capacity(d *types.VirtualDisk) int64 {
	if d.CapacityInBytes > 0 {
		return d.CapacityInBytes
	}
	return d.CapacityInKB * 1024
}

// flatPath maps "[ds] dir/x.vmdk" to the simulator's data file, the way its VirtualDiskManager does.
func (b *bed) flatPath(fileName string) string {
	var p object.DatastorePath
	if !p.FromString(fileName) || b.dsDir[p.Datastore] == "" {
		return ""
	}
	return path.Join(b.dsDir[p.Datastore], strings.Replace(p.Path, ".vmdk", "-flat.vmdk", 1))
}

// diskAt is what the bed needs to know about one disk, read under its VM's lock by diskOf.
type diskAt struct {
	vm, vmName, file, flat string
	key                    int32
	size                   int64
	cbt, found             bool
}

func (b *bed) diskOf(vm *simulator.VirtualMachine, key int32) diskAt {
	d := diskAt{vm: vm.Self.Value, vmName: vm.Name, key: key, cbt: isTrue(vm.Config.ChangeTrackingEnabled)}
	for _, dev := range vm.Config.Hardware.Device {
		if disk, bk := flatDisk(dev); disk != nil && disk.Key == key {
			d.found, d.file, d.flat, d.size = true, bk.FileName, b.flatPath(bk.FileName), capacity(disk)
		}
	}
	return d
}

func isTrue(p *bool) bool { return p != nil && *p }

func snapshotNames(tree []types.VirtualMachineSnapshotTree, out []string) []string {
	for _, t := range tree {
		out = append(out, t.Name)
		out = snapshotNames(t.ChildSnapshotList, out)
	}
	return out
}

func (b *bed) vms() []vmJSON {
	out := []vmJSON{}
	b.each(func(vm *simulator.VirtualMachine) {
		v := vmJSON{Name: vm.Name, Moref: vm.Self.Value, CBT: isTrue(vm.Config.ChangeTrackingEnabled),
			Snapshots: []string{}, Disks: []diskJSON{}}
		if vm.Snapshot != nil {
			v.Snapshots = snapshotNames(vm.Snapshot.RootSnapshotList, v.Snapshots)
		}
		if vm.Runtime.Host != nil {
			if h, ok := simulator.Map.Get(*vm.Runtime.Host).(*simulator.HostSystem); ok {
				v.Host = h.Name
			}
		}
		for _, d := range vm.Config.Hardware.Device {
			if disk, bk := flatDisk(d); disk != nil {
				v.Disks = append(v.Disks, diskJSON{Key: disk.Key, File: bk.FileName,
					Flat: b.flatPath(bk.FileName), Capacity: capacity(disk), ChangeID: bk.ChangeId})
			}
		}
		out = append(out, v)
	})
	sort.Slice(out, func(i, j int) bool { // names need not be unique in the simulator
		return out[i].Name < out[j].Name || out[i].Name == out[j].Name && out[i].Moref < out[j].Moref
	})
	return out
}

func (b *bed) info() infoJSON {
	i := b.fixed
	i.VMs = b.vms()
	return i
}

// ---- change tracking state ----

// track returns the state of one disk and brings its uuid in line with whether the VM tracks
// changes now: off drops the uuid, so change ids issued before are unknown after turning it on.
// Caller holds b.mu.
func (b *bed) track(vmRef string, key int32, on bool) *diskCBT {
	id := fmt.Sprintf("%s:%d", vmRef, key)
	st := b.cbt[id]
	if st == nil {
		st = &diskCBT{}
		b.cbt[id] = st
	}
	if !on {
		st.uuid = ""
	} else if st.uuid == "" {
		st.uuid, st.epoch = newUUID(), st.gen
	}
	return st
}

// newUUID makes an id in VMware's style, "52 1f ... 9a-4c ... 07" (no '/', which separates the
// generation in a change id).
func newUUID() string {
	var r [16]byte
	_, _ = rand.Read(r[:])
	r[0] = 0x52
	return fmt.Sprintf("% x-% x", r[:8], r[8:])
}

// copyDevices returns a new device list in which every disk and its backing are copies, passed
// to f. The simulator shares device pointers (and the slice) between a VM and its snapshots, so
// change ids must never be set in place.
func copyDevices(devs []types.BaseVirtualDevice, f func(*types.VirtualDisk, *types.VirtualDiskFlatVer2BackingInfo)) []types.BaseVirtualDevice {
	out := make([]types.BaseVirtualDevice, 0, len(devs))
	for _, d := range devs {
		if disk, bk := flatDisk(d); disk != nil {
			d2, bk2 := *disk, *bk
			d2.Backing = &bk2
			f(&d2, &bk2)
			d = &d2
		}
		out = append(out, d)
	}
	return out
}

// stampSnapshot runs after a successful CreateSnapshot_Task: with tracking on, every disk's current
// generation becomes the snapshot's change id (on the VM and on the snapshot), then generations
// advance. The snapshot always gets its own copy of the devices so later edits do not leak into it.
func (b *bed) stampSnapshot(vmRef string, snap types.ManagedObjectReference) {
	var snapDevs []types.BaseVirtualDevice
	b.byRef(vmRef, func(vm *simulator.VirtualMachine) {
		on := isTrue(vm.Config.ChangeTrackingEnabled)
		ids := map[int32]string{}
		gens := map[int32]int64{}
		b.mu.Lock()
		for _, d := range vm.Config.Hardware.Device {
			if disk, _ := flatDisk(d); disk != nil {
				st := b.track(vmRef, disk.Key, on)
				if on {
					gens[disk.Key], ids[disk.Key] = st.gen, fmt.Sprintf("%s/%d", st.uuid, st.gen)
					st.gen++
				}
			}
		}
		if on {
			b.stamps[snap.Value] = stamp{vmRef, gens}
		}
		b.mu.Unlock()
		setID := func(d *types.VirtualDisk, bk *types.VirtualDiskFlatVer2BackingInfo) {
			if id, ok := ids[d.Key]; ok {
				bk.ChangeId = id
			}
		}
		snapDevs = copyDevices(vm.Config.Hardware.Device, setID)
		if on {
			simulator.Map.Update(vm, []types.PropertyChange{
				{Name: "config.hardware.device", Val: copyDevices(vm.Config.Hardware.Device, setID)}})
		}
	})
	if s, ok := simulator.Map.Get(snap).(*simulator.VirtualMachineSnapshot); ok && snapDevs != nil {
		simulator.Map.WithLock(s, func() { s.Config.Hardware.Device = snapDevs })
	}
}

// syncCBT runs after ReconfigVM_Task: turning tracking off forgets the uuid and clears the change ids.
func (b *bed) syncCBT(vmRef string) {
	b.byRef(vmRef, func(vm *simulator.VirtualMachine) {
		on := isTrue(vm.Config.ChangeTrackingEnabled)
		stale := false
		b.mu.Lock()
		for _, d := range vm.Config.Hardware.Device {
			if disk, bk := flatDisk(d); disk != nil {
				b.track(vmRef, disk.Key, on)
				stale = stale || bk.ChangeId != ""
			}
		}
		b.mu.Unlock()
		if !on && stale {
			simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.hardware.device",
				Val: copyDevices(vm.Config.Hardware.Device,
					func(_ *types.VirtualDisk, bk *types.VirtualDiskFlatVer2BackingInfo) { bk.ChangeId = "" })}})
		}
	})
}

// ---- SOAP ----

// parseCall returns the local name of the method element in a SOAP body and the text of its
// direct children by local name (namespace prefixes do not matter).
func parseCall(body []byte) (string, map[string]string) {
	d := xml.NewDecoder(bytes.NewReader(body))
	inBody := false
	for {
		tok, err := d.Token()
		if err != nil {
			return "", nil
		}
		method, ok := tok.(xml.StartElement)
		if !ok {
			continue
		}
		if !inBody {
			inBody = method.Name.Local == "Body"
			continue
		}
		args := map[string]string{}
		for {
			tok, err := d.Token()
			if err != nil {
				return method.Name.Local, args
			}
			switch t := tok.(type) {
			case xml.StartElement:
				var v struct {
					Text string `xml:",chardata"`
				}
				if d.DecodeElement(&v, &t) == nil {
					if _, dup := args[t.Name.Local]; !dup {
						args[t.Name.Local] = strings.TrimSpace(v.Text)
					}
				}
			case xml.EndElement:
				return method.Name.Local, args
			}
		}
	}
}

func (b *bed) serveSDK(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	method, args := "", map[string]string(nil)
	if r.Method == http.MethodPost {
		method, args = parseCall(body)
	}
	switch method {
	case "QueryChangedDiskAreas":
		b.queryChanged(w, args)
	case "CreateSnapshot_Task":
		vmRef := args["_this"]
		b.mu.Lock()
		refused, noTools := b.refuse[vmRef], b.noTools[vmRef] && args["quiesce"] == "true"
		b.mu.Unlock()
		if refused || noTools {
			name := vmRef
			b.byRef(vmRef, func(vm *simulator.VirtualMachine) { name = vm.Name })
			if noTools {
				writeFault(w, "ToolsUnavailable", "Cannot complete operation because VMware Tools is not running in "+
					"this virtual machine ("+name+")", "")
			} else {
				writeFault(w, "SnapshotFault", "the test bed refuses snapshots of "+name, "")
			}
			return
		}
		rec := b.forward(r, body)
		if rec.Code == http.StatusOK {
			if snap, ok := taskResult(rec.Body.Bytes()); ok {
				b.stampSnapshot(vmRef, snap)
			}
		}
		relay(w, rec)
	case "ReconfigVM_Task":
		rec := b.forward(r, body)
		b.syncCBT(args["_this"])
		relay(w, rec)
	case "CreateVM_Task":
		// A real host creates a new disk at its capacity (thin: sparse); the simulator leaves
		// its flat file empty. Size every flat file of the new VM that is shorter.
		rec := b.forward(r, body)
		if rec.Code == http.StatusOK {
			if ref, ok := taskResult(rec.Body.Bytes()); ok {
				b.sizeDisks(ref.Value)
			}
		}
		relay(w, rec)
	default:
		r.Body = io.NopCloser(bytes.NewReader(body))
		b.svc.ServeSDK(w, r)
	}
}

// forward lets the simulator answer into a recorder, so the bed can act before the client sees
// the reply. The request keeps its headers (the session cookie) and path (selects the registry).
func (b *bed) forward(r *http.Request, body []byte) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(body))
	b.svc.ServeSDK(rec, r2)
	return rec
}

// serveFolder is the datastore file service as a real host runs it: only for a live session
// (the simulator's own serves anyone), else 401, which a client must answer by logging in again.
func (b *bed) serveFolder(w http.ResponseWriter, r *http.Request) {
	if !b.liveSession(r) {
		http.Error(w, "the session is not authenticated", http.StatusUnauthorized)
		return
	}
	b.svc.ServeDatastore(w, r)
}

// liveSession asks the simulator, with the request's cookie, for something only a session gets.
func (b *bed) liveSession(r *http.Request) bool {
	body := []byte(`<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope ` +
		`xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><CurrentTime xmlns="urn:vim25">` +
		`<_this type="ServiceInstance">ServiceInstance</_this></CurrentTime></soapenv:Body></soapenv:Envelope>`)
	r2 := r.Clone(r.Context())
	r2.Method = http.MethodPost
	r2.URL.Path, r2.URL.RawQuery = "/sdk", ""
	r2.Header.Set("Content-Type", "text/xml; charset=utf-8")
	r2.Header.Del("Range")
	r2.Body = io.NopCloser(bytes.NewReader(body))
	r2.ContentLength = int64(len(body))
	rec := httptest.NewRecorder()
	b.svc.ServeSDK(rec, r2)
	return rec.Code == http.StatusOK && bytes.Contains(rec.Body.Bytes(), []byte("CurrentTimeResponse"))
}

func relay(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

var taskRe = regexp.MustCompile(`<returnval type="Task">([^<]+)</returnval>`)

// sizeDisks extends every flat file of the VM to its disk's capacity.
func (b *bed) sizeDisks(vmRef string) {
	b.byRef(vmRef, func(vm *simulator.VirtualMachine) {
		for _, dev := range vm.Config.Hardware.Device {
			if disk, bk := flatDisk(dev); disk != nil {
				if f := b.flatPath(bk.FileName); f != "" {
					if st, err := os.Stat(f); err == nil && st.Size() < capacity(disk) {
						_ = os.Truncate(f, capacity(disk))
					}
				}
			}
		}
	})
}

// taskResult reads the object a (synchronous, so finished) task made: CreateSnapshot_Task's
// snapshot, CreateVM_Task's VM.
func taskResult(reply []byte) (types.ManagedObjectReference, bool) {
	var res types.ManagedObjectReference
	m := taskRe.FindSubmatch(reply)
	if m == nil {
		return res, false
	}
	task, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "Task", Value: string(m[1])}).(*simulator.Task)
	if !ok {
		return res, false
	}
	simulator.Map.WithLock(task, func() {
		if task.Info.State == types.TaskInfoStateSuccess {
			res, ok = task.Info.Result.(types.ManagedObjectReference)
		} else {
			ok = false
		}
	})
	return res, ok
}

// esc escapes text content (quotes need no escaping there, and stay readable).
var esc = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace

const envelopeOpen = `<?xml version="1.0" encoding="UTF-8"?>` +
	`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" ` +
	`xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" ` +
	`xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`
const envelopeClose = `</soapenv:Body></soapenv:Envelope>`

// writeFault answers a SOAP fault shaped like the simulator's own: HTTP 500, detail element
// "<Type>Fault" with xsi:type "<Type>"; detail is the fault's fields as XML.
func writeFault(w http.ResponseWriter, kind, msg, detail string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(w, `%s<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring>`+
		`<detail><%sFault xmlns="urn:vim25" xsi:type="%s">%s</%sFault></detail></soapenv:Fault>%s`,
		envelopeOpen, esc(msg), kind, kind, detail, kind, envelopeClose)
}

func notFound(w http.ResponseWriter, kind, ref string) {
	writeFault(w, "ManagedObjectNotFound", "managed object not found: "+kind+":"+ref,
		`<obj type="`+kind+`">`+esc(ref)+`</obj>`)
}

// queryChanged answers QueryChangedDiskAreas from the recorded writes: with changeId "*" the
// writes made before the snapshot, with "<uuid>/<a>" those made after the snapshot stamped a.
func (b *bed) queryChanged(w http.ResponseWriter, a map[string]string) {
	vmRef, snap, changeID := a["_this"], a["snapshot"], a["changeId"]
	key, err1 := strconv.ParseInt(a["deviceKey"], 10, 32)
	start, err2 := strconv.ParseInt(a["startOffset"], 10, 64)
	if err1 != nil || err2 != nil || start < 0 {
		writeFault(w, "InvalidArgument", "deviceKey and startOffset must be integers, startOffset ≥ 0", "")
		return
	}
	var d diskAt
	if !b.byRef(vmRef, func(vm *simulator.VirtualMachine) { d = b.diskOf(vm, int32(key)) }) {
		notFound(w, "VirtualMachine", vmRef)
		return
	}
	// Without a snapshot vSphere answers for the disk as it is now, for a powered-off VM only.
	poweredOff := false
	b.byRef(vmRef, func(vm *simulator.VirtualMachine) {
		poweredOff = vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOff
	})
	if snap == "" && !poweredOff {
		writeFault(w, "InvalidState", "changes without a snapshot are known only for a powered-off VM", "")
		return
	}
	if snap != "" && simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: snap}) == nil {
		notFound(w, "VirtualMachineSnapshot", snap)
		return
	}
	fail := func(format string, args ...interface{}) {
		msg := fmt.Sprintf("cannot compute changes for disk %d of %s: ", key, d.vmName) + fmt.Sprintf(format, args...)
		writeFault(w, "FileFault", msg, "<file>"+esc(d.file)+"</file>")
	}
	if !d.found {
		fail("the VM has no such disk")
		return
	}
	if !d.cbt {
		fail("change tracking is not enabled")
		return
	}

	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.track(vmRef, d.key, true)
	upper, stamped := b.stamps[snap].gens[d.key]
	if snap == "" {
		upper, stamped = st.gen, true // every write so far
	} else if !stamped || b.stamps[snap].vm != vmRef {
		fail("'%s' is not a snapshot of this VM taken with change tracking on", snap)
		return
	}
	lower := int64(-1) // "*": everything up to the snapshot
	if changeID != "*" {
		i := strings.LastIndex(changeID, "/")
		n, err := strconv.ParseInt(changeID[i+1:], 10, 64)
		switch {
		case i < 0 || err != nil:
			fail("unparsable changeId '%s'", changeID)
			return
		case changeID[:i] != st.uuid || n < st.epoch:
			fail("unknown changeId '%s' (tracking was reset or restarted)", changeID)
			return
		case n > upper:
			fail("changeId '%s' is newer than snapshot %s", changeID, snap)
			return
		}
		lower = n
	}

	areas, length := changedAreas(st.writes, lower, upper, start, d.size)
	var buf bytes.Buffer
	fmt.Fprintf(&buf, `%s<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval>`+
		`<startOffset>%d</startOffset><length>%d</length>`, envelopeOpen, start, length)
	for _, s := range areas {
		fmt.Fprintf(&buf, `<changedArea><start>%d</start><length>%d</length></changedArea>`, s[0], s[1]-s[0])
	}
	buf.WriteString(`</returnval></QueryChangedDiskAreasResponse>` + envelopeClose)
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	_, _ = w.Write(buf.Bytes())
}

// changedAreas merges the writes stamped in (lower, upper] where they overlap or touch, clips
// them to [start, size) and pages them: at most maxAreas, and then length ends at the last one.
func changedAreas(writes []extent, lower, upper, start, size int64) (areas [][2]int64, length int64) {
	var spans [][2]int64
	for _, e := range writes {
		if e.gen > lower && e.gen <= upper {
			spans = append(spans, [2]int64{e.off, e.off + e.len})
		}
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i][0] < spans[j][0] })
	for _, s := range spans {
		if s[0] < start {
			s[0] = start
		}
		if s[1] > size {
			s[1] = size
		}
		if n := len(areas); s[0] >= s[1] {
			continue
		} else if n > 0 && s[0] <= areas[n-1][1] {
			if s[1] > areas[n-1][1] {
				areas[n-1][1] = s[1]
			}
		} else {
			areas = append(areas, s)
		}
	}
	if length = size - start; length < 0 {
		length = 0
	}
	if len(areas) > maxAreas {
		areas = areas[:maxAreas]
		length = areas[maxAreas-1][1] - start
	}
	return areas, length
}

// ---- /testbed/ endpoints ----

func (b *bed) serveTestbed(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	name := q.Get("vm")
	if r.URL.Path == "/testbed/info" {
		if r.Method != http.MethodGet {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(b.info())
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	switch r.URL.Path {
	case "/testbed/write":
		b.write(w, r, name)
	case "/testbed/cbt-reset":
		if !b.byName(name, func(vm *simulator.VirtualMachine) {
			on := isTrue(vm.Config.ChangeTrackingEnabled)
			b.mu.Lock()
			defer b.mu.Unlock()
			for _, d := range vm.Config.Hardware.Device {
				if disk, _ := flatDisk(d); disk != nil {
					st := b.track(vm.Self.Value, disk.Key, false)
					if on {
						st.uuid, st.epoch = newUUID(), st.gen
					}
				}
			}
		}) {
			http.Error(w, "no VM named "+name, http.StatusNotFound)
		}
	case "/testbed/no-tools":
		b.setSwitch(w, q, name, b.noTools)
	case "/testbed/refuse-snapshots":
		b.setSwitch(w, q, name, b.refuse)
	default:
		http.NotFound(w, r)
	}
}

// setSwitch sets a per-VM switch (by the VM's moref) from the request's on=true|false.
func (b *bed) setSwitch(w http.ResponseWriter, q url.Values, name string, switches map[string]bool) {
	on, err := strconv.ParseBool(q.Get("on"))
	if err != nil {
		http.Error(w, "on must be true or false", http.StatusBadRequest)
		return
	}
	var ref string
	if !b.byName(name, func(vm *simulator.VirtualMachine) { ref = vm.Self.Value }) {
		http.Error(w, "no VM named "+name, http.StatusNotFound)
		return
	}
	b.mu.Lock()
	switches[ref] = on
	b.mu.Unlock()
}

// write stores guest data in a disk's flat file and records the extent for change tracking.
func (b *bed) write(w http.ResponseWriter, r *http.Request, name string) {
	key, err1 := strconv.ParseInt(r.URL.Query().Get("disk"), 10, 32)
	off, err2 := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
	data, err3 := io.ReadAll(r.Body)
	if err1 != nil || err2 != nil || err3 != nil {
		http.Error(w, "need integer disk and offset, and a body", http.StatusBadRequest)
		return
	}
	var d diskAt
	b.byName(name, func(vm *simulator.VirtualMachine) { d = b.diskOf(vm, int32(key)) })
	if !d.found || d.flat == "" {
		http.Error(w, fmt.Sprintf("no VM %q with disk %d", name, key), http.StatusNotFound)
		return
	}
	if off < 0 || off+int64(len(data)) > d.size {
		http.Error(w, fmt.Sprintf("write [%d, %d) is outside the disk's %d bytes", off, off+int64(len(data)), d.size),
			http.StatusBadRequest)
		return
	}
	b.mu.Lock() // also orders the write against snapshot stamping
	defer b.mu.Unlock()
	f, err := os.OpenFile(d.flat, os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteAt(data, off)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if len(data) > 0 {
		st := b.track(d.vm, d.key, d.cbt)
		st.writes = append(st.writes, extent{off, int64(len(data)), st.gen})
	}
}
