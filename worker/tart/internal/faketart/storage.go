package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// home is $TART_HOME: vms/, cache/OCIs/, tmp/, and faketart/ for the
// fake's own state (invocation log, DHCP leases, ARP table).
type home struct{ root string }

func openHome(getenv func(string) string) (home, error) {
	root := getenv("TART_HOME")
	if root == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return home{}, fmt.Errorf("TART_HOME is not set and the home directory is unknown: %w", err)
		}
		root = filepath.Join(h, ".tart")
	}
	if _, err := os.Stat(root); err != nil {
		if err := os.MkdirAll(root, 0o755); err != nil {
			return home{}, fmt.Errorf("TART_HOME is invalid: %s does not exist, yet we can't create it: %v", root, err)
		}
	}
	return home{root: root}, nil
}

func (h home) vmsDir() string   { return filepath.Join(h.root, "vms") }
func (h home) ociRoot() string  { return filepath.Join(h.root, "cache", "OCIs") }
func (h home) tmpDir() string   { return filepath.Join(h.root, "tmp") }
func (h home) fakeDir() string  { return filepath.Join(h.root, "faketart") }
func (h home) leaseDir() string { return filepath.Join(h.fakeDir(), "leases") }
func (h home) arpDir() string   { return filepath.Join(h.fakeDir(), "arp") }

func (h home) local(name string) vmDir {
	return vmDir{name: name, path: filepath.Join(h.vmsDir(), name)}
}

