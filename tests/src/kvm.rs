//! The KVM test bed: libvirtd started when needed, and an OS-less VM with two qcow2 disks that
//! tests write to through QEMU's block layer while keeping a model of what each disk holds.

use std::path::{Path, PathBuf};
use std::process::Command;
use vds_store::{RestorePoint, Store};

pub const URI: &str = "qemu:///system";
pub const MIB: usize = 1 << 20;
pub const DISK: usize = 64 * MIB;

pub fn virsh(args: &[&str]) -> String {
    let out =
        Command::new("virsh").arg("-c").arg(URI).args(args).output().expect("virsh runs (package libvirt-clients)");
    assert!(out.status.success(), "virsh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The test bed's libvirtd over TCP with SASL (see tests/testbed/start-libvirtd.sh): the remote
/// code paths (credentials, NBD over TCP, uploads through the storage API) against the real daemon.
pub const TCP_URI: &str = "qemu+tcp://127.0.0.1/system";
pub const TCP_USER: &str = "holdfast";
pub const TCP_PASSWORD: &str = "testbed-pass";
/// The test bed's libvirtd over TLS (client certificate required), with the client's files in
/// the directory libvirt's `pkipath` names (cacert.pem, clientcert.pem, clientkey.pem).
pub const TLS_URI: &str = "qemu+tls://127.0.0.1/system?pkipath=/var/tmp/holdfast-testbed/pki/libvirt-client";
/// The test bed's libvirt through ssh (tests/testbed/start-sshd.sh: port 2222, its own key).
pub const SSH_URI: &str =
    "qemu+ssh://root@127.0.0.1:2222/system?keyfile=/var/tmp/holdfast-testbed/ssh/id_ed25519&no_verify=1";
/// The test bed's client side of NBD over TLS: ca-cert.pem, client-cert.pem, client-key.pem.
pub const TLS_CLIENT_DIR: &str = "/var/tmp/holdfast-testbed/pki/client";

/// Starts virtlogd and libvirtd (local socket, and TCP with SASL) unless both answer already.
pub fn ensure_libvirtd() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/start-libvirtd.sh");
        let out = Command::new("bash").arg(&script).output().expect("bash runs");
        assert!(
            out.status.success(),
            "{} failed: {}{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        sweep_dead_runs();
    });
}

/// The test run that made a test-bed object: its name is `hf-test-<tag>-<pid>[-<suffix>]`
/// (see vm_dir), and the last all-digit part is the pid.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix("hf-test-")?
        .split('-')
        .rev()
        .find(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
}

/// Removes the domains, pools and directories that test runs which no longer exist left behind
/// (a run killed by a timeout or a crash never reaches its Drop): each would otherwise keep a QEMU
/// process and its memory for good. Objects of a live process, another test binary running now,
/// are left alone.
fn sweep_dead_runs() {
    let dead = |name: &str| owner_pid(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    let list = |args: &[&str]| -> Vec<String> {
        Command::new("virsh")
            .arg("-c")
            .arg(URI)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(|l| l.trim().to_string()).collect())
            .unwrap_or_default()
    };
    for vm in list(&["list", "--all", "--name"]).into_iter().filter(|n| dead(n)) {
        eprintln!("test bed: removing domain {vm}, left by a test run that has ended");
        let _ = Command::new("virsh").args(["-c", URI, "destroy", &vm]).output();
        let _ = Command::new("virsh").args(["-c", URI, "undefine", "--checkpoints-metadata", &vm]).output();
    }
    for net in list(&["net-list", "--all", "--name"]).into_iter().filter(|n| dead(n)) {
        let _ = Command::new("virsh").args(["-c", URI, "net-destroy", &net]).output();
        let _ = Command::new("virsh").args(["-c", URI, "net-undefine", &net]).output();
    }
    for pool in list(&["pool-list", "--all", "--name"]).into_iter().filter(|n| dead(n)) {
        let _ = Command::new("virsh").args(["-c", URI, "pool-destroy", &pool]).output();
        let _ = Command::new("virsh").args(["-c", URI, "pool-undefine", &pool]).output();
    }
    if let Ok(dirs) = std::fs::read_dir("/var/tmp/holdfast-kvm-tests") {
        for d in dirs.flatten() {
            if d.file_name().to_str().is_some_and(dead) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
}

/// An isolated libvirt network (a bridge without addresses, so no dnsmasq), removed on drop.
/// Named after the test's VM, so sweep_dead_runs knows whose it is.
pub struct TestNetwork(pub String);

impl TestNetwork {
    pub fn create(vm: &str) -> TestNetwork {
        let name = format!("{vm}-net");
        // Bridge names are at most 15 bytes: "hfbr" and the pid's last digits.
        let pid = std::process::id();
        let n = NETWORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let xml = format!("<network><name>{name}</name><bridge name='hfbr{}{n}'/></network>", pid % 1_000_000);
        let path = std::env::temp_dir().join(format!("{name}.xml"));
        std::fs::write(&path, xml).unwrap();
        virsh(&["net-create", path.to_str().unwrap()]);
        TestNetwork(name)
    }
}

static NETWORKS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Command::new("virsh").args(["-c", URI, "net-destroy", &self.0]).output();
    }
}

