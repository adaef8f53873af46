//! A guest's initramfs: busybox (static), the kernel's own modules for 9p, overlay and virtio,
//! and `init.sh`, which mounts the host's root read-only with a writable overlay and runs the
//! job. Written as an uncompressed `newc` cpio archive, the format the kernel unpacks.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{Context as _, Result, bail};

use super::kernels::Kernel;

/// The guest's first process.
const INIT: &str = include_str!("init.sh");

/// Where Debian's busybox-static installs it.
const BUSYBOX: &str = "/bin/busybox";

/// Writes the initramfs of `kernel` to `to`. Cheap, so made again for every run: a changed
/// `init.sh` always takes effect.
pub fn write(kernel: &Kernel, to: &Path) -> Result<()> {
    let busybox = fs::read(BUSYBOX).with_context(|| format!("read {BUSYBOX}"))?;
    if is_dynamic(&busybox) {
        bail!("{BUSYBOX} is dynamically linked: install busybox-static (`cargo xtask setup`)");
    }
    let mut archive = Cpio::default();
    archive.directory("bin");
    archive.directory("modules");
    archive.file("bin/busybox", &busybox, 0o755);
    archive.file("init", INIT.as_bytes(), 0o755);
    let mut order = String::new();
    for module in kernel.modules()? {
        let name = module.file_name().unwrap().to_string_lossy().into_owned();
        archive.file(&format!("modules/{name}"), &fs::read(&module)?, 0o644);
        order.push_str(&name);
        order.push('\n');
    }
    archive.file("modules/order", order.as_bytes(), 0o644);
    fs::write(to, archive.finish())?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// Whether an ELF file names a program interpreter (a dynamic loader).
fn is_dynamic(elf: &[u8]) -> bool {
    // The loader's path is in the file in plain text; a static busybox has none.
    elf.windows(b"/lib64/ld-linux".len())
        .any(|window| window == b"/lib64/ld-linux")
}

/// A `newc` archive being built.
#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    inode: u32,
}

impl Cpio {
    fn directory(&mut self, path: &str) {
        self.entry(path, 0o040_755, &[]);
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) {
        self.entry(path, 0o100_000 | mode, data);
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.inode += 1;
        let name_len = path.len() + 1;
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor,
        // rdevminor, namesize, check: 8 hex digits each.
        let fields = [
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            name_len as u32,
            0,
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(path.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Header plus name, and data, each end on a 4-byte boundary.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_the_archive_ends_with_its_trailer() {
        let mut cpio = Cpio::default();
        cpio.file("init", b"#!/bin/sh\n", 0o755);
        let bytes = cpio.finish();
        assert!(bytes.starts_with(b"070701"));
        // 110-byte header + "init\0" = 115, padded to 116; 10 bytes of data, padded to 12.
        assert_eq!(&bytes[116..126], b"#!/bin/sh\n");
        assert_eq!(&bytes[128..134], b"070701");
        assert!(bytes.len().is_multiple_of(4));
        let trailer = b"TRAILER!!!\0";
        assert!(bytes.windows(trailer.len()).any(|w| w == trailer));
    }

    #[test]
    fn a_loader_path_means_dynamic() {
        assert!(is_dynamic(b"\x7fELF...../lib64/ld-linux-x86-64.so.2..."));
        assert!(!is_dynamic(b"\x7fELF static"));
    }
}
