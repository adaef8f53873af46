//! The kernels of the matrix: Debian's own kernel packages, found in Debian's registry with a
//! private apt state (never the host's), unpacked into `.tools/kernels/`, never installed. From
//! each package memtrace keeps what a guest boots: the uncompressed `vmlinux` (booted directly,
//! which skips the in-guest decompressor) and the few modules the guest's init loads.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use crate::shell::{Cmd, workspace_root};

/// One kernel series of the matrix, and where Debian publishes it.
pub struct Series {
    /// What users and `--kernel` call it.
    pub name: &'static str,
    /// Debian suites that carry it, newest builds in the security archive.
    suites: &'static [&'static str],
    /// The package name: `prefix` + a number or version + `suffix`, newest chosen.
    prefix: &'static str,
    suffix: &'static str,
}

/// The distribution kernels memtrace is tested on besides the host's (Debian 11, 12, 13).
pub const SERIES: [Series; 3] = [
    Series {
        name: "5.10",
        suites: &[
            "debian bullseye main",
            "debian-security bullseye-security main",
        ],
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64",
    },
    Series {
        name: "6.1",
        suites: &[
            "debian bookworm main",
            "debian-security bookworm-security main",
        ],
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
    },
    Series {
        name: "6.12",
        suites: &["debian trixie main", "debian-security trixie-security main"],
        prefix: "linux-image-6.12.",
        suffix: "+deb13-amd64",
    },
];

/// Modules a guest loads from its initramfs, with their dependencies: the virtio transport, the
/// host's root over 9p, the overlay that makes it writable, the scratch disk, and entropy (an
/// early `getrandom` would otherwise wait on 5.10).
const GUEST_MODULES: [&str; 7] = [
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "overlay",
    "virtio_blk",
    "virtio_rng",
    "ext4",
];

/// A kernel ready to boot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kernel {
    pub series: String,
    /// The Debian package and version it came from.
    pub package: String,
    pub version: String,
    /// `uname -r` in the guest.
    pub release: String,
    /// The modules asked for when it was unpacked: another list unpacks it again.
    #[serde(default)]
    pub guest_modules: Vec<String>,
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Kernel {
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }

    /// The modules to load, decompressed, in load order.
    pub fn modules(&self) -> Result<Vec<PathBuf>> {
        let order = fs::read_to_string(self.dir.join("modules/order"))?;
        Ok(order
            .lines()
            .map(|name| self.dir.join("modules").join(name))
            .collect())
    }
}

fn kernels_dir() -> PathBuf {
    workspace_root().join(".tools/kernels")
}

/// The kernels of these series, downloaded and unpacked the first time (a few hundred MB from
/// Debian's registry), from `.tools/kernels/` afterwards.
pub fn prepare(series: &[&Series]) -> Result<Vec<Kernel>> {
    let mut apt = None;
    let mut kernels = Vec::new();
    for series in series {
        let dir = kernels_dir().join(series.name);
        if let Some(kernel) = cached(&dir)? {
            kernels.push(kernel);
            continue;
        }
        let apt = match &mut apt {
            Some(apt) => apt,
            None => apt.insert(PrivateApt::updated()?),
        };
        kernels.push(unpack(series, apt, &dir)?);
    }
    Ok(kernels)
}

fn cached(dir: &Path) -> Result<Option<Kernel>> {
    let Ok(text) = fs::read_to_string(dir.join("kernel.json")) else {
        return Ok(None);
    };
    let mut kernel: Kernel = serde_json::from_str(&text)?;
    kernel.dir = dir.to_path_buf();
    let complete = kernel.vmlinux().is_file()
        && kernel.modules().is_ok_and(|m| !m.is_empty())
        && kernel.guest_modules == GUEST_MODULES;
    Ok(complete.then_some(kernel))
}