// localVMs lists the initialized local VMs, sorted by name.
func (h home) localVMs() ([]vmDir, error) {
	entries, err := os.ReadDir(h.vmsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []vmDir
	for _, e := range entries {
		if d := h.local(e.Name()); e.IsDir() && d.initialized() {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, nil
}

// newTemp makes a directory under tmp/ and holds an flock on it, so that
// the garbage collection other commands run leaves it alone.
func (h home) newTemp() (dir string, release func(), err error) {
	if err := os.MkdirAll(h.tmpDir(), 0o755); err != nil {
		return "", nil, err
	}
	dir, err = os.MkdirTemp(h.tmpDir(), "faketart-")
	if err != nil {
		return "", nil, err
	}
	unlock, err := flock(dir, true)
	if err != nil {
		os.RemoveAll(dir)
		return "", nil, err
	}
	return dir, unlock, nil
}

// gc removes tmp/ entries nobody holds a lock on, as Tart does before
// every command but pull and clone. Entries younger than a minute are left
// alone: one may be a directory whose creator has yet to lock it.
func (h home) gc() {
	entries, err := os.ReadDir(h.tmpDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		if info, err := e.Info(); err != nil || time.Since(info.ModTime()) < time.Minute {
			continue
		}
		p := filepath.Join(h.tmpDir(), e.Name())
		unlock, err := tryFlock(p)
		if err != nil {
			continue
		}
		os.RemoveAll(p)
		unlock()
	}
}

// lockStorage takes the global $TART_HOME lock that clone and run hold
// while they change which VMs exist or run.
func (h home) lockStorage() (func(), error) { return flock(h.root, true) }

// vmConfig is config.json, with the field names Tart uses.
type vmConfig struct {
	Version       int           `json:"version"`
	OS            string        `json:"os"`
	Arch          string        `json:"arch"`
	CPUCountMin   int           `json:"cpuCountMin"`
	CPUCount      int           `json:"cpuCount"`
	MemorySizeMin uint64        `json:"memorySizeMin"`
	MemorySize    uint64        `json:"memorySize"`
	MACAddress    string        `json:"macAddress"`
	Display       displayConfig `json:"display"`
	DiskFormat    string        `json:"diskFormat"`
	ECID          string        `json:"ecid,omitempty"`
	HardwareModel string        `json:"hardwareModel,omitempty"`
}

type displayConfig struct {
	Width  int    `json:"width"`
	Height int    `json:"height"`
	Unit   string `json:"unit,omitempty"`
}

// vmDir is one VM's directory: a local VM or an OCI cache entry.
type vmDir struct {
	name string
	path string
}

func (d vmDir) configPath() string { return filepath.Join(d.path, "config.json") }
func (d vmDir) diskPath() string   { return filepath.Join(d.path, "disk.img") }
func (d vmDir) nvramPath() string  { return filepath.Join(d.path, "nvram.bin") }
func (d vmDir) statePath() string  { return filepath.Join(d.path, "state.vzvmsave") }

// guestShutdownPath is the test hook: when this file appears, the guest
// of a running VM "shuts down".
func (d vmDir) guestShutdownPath() string { return filepath.Join(d.path, "guest-shutdown") }

// agentPath marks a booted guest whose Tart guest agent answers.
func (d vmDir) agentPath() string { return filepath.Join(d.path, "faketart-agent") }

// initialized is Tart's notion of "the VM exists".
func (d vmDir) initialized() bool {
	for _, p := range []string{d.configPath(), d.diskPath(), d.nvramPath()} {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// readConfig must not be called on a VM this process has locked: closing
// any descriptor of a file drops the process's fcntl locks on it.
func (d vmDir) readConfig() (vmConfig, error) {
	var c vmConfig
	b, err := os.ReadFile(d.configPath())
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("%s: %w", d.configPath(), err)
	}
	return c, nil
}

// writeConfig rewrites config.json in place (same inode), so that a lock a
// running VM holds on it survives, as with Tart.
func (d vmDir) writeConfig(c vmConfig) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return os.WriteFile(d.configPath(), b, 0o644)
}

// lockHolder returns the PID holding the VM's run lock, 0 when none.
func (d vmDir) lockHolder() (int, error) {
	f, err := os.Open(d.configPath())
	if err != nil {
		return 0, err
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: io.SeekStart}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_GETLK, &lk); err != nil {
		return 0, err
	}
	if lk.Type == syscall.F_UNLCK {
		return 0, nil
	}
	return int(lk.Pid), nil
}

func (d vmDir) running() bool {
	pid, err := d.lockHolder()
	return err == nil && pid != 0
}

func (d vmDir) state() string {
	if d.running() {
		return "running"
	}
	if _, err := os.Stat(d.statePath()); err == nil {
		return "suspended"
	}
	return "stopped"
}

func (d vmDir) diskBytes() int64 {
	st, err := os.Stat(d.diskPath())
	if err != nil {
		return 0
	}
	return st.Size()
}

// sizeGB is the apparent size of config, disk and NVRAM in GB (10^9).
func (d vmDir) sizeGB() int {
	var total int64
	for _, p := range []string{d.configPath(), d.diskPath(), d.nvramPath()} {
		if st, err := os.Stat(p); err == nil {
			total += st.Size()
		}
	}
	return int(total / 1e9)
}

// allocatedGB is what the files take on disk; the fake's disks are sparse.
func (d vmDir) allocatedGB() float64 {
	var total int64
	for _, p := range []string{d.configPath(), d.diskPath(), d.nvramPath()} {
		if st, err := os.Stat(p); err == nil {
			if sys, ok := st.Sys().(*syscall.Stat_t); ok {
				total += sys.Blocks * 512
			}
		}
	}
	return float64(total) / 1e9
}

func (d vmDir) accessed() time.Time {
	st, err := os.Stat(d.path)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}

func (d vmDir) touch() {
	now := time.Now()
	os.Chtimes(d.path, now, now)
}

// copyTo copies the VM into dst. The fake's disk images hold no data, so
// the disk copy is a sparse file of the same size, as cheap as APFS's
// copy-on-write clone.
func (d vmDir) copyTo(dst string, newMAC bool) error {
	cfg, err := d.readConfig()
	if err != nil {
		return err
	}
	if newMAC {
		cfg.MACAddress = randomMAC()
	}
	to := vmDir{path: dst}
	if err := to.writeConfig(cfg); err != nil {
		return err
	}
	nvram, err := os.ReadFile(d.nvramPath())
	if err != nil {
		return err
	}
	if err := os.WriteFile(to.nvramPath(), nvram, 0o644); err != nil {
		return err
	}
	return makeSparse(to.diskPath(), d.diskBytes())
}

func makeSparse(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// replaceDir moves src to dst, replacing whatever dst was (Tart's
// FileManager.replaceItemAt: no existence check).
func replaceDir(h home, src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if _, err := os.Lstat(dst); err == nil {
		trash := src + ".replaced"
		if err := os.Rename(dst, trash); err != nil {
			return err
		}
		defer os.RemoveAll(trash)
	}
	return os.Rename(src, dst)
}

func randomMAC() string {
	var b [6]byte
	rand.Read(b[:])
	b[0] = b[0]&0xfe | 0x02 // unicast, locally administered
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3], b[4], b[5])
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// guestIP is the address a VM's guest gets: 127.100.x.y derived from the VM
// name, so that a test can listen on it on Linux's loopback.
func guestIP(name string) string {
	h := fnv.New32a()
	h.Write([]byte(name))
	v := h.Sum32()
	return fmt.Sprintf("127.100.%d.%d", (v>>8)&0xff, v%254+1)
}

// A lease table (DHCP or ARP) maps a MAC address to an IP, one file per MAC.
func writeLease(dir, mac, ip string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".tmp-"+randomHex(8))
	if err := os.WriteFile(tmp, []byte(ip+"\n"), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, strings.ReplaceAll(mac, ":", "-")))
}

