//! Booting one guest of the matrix under QEMU and collecting its outcome. QEMU's TCG (software
//! emulation) is used: this machine's `/dev/kvm` is a nested-virtualisation module under which
//! stock kernels die. The guest sees the host's root read-only over 9p (with a tmpfs overlay
//! on top), its job directory read-write at the same path, and a scratch disk.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    initramfs,
    job::{Job, Outcome},
    kernels::Kernel,
};

/// Memory and CPUs of a guest: one CPU (guests run side by side, one per host CPU; the host's
/// own run covers two CPUs' per-CPU tables), and room for the tests' cgroups and a
/// machine-wide OOM kill's allocation.
const MEMORY: &str = "2G";
const CPUS: &str = "1";
/// The scratch disk's size (sparse on the host): files the tests evict, a swap file.
const SCRATCH_BYTES: u64 = 4 << 30;
/// Longest a guest may run before it is stopped and its kernel failed (its outcome so far is
/// kept): far more than a whole run takes (10 to 25 minutes).
const TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Boots `kernel` with `job` and returns what it did. A guest that does not boot, or ends
/// without an outcome, is an error that says where its console log is.
pub fn run(kernel: &Kernel, job: &Job, dir: &Path) -> Result<Outcome> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    fs::write(dir.join("job.json"), serde_json::to_string_pretty(job)?)?;
    // The binary running now; if cargo has since rebuilt it, the kernel names the old file
    // "... (deleted)", and the new one at the same path is the one to run.
    let xtask = std::env::current_exe()?;
    let xtask = PathBuf::from(
        xtask
            .to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_owned(),
    );
    fs::write(
        dir.join("run"),
        format!("exec '{}' guest-job '{}'\n", xtask.display(), dir.display()),
    )?;
    let initramfs = dir.join("initramfs.cpio");
    initramfs::write(kernel, &initramfs)?;
    let scratch = dir.join("scratch.img");
    fs::File::create(&scratch)?.set_len(SCRATCH_BYTES)?;

    let console_path = dir.join("console.log");
    let mut console = fs::File::create(&console_path)?;
    let started = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-smp", CPUS, "-m", MEMORY])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel.vmlinux())
        .arg("-initrd")
        .arg(&initramfs)
        .arg("-append")
        .arg(format!(
            // mitigations=off: emulated page-table isolation would make every syscall slower
            // still; nothing memtrace does depends on it. A soft lockup ends the guest (with
            // its backtrace on the console) rather than leaving it to the timeout.
            "console=ttyS0 loglevel=5 panic=-1 softlockup_panic=1 mitigations=off \
             memtrace.job={}",
            dir.display()
        ))
        .args(share("host", Path::new("/"), true))
        .args(share("job", dir, false))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,cache=unsafe",
            scratch.display()
        ))
        .args(["-device", "virtio-rng-pci"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start qemu-system-x86_64 (`cargo xtask setup` installs it)")?;

    let series = kernel.series.clone();
    let stdout = qemu.stdout.take().unwrap();
    let stderr = qemu.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        // Bytes, not text: a console may carry anything, and a reader that stopped would
        // leave the guest blocked on a full console.
        let mut reader = BufReader::new(stdout);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            line.clear();
            if lines_tx.send(text).is_err() {
                break;
            }
        }
    });
    let status = loop {
        while let Ok(line) = lines.try_recv() {
            writeln!(console, "{line}")?;
            if let Some(said) = line.split_once("memtrace-guest: ").map(|(_, s)| s) {
                eprintln!("[{series}] {said}");
            }
        }
        if let Some(status) = qemu.try_wait()? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = qemu.kill();
            let _ = qemu.wait();
            eprintln!(
                "xtask: the {series} guest ran longer than {TIMEOUT:?}: stopped (console: {})",
                console_path.display()
            );
            break qemu.wait()?;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(1)) {
        writeln!(console, "{line}")?;
    }
    let qemu_errors = errors.join().unwrap_or_default();
    if !status.success() && started.elapsed() <= TIMEOUT {
        bail!(
            "qemu failed for the {series} guest ({status}): {}",
            qemu_errors.trim()
        );
    }
    let outcome = fs::read_to_string(dir.join("outcome.json")).with_context(|| {
        format!(
            "the {series} guest ended without an outcome; its console ({}) ends:\n{}",
            console_path.display(),
            tail(&console_path, 30)
        )
    })?;
    let _ = fs::remove_file(&scratch);
    Ok(serde_json::from_str(&outcome)?)
}

/// QEMU arguments sharing `path` with the guest over 9p under `tag`.
fn share(tag: &str, path: &Path, readonly: bool) -> Vec<String> {
    let readonly = if readonly { ",readonly=on" } else { "" };
    vec![
        "-fsdev".to_owned(),
        format!(
            "local,id={tag},path={},security_model=none,multidevs=remap{readonly}",
            path.display()
        ),
        "-device".to_owned(),
        format!("virtio-9p-pci,fsdev={tag},mount_tag={tag}"),
    ]
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where a guest's job directory is.
pub fn job_dir(series: &str) -> PathBuf {
    crate::shell::workspace_root()
        .join("target/matrix")
        .join(series)
}