/// Starts the test bed's sshd for SSH_URI unless it answers already.
pub fn ensure_sshd() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/start-sshd.sh");
        let out = Command::new("bash").arg(&script).output().expect("bash runs");
        assert!(out.status.success(), "{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    });
}

/// Stops libvirtd and starts it again (QEMU processes keep running). Only for tests that run
/// alone in their test binary: every other libvirt connection breaks.
pub fn restart_libvirtd() {
    stop_libvirtd();
    start_libvirtd();
}

/// Stops libvirtd and waits until it has gone (QEMU and its VMs keep running).
pub fn stop_libvirtd() {
    let _ = Command::new("pkill").args(["-x", "libvirtd"]).status();
    let t = std::time::Instant::now();
    while Command::new("pgrep").args(["-x", "libvirtd"]).output().is_ok_and(|o| o.status.success()) {
        assert!(t.elapsed() < std::time::Duration::from_secs(30), "libvirtd did not stop");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn start_libvirtd() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/start-libvirtd.sh");
    assert!(Command::new("bash").arg(&script).status().is_ok_and(|s| s.success()), "libvirtd did not restart");
}

/// An empty qcow2 image of DISK bytes.
pub fn create_qcow2(path: &Path) {
    let st = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(path).arg(DISK.to_string()).status();
    assert!(matches!(st, Ok(s) if s.success()), "qemu-img create {}", path.display());
}

/// A test domain's name (sweep_dead_runs reads the pid in it) and its empty directory, under /var/tmp with open permissions: QEMU
/// runs as libvirt-qemu and must reach the disks.
fn vm_dir(tag: &str) -> (String, PathBuf) {
    let name = format!("hf-test-{tag}-{}", std::process::id());
    let dir = PathBuf::from("/var/tmp/holdfast-kvm-tests").join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for d in [dir.parent().unwrap(), dir.as_path()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (name, dir)
}

/// A Debian guest that boots (TCG: a Linux kernel hangs under the nested KVM here) with the QEMU
/// guest agent running, on a qcow2 overlay of the image tests/testbed/build-guest.sh makes. Its
/// root filesystem is vda, ext4, mounted read-write.
pub struct TestGuest {
    pub name: String,
    pub dir: PathBuf,
}

impl TestGuest {
    /// Defines and boots the guest and waits until its agent answers (about 30 s under TCG).
    pub fn boot(tag: &str) -> TestGuest {
        ensure_libvirtd();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("testbed/build-guest.sh");
        let out = Command::new("bash").arg(&script).output().expect("bash runs");
        assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
        let image = Path::new("/var/tmp/holdfast-testbed/guest");
        let (name, dir) = vm_dir(tag);
        let disk = dir.join("root.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(image.join("root.qcow2"))
            .arg(&disk)
            .status();
        assert!(matches!(st, Ok(s) if s.success()), "qemu-img create {}", disk.display());
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{img}/vmlinuz</kernel><initrd>{img}/initrd.img</initrd>\
             <cmdline>root=/dev/vda rw console=ttyS0 quiet</cmdline></os><features><acpi/></features>\
             <devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{disk}'/>\
             <target dev='vda' bus='virtio'/></disk>\
             <serial type='file'><source path='{console}'/><target port='0'/></serial>\
             <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices></domain>",
            img = image.display(),
            disk = disk.display(),
            console = dir.join("console.log").display(),
        );
        let path = dir.join("domain.xml");
        std::fs::write(&path, xml).unwrap();
        virsh(&["define", path.to_str().unwrap()]);
        virsh(&["start", &name]);
        let guest = TestGuest { name, dir };
        let t = std::time::Instant::now();
        while guest.agent(r#"{"execute":"guest-ping"}"#).is_none() {
            let console = std::fs::read_to_string(guest.dir.join("console.log")).unwrap_or_default();
            let tail: String = console.lines().rev().take(15).collect::<Vec<_>>().join("\n");
            assert!(
                t.elapsed() < std::time::Duration::from_secs(240),
                "the guest agent never answered; console:\n{tail}"
            );
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        guest
    }

    /// A guest agent command's reply, None while the agent does not answer.
    pub fn agent(&self, command: &str) -> Option<String> {
        let out = Command::new("virsh")
            .args(["-c", URI, "qemu-agent-command", &self.name, command, "--timeout", "5"])
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for TestGuest {
    fn drop(&mut self) {
        let _ = Command::new("virsh").args(["-c", URI, "destroy", &self.name]).output();
        let _ = Command::new("virsh").args(["-c", URI, "undefine", "--checkpoints-metadata", &self.name]).output();
        if std::thread::panicking() {
            // The test failed: its files (the service's log among them) stay for a look.
            eprintln!("kept {} for a look at what failed", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct TestVm {
    pub name: String,
    pub dir: PathBuf,
    /// What each disk holds, kept in step with every write.
    pub model: Vec<Vec<u8>>,
}

impl TestVm {
    pub fn start(tag: &str) -> TestVm {
        ensure_libvirtd();
        let (name, dir) = vm_dir(tag);
        let mut disks = String::new();
        for (i, dev) in ["vda", "vdb"].iter().enumerate() {
            let img = dir.join(format!("disk{i}.qcow2"));
            create_qcow2(&img);
            disks += &format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='{dev}' bus='virtio'/></disk>",
                img.display()
            );
        }
        let kind = if Path::new("/dev/kvm").exists() { "kvm" } else { "qemu" };
        // No OS: the disks start blank, with no boot signature, so SeaBIOS finds nothing to boot and
        // the vCPU idles. (A disk with an MBR signature but no boot code would be booted and spin a
        // core, <boot dev='fd'/> or not: see tests/bench/kvm-bench.sh.)
        let xml = format!(
            "<domain type='{kind}'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='fd'/></os><features><acpi/></features>\
             <devices>{disks}<interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface></devices></domain>"
        );
        let path = dir.join("domain.xml");
        std::fs::write(&path, xml).unwrap();
        virsh(&["define", path.to_str().unwrap()]);
        virsh(&["start", &name]);
        TestVm { name, dir, model: vec![vec![0u8; DISK]; 2] }
    }

    /// A qemu-io command on disk `disk` (0 = vda) through QEMU's block layer, which the dirty
    /// bitmaps see.
    pub fn qemu_io(&self, disk: usize, cmd: &str) {
        let reply = virsh(&[
            "qemu-monitor-command",
            &self.name,
            "--hmp",
            &format!("qemu-io -d /machine/peripheral/virtio-disk{disk}/virtio-backend \"{cmd}\""),
        ]);
        assert!(!reply.contains("Error"), "qemu-io: {reply}");
    }

    /// A guest write of `pattern`, recorded in the model.
    pub fn write(&mut self, disk: usize, pattern: u8, offset: usize, len: usize) {
        self.qemu_io(disk, &format!("write -P {pattern:#x} {offset} {len}"));
        self.model[disk][offset..offset + len].fill(pattern);
    }

    /// Hot-plugs a new empty qcow2 disk of `size` (qemu-img syntax) as `dev`; returns its path.
    pub fn hotplug_qcow2(&self, file: &str, dev: &str, size: &str) -> PathBuf {
        self.hotplug(file, dev, size, "qcow2")
    }

    /// Hot-plugs a new 1 GiB qcow2 disk as `dev` and writes 256 MiB of incompressible data at
    /// its start through QEMU: a disk whose backup takes long enough to break in the middle.
    /// Returns the file holding that data.
    pub fn hotplug_noise(&self, file: &str, dev: &str, disk: usize, seed: u64) -> PathBuf {
        self.hotplug_qcow2(file, dev, "1G");
        let noise = self.dir.join(format!("{file}.noise"));
        std::fs::write(&noise, crate::noise(256 * MIB, seed)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&noise, std::fs::Permissions::from_mode(0o644)).unwrap();
        self.qemu_io(disk, &format!("write -s {} 0 {}", noise.display(), 256 * MIB));
        noise
    }

    /// Hot-plugs a new empty disk image of `format` (qcow2, raw) as `dev`; returns its path.
    pub fn hotplug(&self, file: &str, dev: &str, size: &str, format: &str) -> PathBuf {
        let img = self.dir.join(file);
        let st = Command::new("qemu-img").args(["create", "-q", "-f", format]).arg(&img).arg(size).status();
        assert!(matches!(st, Ok(s) if s.success()), "qemu-img create {}", img.display());
        let path = img.to_str().expect("utf-8 path");
        virsh(&["attach-disk", &self.name, path, dev, "--driver", "qemu", "--subdriver", format, "--live"]);
        img
    }

    pub fn checkpoints(&self) -> Vec<String> {
        virsh(&["checkpoint-list", &self.name, "--name"])
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    pub fn has_job(&self) -> bool {
        !virsh(&["domjobinfo", &self.name]).contains("None")
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        let _ = Command::new("virsh").args(["-c", URI, "destroy", &self.name]).output();
        let _ = Command::new("virsh").args(["-c", URI, "undefine", "--checkpoints-metadata", &self.name]).output();
        if std::thread::panicking() {
            // The test failed: its files (the service's log among them) stay for a look.
            eprintln!("kept {} for a look at what failed", self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Exports both disks of `point` and compares them with `model`.
pub fn assert_point_matches(store: &Store, point: &RestorePoint, model: &[Vec<u8>], dir: &Path) {
    for (i, dev) in ["vda", "vdb"].iter().enumerate() {
        let out = dir.join(format!("check-{dev}.raw"));
        let _ = std::fs::remove_file(&out);
        let f = std::fs::File::options().write(true).create_new(true).open(&out).unwrap();
        store.open_disk(&point.point_id, dev).unwrap().export(&f, 2, &|_, _| ()).unwrap();
        assert!(
            std::fs::read(&out).unwrap() == model[i],
            "point {} disk {dev} differs from the disk at backup time",
            point.point_id
        );
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn a_test_bed_name_gives_the_pid_of_the_run_that_made_it() {
        assert_eq!(owner_pid("hf-test-chain-4242"), Some(4242));
        assert_eq!(owner_pid("hf-test-chain-4242-restored-q"), Some(4242));
        assert_eq!(owner_pid("hf-test-two-disks-77-pool"), Some(77));
        assert_eq!(owner_pid("hf-test-tag2-9-copy"), Some(9));
        assert_eq!(owner_pid("hfbench"), None);
        assert_eq!(owner_pid("production-vm-12"), None);
        assert_eq!(owner_pid("hf-test-nopid"), None);
    }
}