/// apt with sources, lists and downloads of its own under `.tools/kernels/apt`: the host's apt
/// state is neither read nor changed.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn updated() -> Result<PrivateApt> {
        let dir = kernels_dir().join("apt");
        fs::create_dir_all(dir.join("lists/partial"))?;
        fs::create_dir_all(dir.join("archives/partial"))?;
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        if !Path::new(keyring).is_file() {
            bail!("{keyring} is missing: install debian-archive-keyring");
        }
        let sources: String = SERIES
            .iter()
            .flat_map(|series| series.suites)
            .map(|suite| {
                let (archive, rest) = suite.split_once(' ').expect("archive, suite, component");
                format!("deb [signed-by={keyring}] http://deb.debian.org/{archive} {rest}\n")
            })
            .collect();
        fs::write(dir.join("sources.list"), sources)?;
        let apt = PrivateApt { dir };
        apt.command("apt-get").args(["update", "-q"]).run()?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Cmd {
        let dir = self.dir.display();
        Cmd::new(program)
            .args([
                format!("-o=Dir::Etc::sourcelist={dir}/sources.list"),
                "-o=Dir::Etc::sourceparts=-".to_owned(),
                format!("-o=Dir::State::Lists={dir}/lists"),
                format!("-o=Dir::Cache::archives={dir}/archives"),
                "-o=Dir::State::status=/dev/null".to_owned(),
                "-o=APT::Sandbox::User=root".to_owned(),
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
    }

    /// The newest package of a series: the highest ABI number or version in its name.
    fn newest(&self, series: &Series) -> Result<String> {
        let pattern = format!(
            "^{}[0-9.]+{}$",
            regex_escape(series.prefix),
            regex_escape(series.suffix)
        );
        let found = self
            .command("apt-cache")
            .args(["search", "--names-only", &pattern])
            .output()?;
        found
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .filter_map(|name| {
                let middle = name
                    .strip_prefix(series.prefix)?
                    .strip_suffix(series.suffix)?;
                Some((version_key(middle)?, name.to_owned()))
            })
            .max()
            .map(|(_, name)| name)
            .with_context(|| format!("no {pattern} package in Debian's registry"))
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = matches!(c, '.' | '+' | '*' | '?' | '(' | ')' | '[' | ']' | '^' | '$');
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// `6.12.117` → [6, 12, 117]; anything but dot-separated numbers → None.
fn version_key(text: &str) -> Option<Vec<u32>> {
    text.split('.').map(|part| part.parse().ok()).collect()
}

/// Downloads the series' newest package and keeps its kernel and guest modules in `dir`.
fn unpack(series: &Series, apt: &PrivateApt, dir: &Path) -> Result<Kernel> {
    let package = apt.newest(series)?;
    let work = kernels_dir().join("unpack");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    apt.command("apt-get")
        .args(["download", "-q", &package])
        .current_dir(&work)
        .run()?;
    let deb = fs::read_dir(&work)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} left no .deb"))?;
    let version = Cmd::new("dpkg-deb")
        .args(["--field"])
        .args([&deb])
        .args(["Version"])
        .output()?
        .trim()
        .to_owned();
    let root = work.join("root");
    Cmd::new("dpkg-deb")
        .args(["-x"])
        .args([&deb, &root])
        .run()?;

    let boot = root.join("boot");
    let vmlinuz = fs::read_dir(&boot)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{package} has no /boot/vmlinuz-*"))?;
    let release = vmlinuz.file_name().unwrap().to_string_lossy()["vmlinuz-".len()..].to_owned();

    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("modules"))?;
    fs::write(dir.join("vmlinux"), vmlinux_of(&fs::read(&vmlinuz)?)?)
        .with_context(|| format!("extract the kernel of {}", vmlinuz.display()))?;
    let _ = fs::copy(boot.join(format!("config-{release}")), dir.join("config"));
    keep_modules(&root, &release, &dir.join("modules"))?;

    let kernel = Kernel {
        series: series.name.to_owned(),
        package,
        version,
        release,
        guest_modules: GUEST_MODULES.map(str::to_owned).to_vec(),
        dir: dir.to_path_buf(),
    };
    fs::write(
        dir.join("kernel.json"),
        serde_json::to_string_pretty(&kernel)?,
    )?;
    fs::remove_dir_all(&work)?;
    Ok(kernel)
}

/// The uncompressed ELF kernel inside a bzImage: its boot header gives where the compressed
/// payload is and how long (boot protocol 2.08+), which ends with the 4-byte uncompressed size.
fn vmlinux_of(bzimage: &[u8]) -> Result<Vec<u8>> {
    let u32_at = |at: usize| -> Result<usize> {
        let bytes = bzimage.get(at..at + 4).context("a bzImage's boot header")?;
        Ok(u32::from_le_bytes(bytes.try_into().unwrap()) as usize)
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage (no HdrS boot header)");
    }
    let setup_sectors = match bzimage[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sectors + 1) * 512 + u32_at(0x248)?;
    let length = u32_at(0x24c)?;
    let payload = bzimage
        .get(start..start + length.saturating_sub(4))
        .context("the bzImage's payload lies outside it")?;
    let tool = match payload {
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "xz",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [0x1f, 0x8b, ..] => "gzip",
        _ => bail!("the bzImage's payload is in a compression this set-up does not know"),
    };
    let elf = decompress(tool, payload)?;
    if !elf.starts_with(b"\x7fELF") {
        bail!("the bzImage's payload is not an ELF kernel");
    }
    Ok(elf)
}

fn decompress(tool: &str, data: &[u8]) -> Result<Vec<u8>> {
    use std::{io::Write as _, process::Stdio};
    let mut child = std::process::Command::new(tool)
        .args(["-dc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {tool} (`cargo xtask setup` installs it)"))?;
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output()?;
    feeder.join().expect("the feeder thread")?;
    if !output.status.success() {
        bail!("{tool} -dc failed ({})", output.status);
    }
    Ok(output.stdout)
}

/// Copies the guest's modules and their dependencies, decompressed, into `to`, with their load
/// order in `to/order`. Debian's packages ship no `modules.dep`: depmod makes it first.
fn keep_modules(root: &Path, release: &str, to: &Path) -> Result<()> {
    // Merged /usr (Debian 13) keeps modules under usr/lib.
    let base = if root.join("usr/lib/modules").is_dir() {
        root.join("usr")
    } else {
        root.to_path_buf()
    };
    Cmd::new("depmod")
        .args(["-b"])
        .args([&base])
        .args([release])
        .run()?;
    let shown = Cmd::new("modprobe")
        .args(["-d"])
        .args([&base])
        .args(["-S", release, "--show-depends", "-a"])
        .args(GUEST_MODULES)
        .output()?;
    let mut order: Vec<String> = Vec::new();
    for line in shown.lines() {
        let Some(path) = line.strip_prefix("insmod ") else {
            continue; // `builtin NAME`: nothing to load
        };
        let path = Path::new(path.trim());
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let (name, tool) = if let Some(name) = file.strip_suffix(".xz") {
            (name.to_owned(), Some("xz"))
        } else if let Some(name) = file.strip_suffix(".zst") {
            (name.to_owned(), Some("zstd"))
        } else {
            (file.clone(), None)
        };
        if order.contains(&name) {
            continue;
        }
        let bytes = fs::read(path).with_context(|| format!("read {}", path.display()))?;
        let bytes = match tool {
            Some(tool) => decompress(tool, &bytes)?,
            None => bytes,
        };
        fs::write(to.join(&name), bytes)?;
        order.push(name);
    }
    fs::write(to.join("order"), order.join("\n") + "\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_number() {
        assert!(version_key("117").unwrap() > version_key("95").unwrap());
        assert!(version_key("0-46").is_none());
        assert!(version_key("6.12.117").unwrap() > version_key("6.12.95").unwrap());
    }

    #[test]
    fn package_patterns_are_escaped_for_apt() {
        assert_eq!(regex_escape("linux-image-6.12."), "linux-image-6\\.12\\.");
        assert_eq!(regex_escape("+deb13-amd64"), "\\+deb13-amd64");
    }

    #[test]
    fn a_payload_outside_the_image_is_an_error() {
        let mut image = vec![0u8; 0x300];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x24c..0x250].copy_from_slice(&1000u32.to_le_bytes());
        assert!(vmlinux_of(&image).is_err());
        assert!(vmlinux_of(&[0; 16]).is_err());
    }
}