func readLease(dir, mac string) string {
	b, err := os.ReadFile(filepath.Join(dir, strings.ReplaceAll(mac, ":", "-")))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// remoteName is an OCI reference host[:port]/namespace[:tag|@sha256:hex].
type remoteName struct {
	host, namespace, tag, digest string
}

var (
	hostPattern      = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]+)?$`)
	namespacePattern = regexp.MustCompile(`^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$`)
	tagPattern       = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
	digestPattern    = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)
)

// parseRemote reports whether s is a remote name; anything else is a
// local name.
func parseRemote(s string) (remoteName, bool) {
	host, rest, ok := strings.Cut(s, "/")
	if !ok || !hostPattern.MatchString(host) {
		return remoteName{}, false
	}
	r := remoteName{host: host}
	if ns, digest, ok := strings.Cut(rest, "@"); ok {
		if !digestPattern.MatchString(digest) {
			return remoteName{}, false
		}
		r.namespace, r.digest = ns, digest
	} else {
		r.namespace, r.tag = rest, "latest"
		if i := strings.LastIndex(rest, ":"); i >= 0 {
			r.namespace, r.tag = rest[:i], rest[i+1:]
			if !tagPattern.MatchString(r.tag) {
				return remoteName{}, false
			}
		}
	}
	if !namespacePattern.MatchString(r.namespace) {
		return remoteName{}, false
	}
	return r, true
}

func (r remoteName) String() string {
	if r.digest != "" {
		return r.host + "/" + r.namespace + "@" + r.digest
	}
	return r.host + "/" + r.namespace + ":" + r.tag
}

func (r remoteName) reference() string {
	if r.digest != "" {
		return r.digest
	}
	return r.tag
}

// registryDigest is the digest the fake registry serves for a tag.
func (r remoteName) registryDigest() string {
	if r.digest != "" {
		return r.digest
	}
	sum := sha256.Sum256([]byte(r.host + "/" + r.namespace + ":" + r.tag))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func (h home) repoDir(r remoteName) string {
	return filepath.Join(append([]string{h.ociRoot(), r.host}, strings.Split(r.namespace, "/")...)...)
}

// oci is the cache entry of r: the tag symlink or the digest directory.
func (h home) oci(r remoteName) vmDir {
	return vmDir{name: r.String(), path: filepath.Join(h.repoDir(r), r.reference())}
}

// ociImages lists the cache: every tag symlink and every digest directory.
func (h home) ociImages() ([]vmDir, error) {
	var out []vmDir
	err := filepath.WalkDir(h.ociRoot(), func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		base := e.Name()
		isDigest := e.IsDir() && strings.HasPrefix(base, "sha256:")
		isTag := e.Type()&fs.ModeSymlink != 0
		if !isDigest && !isTag {
			return nil
		}
		rel, err := filepath.Rel(h.ociRoot(), filepath.Dir(p))
		if err != nil {
			return err
		}
		host, ns, _ := strings.Cut(filepath.ToSlash(rel), "/")
		r := remoteName{host: host, namespace: ns, tag: base}
		if isDigest {
			r.tag, r.digest = "", base
		}
		if d := (vmDir{name: r.String(), path: p}); d.initialized() {
			out = append(out, d)
		}
		if isDigest {
			return fs.SkipDir
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, err
}

// imageSpec is what the fake registry knows about an image, guessed from
// its name like a person would: Linux distributions by name, macOS
// otherwise, Xcode images with Cirrus Labs' 140 GB disk.
type imageSpec struct {
	os         string
	diskGB     int64
	compressed float64 // GB
}

func specFor(name string) imageSpec {
	lower := strings.ToLower(name)
	for _, distro := range []string{"ubuntu", "debian", "fedora", "linux"} {
		if strings.Contains(lower, distro) {
			return imageSpec{os: "linux", diskGB: 20, compressed: 1.2}
		}
	}
	if strings.Contains(lower, "xcode") {
		return imageSpec{os: "darwin", diskGB: 140, compressed: 61.8}
	}
	return imageSpec{os: "darwin", diskGB: 50, compressed: 25.3}
}

// newVMFiles writes a fresh VM (config, NVRAM, sparse disk) into dir.
func newVMFiles(dir, guestOS string, diskGB int64, mac string) error {
	cfg := vmConfig{
		Version: 1, OS: guestOS, Arch: "arm64",
		CPUCountMin: 4, CPUCount: 4,
		MemorySizeMin: 4096 << 20, MemorySize: 8192 << 20,
		MACAddress: mac,
		Display:    displayConfig{Width: 1024, Height: 768},
		DiskFormat: "raw",
	}
	if guestOS == "darwin" {
		cfg.ECID = randomHex(8)
		cfg.HardwareModel = "YnBsaXN0MDA="
	} else {
		cfg.CPUCountMin, cfg.CPUCount = 1, 4
		cfg.MemorySizeMin, cfg.MemorySize = 512<<20, 4096<<20
	}
	d := vmDir{path: dir}
	if err := d.writeConfig(cfg); err != nil {
		return err
	}
	if err := os.WriteFile(d.nvramPath(), []byte("faketart nvram\n"), 0o644); err != nil {
		return err
	}
	return makeSparse(d.diskPath(), diskGB*1e9)
}

// imageMAC is the MAC address baked into an image, the same for every
// clone unless regenerated (the stale-DHCP-lease pitfall).
func imageMAC(name string) string {
	sum := sha256.Sum256([]byte("mac:" + name))
	sum[0] = sum[0]&0xfe | 0x02
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", sum[0], sum[1], sum[2], sum[3], sum[4], sum[5])
}

// flock takes an flock(2) on path (a file or directory), blocking or not.
func flock(path string, block bool) (func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	how := syscall.LOCK_EX
	if !block {
		how |= syscall.LOCK_NB
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, err
	}
	var once sync.Once
	return func() { once.Do(func() { f.Close() }) }, nil
}

func tryFlock(path string) (func(), error) { return flock(path, false) }
